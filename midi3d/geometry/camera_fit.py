"""Estimate the pinhole camera that projects a scene's instance meshes onto their masks.

Silhouette agreement (mean IoU over instances) is the goal; it is not smooth, so the search works
on surface samples and two distance terms that vanish when the silhouettes match:

* *coverage*: every pixel of instance *i*'s mask lies near a projected sample of instance *i*
  (a mask only shows the visible part of an object, which its full projection contains);
* *containment*: every projected sample lies on some instance's mask (a sample hidden behind
  another instance lands on that one's mask, so occlusion needs no special case).

1. Multi-start, independent of the scene frame's axis convention: cameras on a sphere of
   viewing directions around the scene, each with several rolls, placed so that the projected
   scene's bounding box matches the masks' (vectorised over all starts), scored on a coarse grid.
2. The best few starts are refined with ``scipy.optimize.least_squares`` over rotation,
   translation and focal length (principal point fixed at the image centre unless given).
3. The winner is the start with the highest rendered mean IoU (Open3D ray casting).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import trimesh

from ..io.errors import InputError
from .camera import InstanceRaycaster, PinholeCamera, silhouette_ious

COARSE_SAMPLES = 150  # samples per instance the multi-start projects


@dataclass(frozen=True)
class CameraFitOptions:
    """Search settings; the defaults suit scenes of 1–24 objects at any image size."""

    working_size: int = 256  # long side of the masks the search compares against
    views: int = 64  # viewing directions of the multi-start (Fibonacci sphere)
    rolls: int = 8  # rolls about each viewing direction
    fov_deg: float = 50.0  # starting field of view (long side)
    refine: int = 3  # best starts refined on sampled surface points (more for scenes of < 5 instances)
    polish: int = 2  # best refined cameras aligned on rendered outlines
    samples_per_instance: int = 600
    mask_samples_per_instance: int = 300
    min_mask_pixels: int = 4  # smaller masks (at the working size) are scored but do not steer the fit
    fix_focal: float | None = None  # pixels at the full image size: keep the focal length fixed
    principal: tuple[float, float] | None = None  # pixels at the full image size; None: the centre
    initial: PinholeCamera | None = None  # a guess, refined alongside the multi-start
    seed: int = 0

    def __post_init__(self):
        if self.working_size < 16:
            raise ValueError(f"working_size must be >= 16, got {self.working_size}")
        if min(self.views, self.rolls, self.refine, self.polish) < 1:
            raise ValueError("views, rolls, refine and polish must be >= 1")


@dataclass
class CameraFit:
    """The estimated camera at the input image's size and its per-instance silhouette IoU."""

    camera: PinholeCamera
    ious: list[float | None]  # per instance, None where it has no mesh
    seconds: float
    starts: int = 0
    details: dict = field(default_factory=dict)

    @property
    def mean_iou(self) -> float:
        values = [v for v in self.ious if v is not None and np.isfinite(v)]
        return float(np.mean(values)) if values else 0.0


def _fibonacci_sphere(count: int) -> np.ndarray:
    index = np.arange(count) + 0.5
    polar = np.arccos(1 - 2 * index / count)
    azimuth = np.pi * (1 + 5 ** 0.5) * index
    return np.stack([np.cos(azimuth) * np.sin(polar), np.cos(polar), np.sin(azimuth) * np.sin(polar)], 1)


