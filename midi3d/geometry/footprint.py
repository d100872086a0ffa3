"""An object's footprint orientation: the turn about the vertical (y) axis that makes its
bounding box tightest, and that turn applied to points, normals and meshes.

The minimal-area rectangle around a convex polygon has a side on one of its edges, so the
candidate angles are those of the footprint's convex hull (``scipy.spatial.ConvexHull``).
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy.spatial import ConvexHull


def footprint_yaw(points: np.ndarray) -> float:
    """The angle in ``[0, π/2)`` by which ``points (n, 3)`` are turned about the y axis away from
    their tightest footprint: turning them by minus it (:func:`turned`) makes the area of their
    axis-aligned footprint in the x-z plane minimal."""
    footprint = np.asarray(points, np.float64)[:, [0, 2]]
    hull = footprint[ConvexHull(footprint).vertices]
    edges = np.roll(hull, -1, axis=0) - hull
    angles = np.mod(np.arctan2(edges[:, 1], edges[:, 0]), np.pi / 2)
    best, best_area = 0.0, np.inf
    for angle in np.unique(angles):
        cos, sin = np.cos(angle), np.sin(angle)
        along = hull @ np.array([[cos, -sin], [sin, cos]])  # the hull in the frame turned by angle
        area = np.ptp(along[:, 0]) * np.ptp(along[:, 1])
        if area < best_area - 1e-12:
            best, best_area = float(angle), area
    return best


def yaw_matrix(angle: float) -> np.ndarray:
    """The 3x3 rotation by ``angle`` about the y axis whose x-z block maps (x, z) to
    (x cos - z sin, x sin + z cos): the turn :func:`footprint_yaw` measures."""
    cos, sin = np.cos(angle), np.sin(angle)
    return np.array([[cos, 0.0, -sin], [0.0, 1.0, 0.0], [sin, 0.0, cos]])


def turned(points: np.ndarray, angle: float, centre: np.ndarray) -> np.ndarray:
    """``points (n, 3)`` turned by ``angle`` about the vertical axis through ``centre`` (same dtype)."""
    rotation = yaw_matrix(angle)
    return ((np.asarray(points, np.float64) - centre) @ rotation.T + centre).astype(np.asarray(points).dtype)


def turned_mesh(mesh: trimesh.Trimesh, angle: float, centre: np.ndarray) -> trimesh.Trimesh:
    """A copy of ``mesh`` turned as :func:`turned` turns points."""
    transform = np.eye(4)
    transform[:3, :3] = yaw_matrix(angle)
    transform[:3, 3] = centre - transform[:3, :3] @ centre
    return mesh.copy().apply_transform(transform)


def footprint_turn(points: np.ndarray) -> tuple[float, np.ndarray]:
    """The turn ``(angle, centre)`` that brings ``points (n, 3)`` to their tightest footprint:
    minus :func:`footprint_yaw`, about the vertical axis through their box centre."""
    return -footprint_yaw(points), (points.min(0) + points.max(0)) / 2


def turned_samples(samples: np.ndarray, angle: float, centre: np.ndarray) -> np.ndarray:
    """Surface samples ``(n, 6)`` (points, normals) turned as :func:`turned` turns points."""
    out = np.array(samples, copy=True)
    out[:, :3] = turned(samples[:, :3], angle, centre)
    out[:, 3:6] = (np.asarray(samples[:, 3:6], np.float64) @ yaw_matrix(angle).T).astype(out.dtype)
    return out
