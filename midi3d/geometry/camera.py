"""A pinhole camera over the scene frame, and instance-id rendering of meshes with Open3D.

Conventions: the camera frame is OpenCV's (x right, y down, z forward); a pixel ``(u, v)`` has
``u`` along the image's columns and ``v`` along its rows, pixel centres at ``+0.5``. glTF wants
the camera-to-world pose in OpenGL's convention (looking along -z, y up): :meth:`PinholeCamera.pose_gl`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

CV_TO_GL = np.diag([1.0, -1.0, -1.0])  # OpenCV camera axes → OpenGL camera axes


@dataclass(frozen=True)
class PinholeCamera:
    """``x_cam = rotation @ x_world + translation``; ``u = focal·x/z + cx``, ``v = focal·y/z + cy``."""

    rotation: np.ndarray  # [3, 3] world → camera
    translation: np.ndarray  # [3]
    focal: float  # pixels (square pixels)
    width: int
    height: int
    principal: tuple[float, float] | None = None  # None: the image centre

    @property
    def centre_px(self) -> tuple[float, float]:
        return self.principal if self.principal is not None else (self.width / 2, self.height / 2)

    @property
    def eye(self) -> np.ndarray:
        """The camera centre in the scene frame."""
        return -self.rotation.T @ self.translation

    @property
    def fov_deg(self) -> tuple[float, float]:
        """Horizontal and vertical field of view."""
        return (float(np.degrees(2 * np.arctan(self.width / 2 / self.focal))),
                float(np.degrees(2 * np.arctan(self.height / 2 / self.focal))))

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, np.float64) @ self.rotation.T + self.translation

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates ``[N, 2]`` and depths ``[N]`` of scene points (depth <= 0: behind)."""
        cam = self.to_camera(points)
        depth = cam[:, 2]
        safe = np.where(depth > 1e-9, depth, 1e-9)
        cx, cy = self.centre_px
        return np.stack([self.focal * cam[:, 0] / safe + cx, self.focal * cam[:, 1] / safe + cy], 1), depth

    def rays(self, rows: np.ndarray | None = None, cols: np.ndarray | None = None) -> np.ndarray:
        """``[H, W, 6]`` float32 rays (origin, unit direction) through the pixel centres, or ``[N, 6]``
        through the given pixels only."""
        cx, cy = self.centre_px
        if rows is None:
            u, v = np.meshgrid(np.arange(self.width) + 0.5, np.arange(self.height) + 0.5)
        else:
            u, v = np.asarray(cols, np.float64) + 0.5, np.asarray(rows, np.float64) + 0.5
        directions = np.stack([(u - cx) / self.focal, (v - cy) / self.focal, np.ones_like(u)], -1)
        directions = directions @ self.rotation  # camera → world (R^T d, row-wise)
        directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
        origins = np.broadcast_to(self.eye, directions.shape)
        return np.concatenate([origins, directions], -1).astype(np.float32)

    def resized(self, width: int, height: int) -> PinholeCamera:
        """The same camera for an image resized to ``width`` × ``height``."""
        sx, sy = width / self.width, height / self.height
        principal = None if self.principal is None else (self.principal[0] * sx, self.principal[1] * sy)
        return PinholeCamera(self.rotation, self.translation, self.focal * (sx + sy) / 2, width, height, principal)

    def pose_gl(self) -> np.ndarray:
        """``[4, 4]`` camera-to-world transform in OpenGL's camera convention (glTF, trimesh)."""
        pose = np.eye(4)
        pose[:3, :3] = self.rotation.T @ CV_TO_GL
        pose[:3, 3] = self.eye
        return pose

    def to_dict(self) -> dict:
        cx, cy = self.centre_px
        return {"rotation": self.rotation.tolist(), "translation": self.translation.tolist(),
                "focal_px": float(self.focal), "principal_px": [float(cx), float(cy)],
                "image_size": [int(self.width), int(self.height)], "fov_deg": list(self.fov_deg),
                "eye": self.eye.tolist(), "convention": "opencv world-to-camera"}

    @classmethod
    def from_dict(cls, data: dict) -> PinholeCamera:
        width, height = data["image_size"]
        principal = tuple(data["principal_px"]) if "principal_px" in data else None
        if principal == (width / 2, height / 2):
            principal = None
        return cls(np.asarray(data["rotation"], float), np.asarray(data["translation"], float),
                   float(data["focal_px"]), int(width), int(height), principal)

    @classmethod
    def look_at(cls, eye, centre, up, fov_deg: float, width: int, height: int) -> PinholeCamera:
        """A camera at ``eye`` looking at ``centre`` (``up`` roughly up), horizontal field of view."""
        eye, centre, up = (np.asarray(a, float) for a in (eye, centre, up))
        forward = centre - eye
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, up)
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        rotation = np.stack([right, down, forward])
        focal = width / 2 / np.tan(np.radians(fov_deg) / 2)
        return cls(rotation, -rotation @ eye, float(focal), int(width), int(height))


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Geodesic angle between two rotation matrices."""
    cos = (np.trace(a @ b.T) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


@dataclass
class RayHits:
    """Per pixel: instance index + 1 (0 = nothing), distance along the ray, triangle and barycentrics."""

    ids: np.ndarray  # [H, W] int
    distance: np.ndarray  # [H, W] float (inf where nothing)
    triangle: np.ndarray  # [H, W] int (-1 where nothing)
    barycentric: np.ndarray  # [H, W, 2] Open3D's primitive_uvs (weights of vertices 1 and 2)


class InstanceRaycaster:
    """Open3D ray casting over a fixed set of instance meshes (``None`` entries are skipped)."""

    def __init__(self, meshes: list[trimesh.Trimesh | None]):
        import open3d as o3d

        self._o3d = o3d
        self.scene = o3d.t.geometry.RaycastingScene()
        self.instance_of_geometry: list[int] = []
        for index, mesh in enumerate(meshes):
            if mesh is None or len(mesh.faces) == 0:
                continue
            self.scene.add_triangles(o3d.core.Tensor(np.asarray(mesh.vertices, np.float32)),
                                     o3d.core.Tensor(np.asarray(mesh.faces, np.uint32)))
            self.instance_of_geometry.append(index)
        self._lookup = np.asarray(self.instance_of_geometry + [-1], np.int64)

    def cast(self, rays: np.ndarray) -> RayHits:
        """Cast ``[..., 6]`` rays."""
        o3d = self._o3d
        hits = self.scene.cast_rays(o3d.core.Tensor(np.ascontiguousarray(rays, np.float32)))
        geometry = hits["geometry_ids"].numpy().astype(np.int64)
        missed = geometry == o3d.t.geometry.RaycastingScene.INVALID_ID
        geometry = np.where(missed, len(self.instance_of_geometry), geometry)
        ids = self._lookup[geometry] + 1
        triangle = np.where(missed, -1, hits["primitive_ids"].numpy().astype(np.int64))
        return RayHits(ids, hits["t_hit"].numpy().astype(np.float64), triangle, hits["primitive_uvs"].numpy())

    def render(self, camera: PinholeCamera) -> RayHits:
        return self.cast(camera.rays())

    def render_ids(self, camera: PinholeCamera) -> np.ndarray:
        """``[H, W]``: index + 1 of the instance seen at each pixel, 0 for none."""
        return self.render(camera).ids


def silhouette_ious(rendered: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """IoU of ``rendered == k + 1`` with ``masks[k]`` for each instance (NaN where both are empty)."""
    ious = []
    for index, mask in enumerate(masks):
        drawn = rendered == index + 1
        union = np.logical_or(drawn, mask).sum()
        ious.append(np.logical_and(drawn, mask).sum() / union if union else np.nan)
    return np.asarray(ious, np.float64)
