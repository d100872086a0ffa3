"""Render coloured meshes (baked textures or vertex colours) through a camera, by ray casting."""

from __future__ import annotations

import numpy as np
import trimesh

from ..geometry.camera import InstanceRaycaster, PinholeCamera
from .projection import bilinear


def render_colours(meshes: list[trimesh.Trimesh | None], camera: PinholeCamera,
                   background: float = 255.0) -> tuple[np.ndarray, np.ndarray]:
    """Colour image ``[H, W, 3]`` (floats, 0–255) and instance index + 1 per pixel (0 = none).

    Textures are sampled bilinearly in trimesh's UV convention (``v`` up); meshes without either
    kind of colour are drawn in mid grey."""
    hits = InstanceRaycaster(meshes).render(camera)
    image = np.full((camera.height, camera.width, 3), float(background))
    for index, mesh in enumerate(meshes):
        where = hits.ids == index + 1
        if mesh is None or not where.any():
            continue
        faces = np.asarray(mesh.faces)[hits.triangle[where]]
        b = hits.barycentric[where]
        weights = np.stack([1 - b[:, 0] - b[:, 1], b[:, 0], b[:, 1]], 1)[:, :, None]
        visual = mesh.visual
        if isinstance(visual, trimesh.visual.TextureVisuals) and visual.uv is not None:
            uv = np.sum(np.asarray(visual.uv)[faces] * weights, 1)
            texture = np.asarray(visual.material.baseColorTexture.convert("RGB"))
            height, width = texture.shape[:2]
            image[where] = bilinear(texture, np.stack([uv[:, 0] * width, (1 - uv[:, 1]) * height], 1))
        elif visual.kind == "vertex":
            image[where] = np.sum(np.asarray(visual.vertex_colors)[faces][..., :3].astype(float) * weights, 1)
        else:
            image[where] = 128.0
    return image, hits.ids
