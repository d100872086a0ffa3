"""Colours from the photo: which surface points the camera sees, their pixel colours, and a fill
of the hidden ones from visible neighbours over the surface."""

from __future__ import annotations

import numpy as np
import trimesh

from ..geometry.camera import InstanceRaycaster, PinholeCamera


def bilinear(image: np.ndarray, uv: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Sample ``image [H, W, C]`` at pixel coordinates ``uv [N, 2]`` (pixel centres at ``+0.5``);
    with ``mask [H, W]``, only the neighbours on the mask count (no colour bleeds in from outside)."""
    height, width = image.shape[:2]
    x = np.clip(uv[:, 0] - 0.5, 0, width - 1)
    y = np.clip(uv[:, 1] - 0.5, 0, height - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = x - x0, y - y0
    image = image.astype(np.float64)
    total = np.zeros((len(uv), image.shape[2]))
    weight_sum = np.zeros(len(uv))
    for rows, cols, weight in ((y0, x0, (1 - fx) * (1 - fy)), (y0, x1, fx * (1 - fy)),
                               (y1, x0, (1 - fx) * fy), (y1, x1, fx * fy)):
        if mask is not None:
            weight = weight * mask[rows, cols]
        total += image[rows, cols] * weight[:, None]
        weight_sum += weight
    nearest = image[np.clip(np.floor(uv[:, 1]).astype(int), 0, height - 1),
                    np.clip(np.floor(uv[:, 0]).astype(int), 0, width - 1)]
    return np.where(weight_sum[:, None] > 1e-9, total / np.maximum(weight_sum, 1e-9)[:, None], nearest)


def visible_colours(points: np.ndarray, instance: int, camera: PinholeCamera, raycaster: InstanceRaycaster,
                    rgb: np.ndarray, labels: np.ndarray, label: int, tolerance: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Colours ``[N, 3]`` (0–255 floats) and a visibility flag ``[N]`` for surface points of
    instance ``instance`` (its index in the raycaster's meshes).

    A point is visible when the ray from the camera to it first hits this instance within
    ``tolerance`` of the point (the nearest instance along the ray wins) and its pixel lies in
    the image and on the instance's own mask (so no background bleeds into the texture).
    """
    uv, depth = camera.project(points)
    height, width = labels.shape
    col, row = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inside = (depth > 0) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
    visible = np.zeros(len(points), bool)
    candidates = np.flatnonzero(inside)
    candidates = candidates[labels[row[candidates], col[candidates]] == label]
    if len(candidates):
        eye = camera.eye
        offset = points[candidates] - eye
        distance = np.linalg.norm(offset, axis=1)
        rays = np.concatenate([np.broadcast_to(eye, offset.shape), offset / distance[:, None]], 1)
        hits = raycaster.cast(rays)
        visible[candidates] = (hits.ids == instance + 1) & (np.abs(hits.distance - distance) <= tolerance)
    colours = np.zeros((len(points), 3))
    if visible.any():
        colours[visible] = bilinear(rgb, uv[visible], labels == label)
    return colours, visible


def fill_hidden(mesh: trimesh.Trimesh, colours: np.ndarray, known: np.ndarray, fallback: np.ndarray
                ) -> np.ndarray:
    """Colour every vertex: known ones keep theirs; hidden ones get the harmonic interpolation of
    the known ones over the mesh's edges (each hidden vertex the mean of its neighbours), per
    connected piece; a piece with no known vertex takes ``fallback``."""
    from scipy.sparse import coo_matrix, csgraph, diags
    from scipy.sparse.linalg import spsolve

    count = len(mesh.vertices)
    result = np.array(colours, np.float64)
    if known.all():
        return result
    edges = mesh.edges_unique
    adjacency = coo_matrix((np.ones(2 * len(edges)), (np.r_[edges[:, 0], edges[:, 1]], np.r_[edges[:, 1], edges[:, 0]])),
                           shape=(count, count)).tocsr()
    pieces, piece_of = csgraph.connected_components(adjacency, directed=False)
    has_known = np.bincount(piece_of, weights=known.astype(float), minlength=pieces) > 0
    orphan = ~has_known[piece_of]
    result[orphan] = fallback
    solve = ~known & ~orphan
    if solve.any():
        laplacian = (diags(np.asarray(adjacency.sum(1)).ravel()) - adjacency).tocsr()
        hidden_index, known_index = np.flatnonzero(solve), np.flatnonzero(known)
        system = laplacian[hidden_index][:, hidden_index].tocsc()
        rhs = -(laplacian[hidden_index][:, known_index] @ result[known_index])
        solution = spsolve(system, rhs)
        result[hidden_index] = solution.reshape(len(hidden_index), -1)
    return result
