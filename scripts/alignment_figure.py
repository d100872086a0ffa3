"""The README's alignment figure: the bundled example with the embedded model, lined up with its
photo. Panels: photo | untextured scene (instance colours) at the estimated camera | blend |
projected texture at the estimated camera | the textured scene from a viewpoint turned 35°.

Usage: python scripts/alignment_figure.py docs/images/alignment.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from midi3d.embedded import load_embedded_pipeline
from midi3d.geometry.camera import PinholeCamera
from midi3d.pipelines.alignment import align_scene, overlay_sheet
from midi3d.pipelines.scene import generate_scene, load_scene
from midi3d.texture.render import render_colours

EXAMPLE = Path(__file__).resolve().parents[1] / "midi3d" / "assets" / "examples"


def turned(camera: PinholeCamera, centre: np.ndarray, degrees: float) -> PinholeCamera:
    """The camera orbited about the vertical axis (y) through ``centre``."""
    angle = np.radians(degrees)
    spin = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    eye = centre + spin @ (camera.eye - centre)
    rotation = camera.rotation @ spin.T
    return PinholeCamera(rotation, -rotation @ eye, camera.focal, camera.width, camera.height, camera.principal)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images/alignment.png")
    pipe = load_embedded_pipeline()
    pipe.set_progress_bar_config(disable=True)
    scene = load_scene(EXAMPLE / "room-5_rgb.png", EXAMPLE / "room-5_seg.png")
    result = generate_scene(pipe, scene)
    alignment = align_scene(scene, result, "project")
    sheet = overlay_sheet(scene.rgb, result.meshes, alignment.camera)
    textured, _ = render_colours(alignment.meshes, alignment.camera)
    bounds = np.concatenate([m.bounds for m in alignment.meshes if m is not None])
    centre = (bounds.min(0) + bounds.max(0)) / 2
    novel, _ = render_colours(alignment.meshes, turned(alignment.camera, centre, 35.0))
    panels = np.concatenate([sheet, textured.astype(np.uint8), novel.astype(np.uint8)], 1)
    image = Image.fromarray(panels)
    draw = ImageDraw.Draw(image)
    width = scene.rgb.shape[1]
    titles = ["photo", "untextured, estimated camera", "blend", "projected texture", "textured, turned 35°"]
    for index, title in enumerate(titles):
        draw.text((index * width + 6, 6), title, fill=(0, 0, 0))
    draw.text((6, scene.rgb.shape[0] - 16), f"mean reprojection IoU {alignment.mean_iou:.2f}", fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(f"{out}: IoU {alignment.mean_iou:.3f}, per instance {[round(v or 0, 3) for v in alignment.ious]}")


if __name__ == "__main__":
    main()
