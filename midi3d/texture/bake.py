"""UV atlases (xatlas) and baking per-texel colours into a base-colour image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh


@dataclass
class Atlas:
    """A mesh with its own UVs: ``vertices [V, 3]``, ``faces [F, 3]``, ``uv [V, 2]`` in ``[0, 1]``
    (``v`` grows with the image row), ``source [V]`` the vertex of the unwrapped mesh each copies,
    and the atlas size in texels."""

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    source: np.ndarray
    size: int


def decimated(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """``mesh`` with at most ``max_faces`` faces (quadric edge collapse, fast-simplification);
    unchanged if under. About 10x faster than Open3D's quadric decimation on the embedded model's
    meshes at the same surface error (``benchmarks/bench_decimation.py``)."""
    if len(mesh.faces) <= max_faces:
        return mesh
    import fast_simplification

    vertices, faces = fast_simplification.simplify(np.asarray(mesh.vertices, np.float64),
                                                   np.asarray(mesh.faces, np.int64), target_count=int(max_faces))
    return trimesh.Trimesh(vertices, faces, process=True)


def unwrap(mesh: trimesh.Trimesh, texels_per_unit: float, max_size: int = 2048, padding: int = 2) -> Atlas:
    """Charts and packing with xatlas; the atlas is sized for ``texels_per_unit`` (capped)."""
    import xatlas

    area = float(mesh.area)
    size = int(np.clip(np.ceil(np.sqrt(area / 0.6) * texels_per_unit / 4) * 4, 64, max_size))
    chart_options = xatlas.ChartOptions()
    chart_options.max_iterations = 1  # one pass of chart growing: fast, charts good enough for baking
    pack_options = xatlas.PackOptions()
    pack_options.resolution = size
    pack_options.padding = padding
    pack_options.rotate_charts = False  # a little less dense, faster
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.uint32))
    atlas.generate(chart_options, pack_options)
    source, faces, uv = atlas[0]
    size = max(atlas.width, atlas.height)
    # xatlas normalises by width and height separately; make texels square in a size × size image
    uv = uv * np.array([atlas.width, atlas.height], np.float64) / size
    return Atlas(np.asarray(mesh.vertices)[source], np.asarray(faces, np.int64), uv, np.asarray(source, np.int64),
                 int(size))


def rasterize(uv: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Which face covers each texel centre of a ``size`` × ``size`` atlas (``-1``: none) and the
    texel's barycentric weights ``[size, size, 3]``."""
    corners = uv[faces] * size  # [F, 3, 2] in texels
    low = np.floor(corners.min(1) - 0.5).astype(np.int64) + 1
    high = np.floor(corners.max(1) - 0.5).astype(np.int64)
    low, high = np.clip(low, 0, size - 1), np.clip(high, 0, size - 1)
    spans = np.maximum(high - low + 1, 0)
    counts = spans[:, 0] * spans[:, 1]
    face = np.repeat(np.arange(len(faces)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    width = np.maximum(spans[face, 0], 1)
    x = low[face, 0] + local % width
    y = low[face, 1] + local // width
    a, b, c = corners[face, 0], corners[face, 1], corners[face, 2]
    px, py = x + 0.5, y + 0.5
    denominator = (b[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b[:, 0]) * (a[:, 1] - c[:, 1])
    safe = np.where(np.abs(denominator) > 1e-12, denominator, 1.0)
    w0 = ((b[:, 1] - c[:, 1]) * (px - c[:, 0]) + (c[:, 0] - b[:, 0]) * (py - c[:, 1])) / safe
    w1 = ((c[:, 1] - a[:, 1]) * (px - c[:, 0]) + (a[:, 0] - c[:, 0]) * (py - c[:, 1])) / safe
    w2 = 1 - w0 - w1
    inside = (np.abs(denominator) > 1e-12) & (w0 >= -1e-6) & (w1 >= -1e-6) & (w2 >= -1e-6)
    face_of = np.full((size, size), -1, np.int64)
    weights = np.zeros((size, size, 3))
    face_of[y[inside], x[inside]] = face[inside]
    weights[y[inside], x[inside]] = np.stack([w0, w1, w2], 1)[inside]
    return face_of, weights


def dilate(image: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Every empty texel takes the colour of the nearest filled one (no holes, no dark seams)."""
    from scipy.ndimage import distance_transform_edt

    if filled.all() or not filled.any():
        return image
    _, (rows, cols) = distance_transform_edt(~filled, return_indices=True)
    return image[rows, cols]
