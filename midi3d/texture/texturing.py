"""Colour instance meshes from the photo through an estimated camera: baked textures or vertex colours."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import trimesh

from ..colours import instance_colour
from ..geometry.camera import InstanceRaycaster, PinholeCamera
from .bake import dilate, decimated, rasterize, unwrap
from .projection import fill_hidden, visible_colours

TEXTURE_MODES = ("project", "vertex")


@dataclass(frozen=True)
class TextureOptions:
    """``project``: a baked base-colour texture on xatlas UVs; ``vertex``: vertex colours."""

    mode: str = "project"
    max_faces: int = 2000  # the textured copy of a denser mesh is decimated to this (project mode)
    texels_per_pixel: float = 1.0  # atlas density relative to the photo's pixels on the object
    max_size: int = 2048

    def __post_init__(self):
        if self.mode not in TEXTURE_MODES:
            raise ValueError(f"texture mode must be one of {', '.join(TEXTURE_MODES)}, got {self.mode!r}")
        if self.max_faces < 4 or self.max_size < 16 or self.texels_per_pixel <= 0:
            raise ValueError("max_faces >= 4, max_size >= 16 and texels_per_pixel > 0 are required")


@dataclass
class TexturedMeshes:
    """Coloured copies of the meshes (``None`` kept) and, per instance, the fraction of its
    surface the camera saw (``None`` without a mesh)."""

    meshes: list[trimesh.Trimesh | None]
    visible_fraction: list[float | None]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _fallback_colour(rgb: np.ndarray, labels: np.ndarray, label: int, index: int) -> np.ndarray:
    pixels = rgb[labels == label]
    if len(pixels):
        return pixels.reshape(-1, 3).astype(np.float64).mean(0)
    return np.asarray(instance_colour(index)[:3], np.float64)


def _vertex_coloured(mesh, index, label, camera, raycaster, rgb, labels, tolerance, fallback):
    colours, seen = visible_colours(np.asarray(mesh.vertices), index, camera, raycaster, rgb, labels, label,
                                    tolerance)
    filled = fill_hidden(mesh, colours, seen, fallback)
    rgba = np.concatenate([np.clip(np.round(filled), 0, 255), np.full((len(filled), 1), 255)], 1).astype(np.uint8)
    coloured = mesh.copy()
    coloured.visual = trimesh.visual.ColorVisuals(coloured, vertex_colors=rgba)
    return coloured, float(seen.mean())


def _texture_baked(mesh, index, label, camera, raycaster, rgb, labels, tolerance, fallback, options):
    from PIL import Image

    work = decimated(mesh, options.max_faces)
    depth = np.median(np.maximum(camera.to_camera(np.asarray(work.vertices))[:, 2], 1e-6))
    atlas = unwrap(work, options.texels_per_pixel * camera.focal / depth, options.max_size)
    face_of, weights = rasterize(atlas.uv, atlas.faces, atlas.size)
    covered = face_of >= 0
    corners = atlas.faces[face_of[covered]]  # [T, 3]
    texel_weights = weights[covered][:, :, None]
    points = np.sum(atlas.vertices[corners] * texel_weights, axis=1)
    colours, seen = visible_colours(points, index, camera, raycaster, rgb, labels, label, tolerance)
    vertex_colours, vertex_seen = visible_colours(np.asarray(work.vertices), index, camera, raycaster, rgb,
                                                  labels, label, tolerance)
    if not vertex_seen.any() and seen.any():  # a small visible patch between vertices
        vertex_colours[:], vertex_seen[:] = colours[seen].mean(0), False
        fallback = colours[seen].mean(0)
    filled = fill_hidden(work, vertex_colours, vertex_seen, fallback)
    hidden = np.sum(filled[atlas.source[corners]] * texel_weights, axis=1)
    image = np.zeros((atlas.size, atlas.size, 3))
    image[covered] = np.where(seen[:, None], colours, hidden)
    image = dilate(image, covered)
    uv = np.stack([atlas.uv[:, 0], 1 - atlas.uv[:, 1]], 1)  # trimesh/glTF: v grows upwards in the image
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8)),
        metallicFactor=0.0, roughnessFactor=1.0)
    textured = trimesh.Trimesh(atlas.vertices, atlas.faces, process=False,
                               visual=trimesh.visual.TextureVisuals(uv=uv, material=material))
    return textured, float(seen.mean()) if len(seen) else 0.0


def texture_meshes(meshes: list[trimesh.Trimesh | None], ids: list[int], camera: PinholeCamera, rgb: np.ndarray,
                   labels: np.ndarray, options: TextureOptions | None = None) -> TexturedMeshes:
    """Colour each mesh from ``rgb`` through ``camera``: visible surface takes its pixel's colour
    (the nearest instance along a ray wins; only pixels on the instance's own mask count), hidden
    surface is filled from visible neighbours over the surface (no uncoloured texel or vertex)."""
    options = options or TextureOptions()
    start = time.perf_counter()
    if rgb.shape[:2] != labels.shape or (camera.height, camera.width) != labels.shape:
        raise ValueError(f"image {rgb.shape[:2]}, labels {labels.shape} and camera "
                         f"{(camera.height, camera.width)} differ in size")
    raycaster = InstanceRaycaster(meshes)
    present = [m for m in meshes if m is not None and len(m.faces)]
    extent = float(np.ptp(np.concatenate([m.bounds for m in present]), axis=0).max()) if present else 1.0
    tolerance = 2e-3 * extent
    out, fractions, warnings = [], [], []
    for index, (mesh, label) in enumerate(zip(meshes, ids)):
        if mesh is None or not len(mesh.faces):
            out.append(None)
            fractions.append(None)
            continue
        fallback = _fallback_colour(rgb, labels, label, index)
        if options.mode == "vertex":
            coloured, fraction = _vertex_coloured(mesh, index, label, camera, raycaster, rgb, labels, tolerance,
                                                  fallback)
        else:
            coloured, fraction = _texture_baked(mesh, index, label, camera, raycaster, rgb, labels, tolerance,
                                                fallback, options)
        if fraction == 0.0:
            source = "its mask's mean colour" if (labels == label).any() else "its instance colour (it has no mask pixel)"
            warnings.append(f"instance {label}: no visible surface at the estimated camera; coloured with {source}")
        out.append(coloured)
        fractions.append(fraction)
    return TexturedMeshes(out, fractions, warnings, time.perf_counter() - start)
