"""Signed distance to the synthetic furniture, for VAE supervision.

An object is a union of closed primitives (boxes, cylinders) that may overlap, so ray parity on
the whole mesh is unreliable; the distance to the union is the minimum over its parts, each
of which is closed and convex. Inside is negative (the MIDI convention: ``value <= 0`` is
occupied).
"""

from __future__ import annotations

import numpy as np
import trimesh


def mesh_parts(mesh: trimesh.Trimesh) -> list[trimesh.Trimesh]:
    """Connected components of ``mesh`` (one per primitive of a synthetic object)."""
    if len(mesh.faces) == 0:
        raise ValueError("mesh has no faces")
    return list(mesh.split(only_watertight=False))


def signed_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Signed distance ``(n,) float32`` from ``points (n, 3)`` to the union of the mesh's parts."""
    import open3d as o3d

    query = o3d.core.Tensor(np.ascontiguousarray(points, dtype=np.float32))
    best = np.full(len(points), np.inf, dtype=np.float32)
    for part in mesh_parts(mesh):
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(np.asarray(part.vertices, np.float32)),
                            o3d.core.Tensor(np.asarray(part.faces, np.uint32)))
        best = np.minimum(best, scene.compute_signed_distance(query).numpy())
    return best


def query_points(surface: np.ndarray, rng: np.random.Generator, near: int, uniform: int,
                 sigmas: tuple[float, float] = (0.005, 0.03), box: float = 1.0, around: int = 0,
                 margin: float = 0.3) -> np.ndarray:
    """``near`` points around surface samples (two noise scales, half each), ``uniform`` points
    in the box ``[-box, box]^3`` and ``around`` points uniform in the object's own bounding box
    grown by ``margin`` (inside ``[-box, box]^3``): ``(near + uniform + around, 3) float32``.

    The ``around`` points supervise the space next to an object but beyond the near band, where
    a few uniform points per object leave a decoder free to grow spurs (e.g. down to the floor).
    """
    picks = surface[rng.integers(len(surface), size=near)]
    scale = np.repeat(np.asarray(sigmas, np.float32), [near - near // 2, near // 2])[:, None]
    jittered = picks + rng.standard_normal(picks.shape).astype(np.float32) * scale
    spread = rng.uniform(-box, box, size=(uniform, 3)).astype(np.float32)
    parts = [jittered, spread]
    if around:  # no draw when off, so caches built without it are reproduced exactly
        low = np.maximum(surface.min(axis=0) - margin, -box)
        high = np.minimum(surface.max(axis=0) + margin, box)
        parts.append(rng.uniform(low, high, size=(around, 3)).astype(np.float32))
    return np.concatenate(parts).astype(np.float32)
