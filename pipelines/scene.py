"""Image files ↔ the pipeline: read a scene, call :class:`MIDIPipeline` once, write the meshes.

Nothing here samples or preprocesses: :meth:`MIDIPipeline.__call__` does both (settings left
``None`` take the pipeline folder's ``sampling_defaults``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import trimesh

from ..colours import instance_colour
from ..control.config import ControlConfig
from ..geometry.camera import PinholeCamera
from ..geometry.postprocess import PostprocessConfig
from ..io.errors import InputError
from ..io.files import write_atomic
from ..io.images import DEFAULT_MAX_PIXELS, exif_orientation, load_rgb
from ..io.labelmap import DEFAULT_MAX_INSTANCES, instance_ids, read_label_map
from ..models.layer_spec import LayerSpec
from .memory import DEFAULT_BUDGET_GB
from .pipeline_midi import ExtractionOptions, MIDIPipeline, MIDIPipelineOutput
from .sampling import DEFAULT_SEED

if TYPE_CHECKING:
    from .alignment import SceneAlignment

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
    """Settings of :func:`generate_scene`; ``None`` = the pipeline folder's default."""

    steps: int | None = None
    guidance: float | None = None
    seed: int = DEFAULT_SEED
    pad: bool = False
    mi_layers: LayerSpec = None  # None: as set on the pipeline (its folder's layers)
    control: ControlConfig | None = None  # None: the folder's instance control, if it records one
    num_latent_tokens: int | None = None
    max_instances: int = DEFAULT_MAX_INSTANCES
    max_memory_gb: float = DEFAULT_BUDGET_GB
    extraction: ExtractionOptions = field(default_factory=ExtractionOptions)
    postprocess: PostprocessConfig | None = field(default_factory=PostprocessConfig)
    use_layout_model: bool = True  # object-frame folders with a layout model: boxes from it (False: generated)


