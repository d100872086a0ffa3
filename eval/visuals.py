"""Per-scene evaluation figure: input, instance masks, prediction and ground truth from the input view."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image, ImageDraw

from ..data.datasets import EvalScene
from ..data.synth import Camera, SceneObject, render
from ..io.files import write_atomic
from ..colours import instance_colour

PANEL = 256


def scene_camera(scene: EvalScene, meshes: list[trimesh.Trimesh]) -> Camera:
    """The input view's camera when the dataset stores one (``camera_<view>.json`` next to the
    render, as ``midi3d synth`` writes), else a default three-quarter view of the meshes."""
    if scene.camera_file is not None and scene.camera_file.is_file():
        data = json.loads(scene.camera_file.read_text())
        return Camera(np.array(data["eye"]), np.array(data["centre"]), float(data["fov_deg"]))
    vertices = np.concatenate([m.vertices for m in meshes]) if meshes else np.zeros((1, 3))
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    radius = max(float(np.linalg.norm(vertices - centre, axis=1).max()), 1e-3)
    direction = np.array([0.6, 0.5, 0.6]) / np.linalg.norm([0.6, 0.5, 0.6])
    return Camera(centre + direction * radius / np.sin(np.radians(25)), centre, 50.0)


def _render_meshes(scene: EvalScene, meshes: dict[int, trimesh.Trimesh], camera: Camera) -> np.ndarray:
    objects = [SceneObject(str(i), "", meshes[i], tuple(c / 255 for c in instance_colour(k)[:3]))
               for k, i in enumerate(scene.ids) if i in meshes and len(meshes[i].faces)]
    if not objects:
        return np.full((PANEL, PANEL, 3), 255, np.uint8)
    rgb, _ = render(objects, camera, PANEL)
    return rgb


def mask_overlay(scene: EvalScene) -> np.ndarray:
    """The input dimmed, with each kept instance in its colour."""
    overlay = (scene.rgb.astype(np.float32) * 0.35 + 255 * 0.65).astype(np.uint8)
    for k, instance in enumerate(scene.ids):
        overlay[scene.labels == instance] = instance_colour(k)[:3]
    return overlay


def save_scene_figure(scene: EvalScene, predicted: dict[int, trimesh.Trimesh], metrics: dict | None,
                      path: Path) -> Path:
    """Write ``path`` (PNG): input | masks | prediction | ground truth, with the scene's metrics."""
    gt = {i: trimesh.load(p, force="mesh") for i, p in zip(scene.ids, scene.gt_meshes)}
    camera = scene_camera(scene, list(gt.values()) or list(predicted.values()))
    panels = [scene.rgb, mask_overlay(scene), _render_meshes(scene, predicted, camera), _render_meshes(scene, gt, camera)]
    titles = ["input", "instances", "prediction", "ground truth"]
    canvas = Image.new("RGB", (PANEL * 4, PANEL + 36), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (panel, title) in enumerate(zip(panels, titles)):
        canvas.paste(Image.fromarray(panel).resize((PANEL, PANEL)), (k * PANEL, 18))
        draw.text((k * PANEL + 4, 2), title, fill="black")
    if metrics:
        text = (f"{scene.key}  CD-S {metrics['scene_cd']:.4f}  F-S {100 * metrics['scene_fscore']:.1f}  "
                f"CD-O {metrics['object_cd']:.4f}  F-O {100 * metrics['object_fscore']:.1f}  "
                f"IoU-B {metrics['iou_bbox']:.3f}")
        draw.text((4, PANEL + 20), text, fill="black")
    import io

    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())
    return path
