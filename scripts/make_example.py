"""Regenerate the bundled example midi3d/assets/examples/blocks-5_{rgb,seg}.png (deterministic)."""

from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "midi3d" / "assets" / "examples"
SIZE = 256
OBJECTS = [  # (id, shape, coordinates, colour)
    (1, "polygon", [(30, 120), (120, 120), (112, 200), (38, 200)], (150, 100, 60)),  # table
    (2, "rectangle", [140, 80, 200, 210], (70, 90, 160)),  # cabinet
    (3, "ellipse", [55, 60, 95, 118], (240, 210, 90)),  # lamp on the table
    (4, "rectangle", [210, 150, 245, 230], (90, 150, 90)),  # stool
    (5, "polygon", [(10, 205), (60, 205), (70, 245), (0, 245)], (180, 60, 70)),  # ottoman
]
PALETTE = [0, 0, 0, 230, 25, 75, 60, 180, 75, 255, 225, 25, 0, 130, 200, 245, 130, 48]


def main() -> None:
    rgb = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    seg = Image.new("P", (SIZE, SIZE), 0)
    seg.putpalette(PALETTE + [0] * (768 - len(PALETTE)))
    draw_rgb, draw_seg = ImageDraw.Draw(rgb), ImageDraw.Draw(seg)
    draw_rgb.polygon([(0, 150), (SIZE, 150), (SIZE, SIZE), (0, SIZE)], fill=(235, 230, 220))
    for oid, kind, coords, colour in OBJECTS:
        getattr(draw_rgb, kind)(coords, fill=colour, outline=tuple(int(c * 0.6) for c in colour))
        getattr(draw_seg, kind)(coords, fill=oid)
    rgb.save(OUT / "blocks-5_rgb.png", optimize=True)
    seg.save(OUT / "blocks-5_seg.png", optimize=True)


if __name__ == "__main__":
    main()
