"""Regenerate the bundled examples (deterministic):

* ``blocks-5_{rgb,seg}.png``: five flat shapes (a drawing, for segmentation and I/O tests);
* ``room-5_{rgb,seg}.png``: a room of five objects from ``midi3d synth`` with seed 99 (neither the
  training seed 1 nor the test seed 7), the input the embedded model is made for.
"""

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
    synthetic_room()


def synthetic_room(objects: int = 5, seed: int = 99, size: int = 384) -> None:
    import tempfile

    import numpy as np

    from midi3d.data.synth import SynthConfig, build_room
    from midi3d.io.labelmap import instance_ids

    config = SynthConfig(seed=seed, image_size=size, surface_points=16)
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(200):
            build_room(Path(tmp), "example", index, config)
            room = Path(tmp) / "3D-FRONT-RENDER" / "example" / f"room-{index:05d}"
            labels = np.asarray(Image.open(room / "semantic_0000.png"))
            visible = [i for i in instance_ids(labels) if (labels == i).sum() > 0.002 * labels.size]
            if len(visible) == objects and len(instance_ids(labels)) == objects:
                Image.open(room / "render_0000.webp").convert("RGB").save(OUT / f"room-{objects}_rgb.png", optimize=True)
                seg = Image.fromarray(labels.astype(np.uint8), mode="L").convert("P")
                seg.putpalette(PALETTE + [0] * (768 - len(PALETTE)))
                seg.save(OUT / f"room-{objects}_seg.png", optimize=True)
                return
    raise RuntimeError(f"no room with {objects} visible objects among 200 (seed {seed})")


if __name__ == "__main__":
    main()
