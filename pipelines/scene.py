"""Image + label map → per-instance inputs → joint generation → one scene of meshes.

Official input conventions: instances in ascending id order, instance images equal to the
scene inside the mask and white outside, masks 0/255, optional padding of the scene.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import trimesh

from ..colours import instance_colour
from ..geometry.postprocess import PostprocessConfig
from ..io.errors import InputError
from ..io.files import write_atomic
from ..io.images import DEFAULT_MAX_PIXELS, load_rgb
from ..io.labelmap import DEFAULT_MAX_INSTANCES, instance_ids, read_label_map
from .pipeline_midi import ExtractionOptions, MIDIPipeline

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("glb", "obj", "ply")


@dataclass
class SceneInputs:
    """A scene image ``[H, W, 3]`` uint8 and its label map ``[H, W]`` (0 = background)."""

    rgb: np.ndarray
    labels: np.ndarray
    name: str = "scene"

    @property
    def ids(self) -> list[int]:
        return instance_ids(self.labels)


@dataclass
class GenerateOptions:
    """Sampling and meshing settings of :func:`generate_scene`."""

    steps: int = 50
    guidance: float | None = None  # None: the pipeline's default (``MIDIPipeline.sampling_defaults``)
    seed: int = 42
    pad: bool = False
    num_latent_tokens: int | None = None
    extraction: ExtractionOptions = field(default_factory=ExtractionOptions)
    postprocess: PostprocessConfig | None = field(default_factory=PostprocessConfig)


@dataclass
class SceneResult:
    """Meshes in the shared scene frame, one per instance id (``None``: no surface found)."""

    ids: list[int]
    meshes: list[trimesh.Trimesh | None]
    timings: dict[str, float]

    @property
    def empty_ids(self) -> list[int]:
        return [i for i, mesh in zip(self.ids, self.meshes) if mesh is None or len(mesh.faces) == 0]


def load_scene(image_path: str | Path, seg_path: str | Path, max_instances: int = DEFAULT_MAX_INSTANCES,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> SceneInputs:
    """Read an image and its label map; errors name the file and the problem."""
    rgb = load_rgb(image_path, max_pixels=max_pixels)
    labels = read_label_map(seg_path, max_instances=max_instances, max_pixels=max_pixels)
    if labels.shape != rgb.shape[:2]:
        raise InputError(f"{seg_path}: label map is {labels.shape[1]}x{labels.shape[0]} but image "
                         f"{image_path} is {rgb.shape[1]}x{rgb.shape[0]}")
    return SceneInputs(rgb, labels, name=Path(image_path).stem)


def pad_scene(rgb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The official ``--do-image-padding``: enlarge the canvas around the objects, then square it.

    Reproduces the official comparison of rows with the width and columns with the height
    (harmless for square inputs).
    """
    h, w = labels.shape
    rows, cols = np.nonzero(labels > 0)
    r_min, r_max, c_min, c_max = rows.min(), rows.max(), cols.min(), cols.max()
    extent = max(2 * max(abs(r_max - w // 2), abs(r_min - w // 2)), 2 * max(abs(c_max - h // 2), abs(c_min - h // 2)))
    new_w = int(1.25 * extent) if extent > 0.8 * w else w
    new_h = int(1.25 * extent) if extent > 0.8 * h else h
    canvas_rgb = np.full((new_h, new_w, 3), 255, np.uint8)
    canvas_seg = np.zeros((new_h, new_w), labels.dtype)
    top, left = (new_h - h) // 2, (new_w - w) // 2
    canvas_rgb[top : top + h, left : left + w] = rgb
    canvas_seg[top : top + h, left : left + w] = labels
    side = max(new_h, new_w)
    square_rgb = np.full((side, side, 3), 255, np.uint8)
    square_seg = np.zeros((side, side), labels.dtype)
    square_rgb[:new_h, :new_w] = canvas_rgb
    square_seg[:new_h, :new_w] = canvas_seg
    return square_rgb, square_seg


def split_instances(rgb: np.ndarray, labels: np.ndarray, ids: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Instance images (scene inside the mask, white outside) and masks (uint8 0/255)."""
    images, masks = [], []
    for instance_id in ids:
        inside = labels == instance_id
        masks.append(np.where(inside, 255, 0).astype(np.uint8))
        images.append(np.where(inside[..., None], rgb, 255).astype(np.uint8))
    return images, masks


def generate_scene(pipe: MIDIPipeline, scene: SceneInputs, options: GenerateOptions | None = None) -> SceneResult:
    """Generate all instances of ``scene`` jointly; meshes share the scene frame."""
    options = options or GenerateOptions()
    rgb, labels = (pad_scene(scene.rgb, scene.labels) if options.pad else (scene.rgb, scene.labels))
    ids = instance_ids(labels)
    images, masks = split_instances(rgb, labels, ids)
    guidance = pipe.sampling_defaults.guidance if options.guidance is None else options.guidance
    generator = torch.Generator(device=pipe.device).manual_seed(options.seed)
    output = pipe(images, masks, [rgb] * len(ids), num_inference_steps=options.steps,
                  guidance_scale=guidance, generator=generator, num_latent_tokens=options.num_latent_tokens,
                  output_type="latent")
    start = time.perf_counter()
    meshes, _ = pipe.extract(output.latents, options.extraction, options.postprocess)
    timings = dict(output.timings)
    timings["decode"] = time.perf_counter() - start
    result = SceneResult(ids, meshes, timings)
    if result.empty_ids:
        logger.warning("%s: no surface (no zero crossing) for instance(s) %s; they have no mesh in the output",
                       scene.name, ", ".join(map(str, result.empty_ids)))
    return result


def build_scene(result: SceneResult) -> trimesh.Scene:
    """A ``trimesh.Scene`` with one node ``instance_<id>`` per instance that has a mesh."""
    scene = trimesh.Scene()
    for index, (instance_id, mesh) in enumerate(zip(result.ids, result.meshes)):
        if mesh is None or len(mesh.faces) == 0:
            continue
        coloured = mesh.copy()
        coloured.visual = trimesh.visual.ColorVisuals(coloured, vertex_colors=np.tile(instance_colour(index),
                                                                                      (len(coloured.vertices), 1)))
        name = f"instance_{instance_id}"
        scene.add_geometry(coloured, node_name=name, geom_name=name)
    scene.metadata["midi3d_instance_ids"] = list(result.ids)
    scene.metadata["midi3d_empty_instance_ids"] = result.empty_ids
    return scene


def export_scene(result: SceneResult, path: str | Path) -> Path:
    """Write the scene as GLB, OBJ or PLY (by suffix), atomically."""
    path = Path(path)
    file_type = path.suffix.lower().lstrip(".")
    if file_type not in EXPORT_FORMATS:
        raise InputError(f"{path}: unsupported output format {path.suffix!r} (use .glb, .obj or .ply)")
    scene = build_scene(result)
    if not scene.geometry:
        raise InputError(f"{path}: no instance produced a surface; nothing to write")
    if file_type == "ply":
        data = trimesh.util.concatenate(list(scene.dump())).export(file_type="ply")
    else:
        data = scene.export(file_type=file_type)
    write_atomic(path, data if isinstance(data, bytes) else data.encode())
    return path
