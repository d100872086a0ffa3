"""The shape VAE's validation figure: ground-truth objects next to their reconstructions.

Each row is one validation object with thin parts (chairs, tables, stools, shelves, lamps); the
first column is the ground-truth mesh, then one column per pipeline folder: its VAE's
reconstruction (posterior mean, no noise) meshed at the given resolution, with its box IoU.

Usage: python scripts/vae_figure.py OUT.png --data synth-val --pipeline LABEL=FOLDER [...]
           [--rows 6] [--resolution 128]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image, ImageDraw

THIN_KINDS = ("chair", "table", "stool", "shelf", "lamp", "desk")
TILE = 200


def shaded(mesh: trimesh.Trimesh, colour: tuple[int, int, int]) -> trimesh.Trimesh:
    """A copy with per-vertex Lambert shading from a light over the viewer's left shoulder."""
    light = np.array([-0.4, 0.8, 0.45])
    light /= np.linalg.norm(light)
    lit = 0.35 + 0.65 * np.clip(np.asarray(mesh.vertex_normals) @ light, 0.0, 1.0)
    copy = mesh.copy()
    rgb = np.clip(lit[:, None] * np.asarray(colour, float), 0, 255).astype(np.uint8)
    copy.visual = trimesh.visual.ColorVisuals(copy, vertex_colors=np.concatenate(
        [rgb, np.full((len(rgb), 1), 255, np.uint8)], 1))
    return copy


def tile(mesh: trimesh.Trimesh | None, centre: np.ndarray, radius: float, colour) -> np.ndarray:
    from midi3d.geometry.camera import PinholeCamera
    from midi3d.texture.render import render_colours

    if mesh is None:
        return np.full((TILE, TILE, 3), 255, np.uint8)
    direction = np.array([0.8, 0.55, 1.0])
    eye = centre + direction / np.linalg.norm(direction) * radius * 3.2
    camera = PinholeCamera.look_at(eye, centre, [0, 1, 0], 40.0, TILE, TILE)
    image, _ = render_colours([shaded(mesh, colour)], camera)
    return image.astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--pipeline", action="append", required=True, help="LABEL=FOLDER (repeatable).")
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--resolution", type=int, default=128)
    args = parser.parse_args()

    from midi3d.data.layout import SCENE, encoder_inputs, listed_objects
    from midi3d.eval.metrics import bbox_iou
    from midi3d.pipelines import MIDIPipeline
    from midi3d.pipelines.pipeline_midi import ExtractionOptions

    picked, kinds_seen = [], {}
    for room, name in listed_objects(args.data):
        kind = name.rsplit("-", 1)[0]
        if kind in THIN_KINDS and kinds_seen.get(kind, 0) < 2 and len(picked) < args.rows:
            kinds_seen[kind] = kinds_seen.get(kind, 0) + 1
            picked.append((room, name))
    inputs, truth = encoder_inputs(args.data, picked)
    gt_meshes = [trimesh.load(args.data / SCENE / room / f"{name}.glb", force="mesh") for room, name in picked]
    columns: list[tuple[str, list, list]] = [("ground truth", gt_meshes, [None] * len(picked))]
    for entry in args.pipeline:
        label, folder = entry.split("=", 1)
        pipe = MIDIPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            latents = pipe.vae.encode(torch.from_numpy(inputs),
                                      num_tokens=pipe.transformer.config.width).latent_dist.mean
            meshes, _ = pipe.extract(latents, ExtractionOptions(resolution=args.resolution), None)
        ious = [None if m is None else bbox_iou(np.asarray(m.vertices), p) for m, p in zip(meshes, truth)]
        columns.append((label, meshes, ious))
    sheet = Image.new("RGB", (TILE * len(columns), TILE * len(picked) + 18), "white")
    draw = ImageDraw.Draw(sheet)
    for col, (label, meshes, ious) in enumerate(columns):
        draw.text((col * TILE + 6, 3), label, fill=(0, 0, 0))
        for row, ((room, name), mesh, iou, points) in enumerate(zip(picked, meshes, ious, truth)):
            centre = (points.min(0) + points.max(0)) / 2
            radius = float(np.linalg.norm(np.ptp(points, 0))) / 2
            colour = (150, 160, 175) if col == 0 else (205, 150, 110)
            sheet.paste(Image.fromarray(tile(mesh, centre, radius, colour)), (col * TILE, 18 + row * TILE))
            text = name if col == 0 else ("empty" if iou is None else f"box IoU {iou:.2f}")
            draw.text((col * TILE + 6, 18 + row * TILE + TILE - 14), text, fill=(0, 0, 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"{args.out}: {len(picked)} objects × {len(columns) - 1} pipelines")


if __name__ == "__main__":
    main()