def _start_rotations(views: int, rolls: int) -> np.ndarray:
    """``[views·rolls, 3, 3]`` world→camera rotations looking along ``-direction`` with each roll."""
    rotations = []
    for direction in _fibonacci_sphere(views):
        forward = -direction
        helper = np.array([0.0, 1.0, 0.0]) if abs(forward[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
        right = np.cross(forward, helper)
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        for angle in np.arange(rolls) * 2 * np.pi / rolls:
            c, s = np.cos(angle), np.sin(angle)
            rotations.append(np.stack([c * right + s * down, -s * right + c * down, forward]))
    return np.asarray(rotations)


def _rodrigues(vector: np.ndarray) -> np.ndarray:
    angle = np.linalg.norm(vector)
    if angle < 1e-12:
        return np.eye(3)
    k = vector / angle
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def _downsample_labels(labels: np.ndarray, ids: list[int], size: int) -> tuple[np.ndarray, float]:
    """Resize a label map so that its long side is at most ``size``: each pixel takes the label
    covering most of its area (box filter), so that pixel geometry is kept exactly."""
    from PIL import Image

    height, width = labels.shape
    scale = min(1.0, size / max(height, width))
    if scale == 1.0:
        return labels, 1.0
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    present = [value for value in ids if (labels == value).any()]
    coverage = [np.asarray(Image.fromarray((labels == value).astype(np.float32)).resize(target, Image.BOX))
                for value in present]
    background = 1 - np.sum(coverage, axis=0) if coverage else np.ones(target[::-1], np.float32)
    winner = np.argmax(np.stack([background] + coverage), axis=0)
    return np.asarray([0] + present, labels.dtype)[winner], scale


def _point_jacobian(camera: PinholeCamera, points: np.ndarray, fix_focal: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels ``[N, 2]``, depths ``[N]`` and ``d(u, v)/d(ω, δ, log f)`` ``[N, 2, 7]`` (``[N, 2, 6]``
    with a fixed focal) for the update of :func:`_apply`."""
    cam = camera.to_camera(points)
    z = np.maximum(cam[:, 2], 1e-6)
    f = camera.focal
    cx, cy = camera.centre_px
    uv = np.stack([f * cam[:, 0] / z + cx, f * cam[:, 1] / z + cy], 1)
    depth = _mean_depth(camera, points)
    d_uv = np.zeros((len(cam), 2, 3))  # d(u, v)/d(x_cam)
    d_uv[:, 0, 0] = f / z
    d_uv[:, 1, 1] = f / z
    d_uv[:, 0, 2] = -f * cam[:, 0] / z ** 2
    d_uv[:, 1, 2] = -f * cam[:, 1] / z ** 2
    skew = np.zeros((len(cam), 3, 3))  # d(x_cam)/d(ω) = -[x]_×
    skew[:, 0, 1], skew[:, 0, 2] = cam[:, 2], -cam[:, 1]
    skew[:, 1, 0], skew[:, 1, 2] = -cam[:, 2], cam[:, 0]
    skew[:, 2, 0], skew[:, 2, 1] = cam[:, 1], -cam[:, 0]
    jac = np.concatenate([d_uv @ skew, d_uv * depth, (uv - (cx, cy))[:, :, None]], 2)
    return uv, cam[:, 2], jac[..., :6] if fix_focal else jac


def _mean_depth(camera: PinholeCamera, points: np.ndarray) -> float:
    return float(np.mean(np.maximum(camera.to_camera(points)[:, 2], 1e-6)))


class _Problem:
    """Samples, masks and distance maps at the working size."""

    def __init__(self, meshes: list[trimesh.Trimesh], masks: list[np.ndarray], options: CameraFitOptions):
        from scipy.ndimage import distance_transform_edt

        rng = np.random.default_rng(options.seed)
        self.height, self.width = masks[0].shape
        self.masks = masks
        self.points = []
        for mesh in meshes:
            points, _ = trimesh.sample.sample_surface(mesh, options.samples_per_instance,
                                                      seed=int(rng.integers(1 << 31)))
            self.points.append(np.asarray(points, np.float64))
        self.owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(self.points)])
        self.all_points = np.concatenate(self.points)
        coarse = max(1, options.samples_per_instance // COARSE_SAMPLES)
        self.coarse_points, self.coarse_owner = self.all_points[::coarse], self.owner[::coarse]
        self.foreground = np.any(masks, axis=0)
        self.outside_distance = distance_transform_edt(~self.foreground)
        grad_v, grad_u = np.gradient(self.outside_distance)
        self.outside_gradient = (grad_u, grad_v)
        self.mask_pixels = []
        for mask in masks:
            rows, cols = np.nonzero(mask)
            pixels = np.stack([cols + 0.5, rows + 0.5], 1)
            if len(pixels) > options.mask_samples_per_instance:
                pixels = pixels[rng.choice(len(pixels), options.mask_samples_per_instance, replace=False)]
            self.mask_pixels.append(pixels)
        rows, cols = np.nonzero(self.foreground)
        self.box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float64)
        self.scale = float(max(self.height, self.width))
        self.signed_distances = _signed_distances(masks)
        self.label_image = np.zeros(masks[0].shape, np.int64)
        for index, mask in enumerate(masks):
            self.label_image[mask] = index + 1

    def linearise(self, camera: PinholeCamera, fix_focal: bool) -> tuple[np.ndarray, np.ndarray]:
        """Residuals (pixels / long side) and their Jacobian with respect to a small update
        ``(ω, δ, log f)``: ``x_cam ← exp(ω) x_cam + δ·d`` (``d`` the mean depth), ``f ← f·e^{log f}``."""
        from scipy.ndimage import map_coordinates
        from scipy.spatial import cKDTree

        uv, z, jac_point = _point_jacobian(camera, self.all_points, fix_focal)
        behind = z <= 1e-6

        # containment: distance-to-mask map, bilinear, plus the distance beyond the image border
        inside_u = np.clip(uv[:, 0] - 0.5, 0, self.width - 1)
        inside_v = np.clip(uv[:, 1] - 0.5, 0, self.height - 1)
        beyond = np.stack([uv[:, 0] - 0.5 - inside_u, uv[:, 1] - 0.5 - inside_v], 1)
        beyond_len = np.linalg.norm(beyond, axis=1)
        inner = map_coordinates(self.outside_distance, [inside_v, inside_u], order=1, mode="nearest")
        grad = np.stack([map_coordinates(g, [inside_v, inside_u], order=1, mode="nearest")
                         for g in self.outside_gradient], 1)
        grad = grad + np.where(beyond_len[:, None] > 0, beyond / np.maximum(beyond_len, 1e-9)[:, None], 0)
        weight = 1 / np.sqrt(len(uv))
        residuals = [np.where(behind, self.scale, inner + beyond_len) * weight]
        jacobians = [np.einsum("nk,nkp->np", grad, jac_point) * weight * (~behind)[:, None]]

        # coverage: each mask sample to the nearest projected sample of its own instance
        instances = sum(1 for pixels in self.mask_pixels if len(pixels))
        for index, pixels in enumerate(self.mask_pixels):
            if not len(pixels):
                continue
            members = np.flatnonzero(self.owner == index)
            distance, nearest = cKDTree(uv[members]).query(pixels, k=1)
            point = members[nearest]
            direction = (uv[point] - pixels) / np.maximum(distance, 1e-9)[:, None]
            weight = 1 / np.sqrt(len(pixels) * instances)
            residuals.append(distance * weight)
            jacobians.append(np.einsum("nk,nkp->np", direction, jac_point[point]) * weight)
        return np.concatenate(residuals) / self.scale, np.concatenate(jacobians) / self.scale


def _project_starts(points: np.ndarray, rotations: np.ndarray, translations: np.ndarray, focal: float,
                    centre_px) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``u, v, z`` of ``points`` under every start: each ``[S, N]``."""
    cam = np.matmul(points[None], rotations.transpose(0, 2, 1)) + translations[:, None]
    z = cam[..., 2]
    safe = np.maximum(z, 1e-6)
    return focal * cam[..., 0] / safe + centre_px[0], focal * cam[..., 1] / safe + centre_px[1], z


def _place(problem: _Problem, rotations: np.ndarray, focal: float, centre_px, iterations: int = 4) -> np.ndarray:
    """Translations ``[S, 3]`` that fit the projected bounding box of the samples to the masks' box."""
    points = problem.coarse_points
    middle = (points.min(0) + points.max(0)) / 2
    radius = np.linalg.norm(points - middle, axis=1).max()
    half_fov = np.arctan(max(problem.width, problem.height) / 2 / focal)
    distance = radius / np.sin(half_fov) * 1.05
    translations = np.array([0.0, 0.0, distance])[None] - rotations @ middle
    target_centre = (problem.box[:2] + problem.box[2:]) / 2
    target_size = np.sqrt(np.prod(problem.box[2:] - problem.box[:2]))
    for _ in range(iterations):
        u, v, z = _project_starts(points, rotations, translations, focal, centre_px)
        low = np.stack([u.min(1), v.min(1)], 1)
        high = np.stack([u.max(1), v.max(1)], 1)
        size = np.sqrt(np.prod(np.maximum(high - low, 1e-6), axis=1))
        mean_z = z.mean(1)
        translations[:, :2] += (target_centre - (low + high) / 2) * (mean_z / focal)[:, None]
        translations[:, 2] += mean_z * (np.clip(size / target_size, 0.2, 5.0) - 1)
    return translations


def _coarse_scores(problem: _Problem, rotations: np.ndarray, translations: np.ndarray, focal: float,
                   centre_px, grid: int = 32) -> np.ndarray:
    """Lower is better: per start, the fraction of samples off every mask plus, per instance, the
    fraction of its mask cells no own sample reaches (on a ``grid``-cell coarse raster)."""
    from scipy.ndimage import binary_dilation

    cell = max(problem.width, problem.height) / grid
    gw, gh = int(np.ceil(problem.width / cell)), int(np.ceil(problem.height / cell))
    u, v, z = _project_starts(problem.coarse_points, rotations, translations, focal, centre_px)
    col, row = np.floor(u / cell).astype(np.int64), np.floor(v / cell).astype(np.int64)
    valid = (col >= 0) & (col < gw) & (row >= 0) & (row < gh) & (z > 1e-6)
    coarse_masks = []
    for mask in problem.masks:
        rows, cols = np.nonzero(mask)
        coarse = np.zeros((gh, gw), bool)
        coarse[(rows / problem.height * gh).astype(int), (cols / problem.width * gw).astype(int)] = True
        coarse_masks.append(coarse)
    foreground = binary_dilation(np.any(coarse_masks, axis=0))
    cell_index = np.where(valid, row * gw + col, 0)
    score = (~valid | ~foreground.reshape(-1)[cell_index]).mean(1)
    starts, instances = len(rotations), len(problem.points)
    flat = (np.arange(starts)[:, None] * instances + problem.coarse_owner[None]) * (gh * gw) + cell_index
    hit = np.bincount(flat[valid], minlength=starts * instances * gh * gw).reshape(starts, instances, gh, gw) > 0
    hit = hit | np.roll(hit, 1, 2) | np.roll(hit, -1, 2) | np.roll(hit, 1, 3) | np.roll(hit, -1, 3)
    for index, coarse in enumerate(coarse_masks):
        if coarse.any():
            score = score + (coarse[None] & ~hit[:, index]).sum((1, 2)) / coarse.sum() / instances
    return score


def _signed_distances(masks: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per mask: signed distance to its edge in pixels (negative inside, zero on the edge between
    pixel centres) and its two gradients."""
    from scipy.ndimage import distance_transform_edt

    fields = []
    for mask in masks:
        inside = distance_transform_edt(mask) - 0.5
        outside = distance_transform_edt(~mask) - 0.5
        sdf = np.where(mask, -inside, outside)
        grad_v, grad_u = np.gradient(sdf)
        fields.append((sdf, grad_u, grad_v))
    return fields


def _rim_pixels(hits) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of rendered pixels on an instance's outline against the background or an
    instance behind it (the outline the photo's mask shows too)."""
    ids, distance = hits.ids, hits.distance
    rim = np.zeros(ids.shape, bool)
    for axis in (0, 1):
        for shift in (1, -1):
            neighbour = np.roll(ids, shift, axis)
            neighbour_distance = np.roll(distance, shift, axis)
            edge = (ids > 0) & (neighbour != ids) & ((neighbour == 0) | (neighbour_distance > distance))
            border = [slice(None)] * 2
            border[axis] = 0 if shift == 1 else -1
            edge[tuple(border)] = False  # the image border is not an outline
            rim |= edge
    return np.nonzero(rim)


def _polish(problem: _Problem, camera: PinholeCamera, raycaster: InstanceRaycaster, fix_focal: bool,
            iterations: int = 12, robust: float = 1.5) -> tuple[PinholeCamera, float]:
    """Contour alignment: re-render, pull each rendered outline point onto its own mask's edge
    (one damped Gauss–Newton step per render); keeps the camera with the best rendered mean IoU."""
    from scipy.ndimage import map_coordinates

    fields = problem.signed_distances
    labels = problem.label_image

    def score(hits) -> float:
        return float(np.nanmean(silhouette_ious(hits.ids, problem.masks)))

    hits = raycaster.render(camera)
    best, best_iou = camera, score(hits)
    damping = 1e-2
    for _ in range(iterations):
        rows, cols = _rim_pixels(hits)
        if len(rows) < 8:
            break
        owner = hits.ids[rows, cols] - 1
        rays = camera.rays(rows, cols)
        points = rays[:, :3] + rays[:, 3:] * hits.distance[rows, cols][:, None]
        uv, _, jac = _point_jacobian(camera, points, fix_focal)
        residual = np.zeros(len(points))
        gradient = np.zeros((len(points), 2))
        for index, (sdf, grad_u, grad_v) in enumerate(fields):
            members = owner == index
            if not members.any():
                continue
            coords = [uv[members, 1] - 0.5, uv[members, 0] - 0.5]
            residual[members] = map_coordinates(sdf, coords, order=1, mode="nearest") + 0.5
            gradient[members] = np.stack([map_coordinates(grad_u, coords, order=1, mode="nearest"),
                                          map_coordinates(grad_v, coords, order=1, mode="nearest")], 1)
        seen = labels[rows, cols]
        weight = np.where((seen == 0) | (seen == owner + 1), 1.0, 0.0)  # on another mask: maybe occluded
        weight *= np.where(np.abs(residual) < robust, 1.0, robust / np.maximum(np.abs(residual), 1e-12))
        counts = np.bincount(owner, minlength=len(fields))
        weight /= np.maximum(counts[owner], 1)  # each instance counts once
        rows_jac = np.einsum("nk,nkp->np", gradient, jac)
        normal = rows_jac.T @ (rows_jac * weight[:, None])
        rhs = rows_jac.T @ (weight * residual)
        improved = False
        depth = _mean_depth(camera, problem.all_points)
        for _ in range(4):
            trial = _apply(camera, _damped_step(normal, rhs, damping), depth)
            trial_hits = raycaster.render(trial)
            trial_iou = score(trial_hits)
            if trial_iou >= best_iou:
                camera, hits = trial, trial_hits
                improved = trial_iou > best_iou + 1e-5
                best, best_iou = trial, trial_iou
                damping = max(damping / 3, 1e-6)
                break
            damping *= 5
        if not improved:
            break
    return best, best_iou


def _damped_step(normal: np.ndarray, gradient: np.ndarray, damping: float) -> np.ndarray:
    """The Levenberg–Marquardt step ``-(JᵀWJ + λ·diag(JᵀWJ))⁻¹ JᵀWr`` (a tiny ridge keeps it solvable)."""
    regularised = normal + damping * (np.diag(np.diag(normal)) + 1e-9 * np.eye(len(normal)))
    return -np.linalg.solve(regularised, gradient)


def _apply(camera: PinholeCamera, step: np.ndarray, depth: float) -> PinholeCamera:
    turn = _rodrigues(step[:3])
    focal = camera.focal * float(np.exp(step[6])) if len(step) > 6 else camera.focal
    return PinholeCamera(turn @ camera.rotation, turn @ camera.translation + step[3:6] * depth, focal,
                         camera.width, camera.height, camera.principal)


def _refine(problem: _Problem, camera: PinholeCamera, fix_focal: bool, iterations: int = 25,
            robust: float = 0.02) -> tuple[PinholeCamera, float]:
    """Levenberg–Marquardt on the coverage and containment residuals (Huber-weighted); returns
    the camera and its cost."""
    damping = 1e-3

    def cost(r: np.ndarray) -> float:
        a = np.abs(r)
        return float(np.sum(np.where(a < robust, 0.5 * a ** 2, robust * (a - 0.5 * robust))))

    residuals, jacobian = problem.linearise(camera, fix_focal)
    current = cost(residuals)
    for _ in range(iterations):
        depth = _mean_depth(camera, problem.all_points)
        weights = np.where(np.abs(residuals) < robust, 1.0, robust / np.maximum(np.abs(residuals), 1e-12))
        normal = jacobian.T @ (jacobian * weights[:, None])
        gradient = jacobian.T @ (weights * residuals)
        improved = False
        for _ in range(8):
            trial = _apply(camera, _damped_step(normal, gradient, damping), depth)
            trial_residuals, trial_jacobian = problem.linearise(trial, fix_focal)
            trial_cost = cost(trial_residuals)
            if trial_cost < current:
                camera, residuals, jacobian = trial, trial_residuals, trial_jacobian
                improved = current - trial_cost > 1e-7 * max(current, 1e-12)
                current = trial_cost
                damping = max(damping / 3, 1e-7)
                break
            damping *= 4
        if not improved:
            break
    return camera, current


def estimate_camera(meshes: list[trimesh.Trimesh | None], labels: np.ndarray, ids: list[int],
                    options: CameraFitOptions | None = None) -> CameraFit:
    """The pinhole camera that best projects ``meshes[k]`` onto ``labels == ids[k]``.

    Instances without a mesh (``None`` or no faces) are left out of the fit; their IoU is ``None``.
    Raises :class:`InputError` when no instance has both a surface and a mask pixel.
    """
    options = options or CameraFitOptions()
    start_time = time.perf_counter()
    if len(meshes) != len(ids):
        raise ValueError(f"{len(meshes)} meshes for {len(ids)} instance ids")
    height, width = labels.shape
    small, scale = _downsample_labels(labels, ids, options.working_size)
    usable = [k for k, mesh in enumerate(meshes)
              if mesh is not None and len(mesh.faces) and mesh.area > 0 and (small == ids[k]).any()]
    if not usable:
        missing = [ids[k] for k, m in enumerate(meshes) if m is None or not len(m.faces)]
        reason = "no instance has a surface" if len(missing) == len(ids) else \
            "no instance with a surface has a mask pixel at the working size"
        raise InputError(f"camera estimation: {reason}")
    steering = [k for k in usable if (small == ids[k]).sum() >= options.min_mask_pixels] or usable
    problem = _Problem([meshes[k] for k in steering], [small == ids[k] for k in steering], options)
    small_height, small_width = small.shape
    principal = None if options.principal is None else (options.principal[0] * small_width / width,
                                                         options.principal[1] * small_height / height)
    centre_px = principal if principal is not None else (small_width / 2, small_height / 2)
    long_side = max(small_width, small_height)
    focal = (options.fix_focal * long_side / max(width, height) if options.fix_focal
             else long_side / 2 / np.tan(np.radians(options.fov_deg) / 2))
    rotations = _start_rotations(options.views, options.rolls)
    translations = _place(problem, rotations, focal, centre_px)
    scores = _coarse_scores(problem, rotations, translations, focal, centre_px)
    # fewer instances: cheaper refinements and more ambiguous silhouettes, so refine more starts
    refine = int(np.clip(round(options.refine * 5 / len(steering)), options.refine, 3 * options.refine))
    order = np.argsort(scores)[:refine]
    starts = [PinholeCamera(rotations[i], translations[i], focal, small_width, small_height, principal)
              for i in order]
    if options.initial is not None:
        starts.append(options.initial.resized(small_width, small_height))
    raycaster = InstanceRaycaster([meshes[k] for k in steering])
    fix_focal = options.fix_focal is not None
    refined = sorted((_refine(problem, start, fix_focal) for start in starts), key=lambda pair: pair[1])
    best, best_iou = None, -1.0
    for start, _ in refined[:options.polish + (1 if len(steering) <= 3 else 0)]:
        polished, iou = _polish(problem, start, raycaster, fix_focal)
        if iou > best_iou:
            best, best_iou = polished, iou
    camera = best.resized(width, height)
    full = raycaster if steering == usable else InstanceRaycaster([meshes[k] for k in usable])
    full_ious = silhouette_ious(full.render_ids(camera),
                                [labels == ids[k] for k in usable])
    ious: list[float | None] = [None] * len(ids)
    for position, k in enumerate(usable):
        ious[k] = float(full_ious[position])
    return CameraFit(camera, ious, time.perf_counter() - start_time, starts=len(rotations),
                     details={"coarse_best": float(scores[order[0]]), "working_iou": best_iou,
                              "working_size": [small_width, small_height]})
