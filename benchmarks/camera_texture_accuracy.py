"""Camera estimation and projected-texture fidelity on synthetic rooms whose cameras are known.

For each room of a `midi3d synth` dataset, with the ground-truth meshes as input:
* the camera is estimated from the meshes and the label map, once in the dataset's frame and
  once after a random rotation of the whole scene (the estimator must not rely on the frame);
  rotation error (degrees), relative focal error and mean reprojection IoU are reported;
* the meshes are textured from the photo through the estimated camera, written as a GLB,
  re-loaded with trimesh, rendered from the *true* camera and compared with the photo on the
  instances' pixels (PSNR, fraction of pixels within 10/255 on every channel).

Usage: python benchmarks/camera_texture_accuracy.py ROOT [--rooms 30] [--mode project|vertex] [--json OUT]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from midi3d.data.layout import RENDER, SCENE
from midi3d.geometry.camera import PinholeCamera, rotation_error_deg
from midi3d.geometry.camera_fit import estimate_camera
from midi3d.pipelines.scene import build_scene
from midi3d.texture import TextureOptions, texture_meshes
from midi3d.texture.render import render_colours


def load_room(root: Path, room: Path):
    camera = json.loads((room / "camera_0000.json").read_text())
    names = json.loads((room / "objects.json").read_text())
    scene_dir = root / SCENE / room.relative_to(root / RENDER)
    meshes = [trimesh.load(scene_dir / f"{name}.glb", force="mesh") for name in names]
    rgb = np.asarray(Image.open(room / "render_0000.webp").convert("RGB"))
    labels = np.asarray(Image.open(room / "semantic_0000.png")).astype(np.int64)
    size = camera["image_size"]
    true = PinholeCamera.look_at(camera["eye"], camera["centre"], camera["up"], camera["fov_deg"], size, size)
    return meshes, rgb, labels, true


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--rooms", type=int, default=30)
    parser.add_argument("--mode", default="project", choices=["project", "vertex"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    rooms = sorted((args.root / RENDER).glob("*/*"))[:args.rooms]
    rows = []
    for room in rooms:
        meshes, rgb, labels, true = load_room(args.root, room)
        ids = list(range(1, len(meshes) + 1))
        row = {"room": room.name, "objects": len(meshes)}
        start = time.perf_counter()
        fit = estimate_camera(meshes, labels, ids)
        row["camera_s"] = time.perf_counter() - start
        row["rotation_deg"] = rotation_error_deg(fit.camera.rotation, true.rotation)
        row["focal_error"] = abs(fit.camera.focal / true.focal - 1)
        row["iou"] = fit.mean_iou
        turn = random_rotation(rng)
        turned = [m.copy().apply_transform(np.block([[turn, np.zeros((3, 1))], [np.zeros((1, 3)), 1]]))
                  for m in meshes]
        turned_fit = estimate_camera(turned, labels, ids)
        row["rotated_rotation_deg"] = rotation_error_deg(turned_fit.camera.rotation, true.rotation @ turn.T)
        row["rotated_focal_error"] = abs(turned_fit.camera.focal / true.focal - 1)
        row["rotated_iou"] = turned_fit.mean_iou
        start = time.perf_counter()
        textured = texture_meshes(meshes, ids, fit.camera, rgb, labels, TextureOptions(mode=args.mode))
        row["texture_s"] = time.perf_counter() - start
        data = build_scene(ids, textured.meshes, keep_visuals=True).export(file_type="glb")
        loaded = trimesh.load(io.BytesIO(data), file_type="glb")
        reloaded = [loaded.geometry[f"instance_{i}"] for i in ids]
        holes = 0
        for mesh in reloaded:
            if isinstance(mesh.visual, trimesh.visual.TextureVisuals):
                holes += int(mesh.visual.uv is None)
            else:
                holes += int((mesh.visual.vertex_colors[:, 3] == 0).sum())
        image, _ = render_colours(reloaded, true)
        on = labels > 0
        error = image[on] - rgb[on].astype(float)
        mse = float(np.mean(error ** 2))
        row["psnr"] = 10 * np.log10(255 ** 2 / max(mse, 1e-12))
        row["within_10"] = float(np.mean(np.all(np.abs(error) <= 10, axis=1)))
        row["holes"] = holes
        rows.append(row)
        print(f"{room.name}: {len(meshes)} obj  rot {row['rotation_deg']:.2f}°  focal {row['focal_error']:.3f}  "
              f"IoU {row['iou']:.3f}  | rotated frame: rot {row['rotated_rotation_deg']:.2f}°  "
              f"focal {row['rotated_focal_error']:.3f}  IoU {row['rotated_iou']:.3f}  | PSNR {row['psnr']:.1f} dB  "
              f"≤10/255 {row['within_10']:.3f}  ({row['camera_s']:.1f} s + {row['texture_s']:.1f} s)", flush=True)
    keys = ["rotation_deg", "focal_error", "iou", "rotated_rotation_deg", "rotated_focal_error", "rotated_iou",
            "psnr", "within_10", "camera_s", "texture_s"]
    summary = {"rooms": len(rows), "mode": args.mode, "holes": sum(r["holes"] for r in rows)}
    for key in keys:
        values = np.array([r[key] for r in rows])
        summary[f"median_{key}"] = float(np.median(values))
        summary[f"mean_{key}"] = float(np.mean(values))
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rooms": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
