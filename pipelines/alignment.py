"""The step after generation: the camera that lines the scene up with the photo, projected
colours, and an overlay picture (photo | rendered instances | blend)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import trimesh

from ..colours import instance_colour
from ..geometry.camera import InstanceRaycaster, PinholeCamera
from ..geometry.camera_fit import CameraFit, CameraFitOptions, estimate_camera
from ..texture import TextureOptions, texture_meshes
from .pipeline_midi import MIDIPipelineOutput
from .scene import SceneInputs

logger = logging.getLogger(__name__)

TEXTURE_CHOICES = ("project", "vertex", "none")


@dataclass
class SceneAlignment:
    """A scene lined up with its photo: the camera, per-instance reprojection IoU (``None`` for
    instances without a mesh) and the meshes to export (coloured when ``textured``)."""

    camera: PinholeCamera
    instance_ids: list[int]
    ious: list[float | None]
    meshes: list[trimesh.Trimesh | None]
    texture_mode: str = "none"  # what the meshes carry: project, vertex or none (instance colours)
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def textured(self) -> bool:
        return self.texture_mode != "none"

    @property
    def mean_iou(self) -> float:
        values = [v for v in self.ious if v is not None]
        return float(np.mean(values)) if values else 0.0

    def metadata(self) -> dict:
        return {"midi3d_reprojection_iou": {str(i): v for i, v in zip(self.instance_ids, self.ious)},
                "midi3d_reprojection_mean_iou": self.mean_iou, "midi3d_texture": self.texture_mode}

    def overlay(self, rgb: np.ndarray) -> np.ndarray:
        return overlay_sheet(rgb, self.meshes, self.camera)


def estimate_scene_camera(scene: SceneInputs, result: MIDIPipelineOutput,
                          options: CameraFitOptions | None = None) -> CameraFit:
    """The camera for generated meshes and the scene's label map (raises ``InputError`` when no
    instance has a surface)."""
    return estimate_camera(list(result.meshes or []), scene.labels, list(result.instance_ids), options)


def align_scene(scene: SceneInputs, result: MIDIPipelineOutput, texture: str = "project",
                fit_options: CameraFitOptions | None = None, texture_options: TextureOptions | None = None
                ) -> SceneAlignment:
    """Estimate the camera, then colour the meshes from the photo (``texture`` project|vertex), or
    keep instance colours (``none``). A texturing failure falls back to instance colours with a
    warning; a camera that cannot be estimated raises ``InputError``."""
    if texture not in TEXTURE_CHOICES:
        raise ValueError(f"texture must be one of {', '.join(TEXTURE_CHOICES)}, got {texture!r}")
    fit = estimate_scene_camera(scene, result, fit_options)
    meshes = list(result.meshes or [])
    alignment = SceneAlignment(fit.camera, list(result.instance_ids), fit.ious, meshes,
                               seconds={"camera": fit.seconds})
    if texture == "none":
        return alignment
    start = time.perf_counter()
    options = texture_options or TextureOptions()
    if options.mode != texture:
        options = TextureOptions(mode=texture, max_faces=options.max_faces,
                                 texels_per_pixel=options.texels_per_pixel, max_size=options.max_size)
    try:
        coloured = texture_meshes(meshes, alignment.instance_ids, fit.camera, scene.rgb, scene.labels, options)
    except Exception as error:  # noqa: BLE001 - colours are optional: keep the scene, say why
        alignment.warnings.append(f"{scene.name}: texturing failed ({type(error).__name__}: {error}); "
                                  "instance colours kept")
    else:
        alignment.meshes, alignment.texture_mode = coloured.meshes, texture
        alignment.warnings.extend(f"{scene.name}: {w}" for w in coloured.warnings)
    alignment.seconds["texture"] = time.perf_counter() - start
    return alignment


def overlay_sheet(rgb: np.ndarray, meshes: list[trimesh.Trimesh | None], camera: PinholeCamera,
                  opacity: float = 0.55) -> np.ndarray:
    """``[H, 3W, 3]`` uint8: the photo, the instances rendered at ``camera`` in palette colours,
    and the two blended."""
    ids = InstanceRaycaster(meshes).render_ids(camera.resized(rgb.shape[1], rgb.shape[0]))
    palette = np.array([(255, 255, 255)] + [instance_colour(k)[:3] for k in range(len(meshes))], np.float64)
    rendered = palette[ids]
    blend = np.where((ids > 0)[..., None], (1 - opacity) * rgb + opacity * rendered, rgb)
    return np.concatenate([rgb, rendered, blend], 1).clip(0, 255).astype(np.uint8)