def load_scene(image_path: str | Path, seg_path: str | Path, max_instances: int = DEFAULT_MAX_INSTANCES,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> SceneInputs:
    """Read an image and its label map; errors name the file and the problem."""
    rgb = load_rgb(image_path, max_pixels=max_pixels)
    labels = read_label_map(seg_path, max_instances=max_instances, max_pixels=max_pixels)
    turned = exif_orientation(image_path), exif_orientation(seg_path)
    if turned[0] != turned[1]:
        raise InputError(f"{seg_path}: EXIF orientation {turned[1]} but image {image_path} has {turned[0]} "
                         "(each is turned upright on read, so their pixels would not line up); save both "
                         "upright or with the same orientation")
    if labels.shape != rgb.shape[:2]:
        raise InputError(f"{seg_path}: label map is {labels.shape[1]}x{labels.shape[0]} but image "
                         f"{image_path} is {rgb.shape[1]}x{rgb.shape[0]}")
    return SceneInputs(rgb, labels, name=Path(image_path).stem)


def generate_scene(pipe: MIDIPipeline, scene: SceneInputs, options: GenerateOptions | None = None
                   ) -> MIDIPipelineOutput:
    """Generate all instances of ``scene`` jointly (one pipeline call); meshes share the scene frame."""
    options = options or GenerateOptions()
    result = pipe(scene.rgb, scene.labels, num_inference_steps=options.steps, guidance_scale=options.guidance,
                  seed=options.seed, pad=options.pad, mi_layers=options.mi_layers, control=options.control,
                  num_latent_tokens=options.num_latent_tokens,
                  extraction=options.extraction, postprocess=options.postprocess,
                  max_instances=options.max_instances, max_memory_gb=options.max_memory_gb,
                  use_layout_model=options.use_layout_model)
    if result.empty_ids:
        logger.warning("%s: no surface (no zero crossing) for instance(s) %s; they have no mesh in the output",
                       scene.name, ", ".join(map(str, result.empty_ids)))
    if result.fallback_levels:
        logger.info("%s: no zero crossing for instance(s) %s; meshed at a dilated iso-level instead", scene.name,
                    ", ".join(f"{i} (level {level:g})" for i, level in result.fallback_levels.items()))
    return result


def build_scene(ids: list[int], meshes: list[trimesh.Trimesh | None], keep_visuals: bool = False,
                camera: PinholeCamera | None = None, metadata: dict | None = None,
                fallback_levels: dict[int, float] | None = None) -> trimesh.Scene:
    """A ``trimesh.Scene`` with one node ``instance_<id>`` per instance that has a mesh, coloured
    with the instance palette (or keeping the meshes' own textures / vertex colours), and the
    ``camera`` as a glTF camera node ``camera`` when given. ``fallback_levels`` (id → iso-level,
    :attr:`MIDIPipelineOutput.fallback_levels`) is recorded as ``midi3d_fallback_levels``."""
    scene = trimesh.Scene()
    empty = []
    for index, (instance_id, mesh) in enumerate(zip(ids, meshes)):
        if mesh is None or len(mesh.faces) == 0:
            empty.append(instance_id)
            continue
        coloured = mesh.copy()
        if not keep_visuals:
            coloured.visual = trimesh.visual.ColorVisuals(
                coloured, vertex_colors=np.tile(instance_colour(index), (len(coloured.vertices), 1)))
        name = f"instance_{instance_id}"
        scene.add_geometry(coloured, node_name=name, geom_name=name)
    scene.metadata["midi3d_instance_ids"] = list(ids)
    scene.metadata["midi3d_empty_instance_ids"] = empty
    if fallback_levels:  # glTF extras keys are strings
        scene.metadata["midi3d_fallback_levels"] = {str(i): level for i, level in sorted(fallback_levels.items())}
    if camera is not None and scene.geometry:
        scene.camera = trimesh.scene.Camera(name="camera", resolution=(camera.width, camera.height),
                                            focal=(camera.focal, camera.focal))
        scene.camera_transform = camera.pose_gl()
        scene.metadata["midi3d_camera"] = camera.to_dict()
    scene.metadata.update(metadata or {})
    return scene


def _fix_camera_aspect(tree: dict) -> None:
    """trimesh writes the ratio of the field-of-view angles as ``aspectRatio``; glTF wants width / height."""
    extras = (tree.get("scenes") or [{}])[0].get("extras") or {}
    camera = extras.get("midi3d_camera")
    if camera and tree.get("cameras"):
        width, height = camera["image_size"]
        tree["cameras"][0]["perspective"]["aspectRatio"] = width / height


def export_scene(result: MIDIPipelineOutput, path: str | Path, alignment: SceneAlignment | None = None) -> Path:
    """Write the scene as GLB, OBJ or PLY (by suffix), atomically; with ``alignment`` the meshes
    carry its colours, the GLB its camera and the metadata the per-instance reprojection IoU."""
    path = Path(path)
    file_type = path.suffix.lower().lstrip(".")
    if file_type not in EXPORT_FORMATS:
        raise InputError(f"{path}: unsupported output format {path.suffix!r} (use .glb, .obj or .ply)")
    if alignment is None:
        scene = build_scene(result.instance_ids, result.meshes or [], fallback_levels=result.fallback_levels)
    else:
        scene = build_scene(result.instance_ids, alignment.meshes, keep_visuals=alignment.textured,
                            camera=alignment.camera, metadata=alignment.metadata(),
                            fallback_levels=result.fallback_levels)
    if not scene.geometry:
        raise InputError(f"{path}: no instance produced a surface; nothing to write")
    if file_type == "ply":
        data = trimesh.util.concatenate(list(scene.dump())).export(file_type="ply")
    elif file_type == "glb":
        data = scene.export(file_type="glb", tree_postprocessor=_fix_camera_aspect)
    else:
        data = scene.export(file_type=file_type)
    write_atomic(path, data if isinstance(data, bytes) else data.encode())
    return path
