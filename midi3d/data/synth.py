"""Synthetic indoor scenes in the 3D-Front (MIDI) dataset layout, rendered on the CPU.

Each scene holds 2–10 pieces of procedural furniture on a floor (some touching, small ones
sometimes standing on a table or cabinet, none interpenetrating: their axis-aligned boxes may
touch but never overlap), normalised into the scene frame ``[-0.95, 0.95]^3`` (y up). By default (``frame="view"``) the
scene is also turned about the vertical axis so that view 0's camera looks along -z: the frame
is then fixed by the image, as a single-view method needs for box IoU without alignment. Views are
ray cast with Open3D (Lambertian shading with a key light, white background).

Output, under ``root``::

    3D-FRONT-RENDER/<house>/<room>/render_0000.webp, semantic_0000.png   (object k has id k+1)
    3D-FRONT-RENDER/<house>/<room>/camera_0000.json      (eye, centre, up, horizontal fov)
    3D-FRONT-SCENE/<house>/<room>/<object>.glb                           (scene coordinates)
    3D-FRONT-SURFACE/<house>/<room>/<object>.npy     (dict: surface_points, surface_normals)
    midi_room_ids.json, midi_furniture_ids.json, valid_room_ids.json, valid_furniture_ids.json
    pairs/<house>__<room>_rgb.png, _seg.png                       (for ``midi3d generate DIR``)

Deterministic for a seed: every scene draws from ``default_rng([seed, index])``.
"""

from __future__ import annotations

import colorsys
import io
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from ..io.files import remove_stale_temporaries, replace_folder, write_atomic
from .furniture import FLOOR_FURNITURE, SMALL_FURNITURE, SUPPORTS
from ..io.errors import InputError
from .layout import RENDER, SCENE, SURFACE
from .layout import SYNTH_CONFIG as CONFIG_FILE

OBJECTS_FILE = "objects.json"  # in each room's render folder: its objects in instance order

SCENE_EXTENT = 0.95


@dataclass
class SynthConfig:
    """Generator settings (also written to ``synth_config.json``)."""

    seed: int = 0
    min_objects: int = 2
    max_objects: int = 10
    image_size: int = 512
    views: int = 1
    elevation_deg: tuple[float, float] = (15.0, 40.0)
    fov_deg: tuple[float, float] = (40.0, 60.0)
    surface_points: int = 20480
    # "view": the scene is turned about the vertical axis so that view 0's camera looks along -z
    # (a gravity- and view-aligned frame that an image determines); "world": the layout frame.
    frame: str = "view"
    stack_probability: float = 0.35
    touch_probability: float = 0.3


@dataclass
class SceneObject:
    name: str
    kind: str
    mesh: trimesh.Trimesh
    colour: tuple[float, float, float]


# -- layout ------------------------------------------------------------------------------------


def _overlaps(bounds: np.ndarray, others: list[np.ndarray], eps: float = 1e-6) -> bool:
    """Whether an axis-aligned box ``[2, 3]`` overlaps (beyond touching) any of ``others``."""
    return any(bool(np.all(np.minimum(bounds[1], o[1]) - np.maximum(bounds[0], o[0]) > eps)) for o in others)


def _random_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    return colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.25, 0.8), rng.uniform(0.45, 0.95))


def layout_scene(rng: np.random.Generator, config: SynthConfig) -> list[SceneObject]:
    """Place ``min_objects``–``max_objects`` objects without overlap; returns them in the normalised
    scene frame. Rooms of more than 10 objects grow (side ∝ sqrt(count / 10)) so that they fit."""
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    room = rng.uniform(3.0, 5.0) * max(1.0, (count / 10) ** 0.5)
    kinds = list(FLOOR_FURNITURE)
    placed: list[SceneObject] = []
    boxes: list[np.ndarray] = []
    attempts = 0
    while len(placed) < count and attempts < max(400, 40 * count):
        attempts += 1
        supports = [o for o in placed if o.kind in SUPPORTS]
        stack = supports and rng.uniform() < config.stack_probability
        kind = str(rng.choice(list(SMALL_FURNITURE) if stack else kinds))
        mesh = FLOOR_FURNITURE[kind](rng)
        mesh.apply_transform(trimesh.transformations.rotation_matrix(rng.integers(4) * np.pi / 2, [0, 1, 0]))
        lo, hi = mesh.bounds
        size = hi - lo
        if stack:
            support = supports[int(rng.integers(len(supports)))].mesh.bounds
            free = (support[1] - support[0])[[0, 2]] - size[[0, 2]]
            if np.any(free < 0):
                continue
            x = support[0][0] + rng.uniform(0, free[0]) - lo[0]
            z = support[0][2] + rng.uniform(0, free[1]) - lo[2]
            offset = np.array([x, support[1][1] - lo[1], z])
        elif placed and rng.uniform() < config.touch_probability:
            other = boxes[int(rng.integers(len(boxes)))]
            axis, side = int(rng.choice([0, 2])), int(rng.choice([-1, 1]))
            offset = np.zeros(3)
            offset[1] = -lo[1]
            offset[axis] = other[1][axis] - lo[axis] if side > 0 else other[0][axis] - hi[axis]
            across = 2 - axis
            offset[across] = rng.uniform(other[0][across] - size[across] / 2, other[1][across] - size[across] / 2) - lo[
                across]
        else:
            offset = np.array([rng.uniform(-room / 2, room / 2 - size[0]) - lo[0], -lo[1],
                               rng.uniform(-room / 2, room / 2 - size[2]) - lo[2]])
        bounds = np.stack([lo + offset, hi + offset])
        if _overlaps(bounds, boxes):
            continue
        mesh.apply_translation(offset)
        placed.append(SceneObject(f"{kind}-{len(placed):02d}", kind, mesh, _random_colour(rng)))
        boxes.append(bounds)
    _normalise(placed)
    return placed


def _normalise(objects: list[SceneObject]) -> tuple[np.ndarray, float]:
    """Centre the scene and scale its largest extent to ``2 * SCENE_EXTENT``; returns (centre, scale)."""
    bounds = np.stack([np.min([o.mesh.bounds[0] for o in objects], axis=0),
                       np.max([o.mesh.bounds[1] for o in objects], axis=0)])
    centre, scale = bounds.mean(axis=0), 2 * SCENE_EXTENT / (bounds[1] - bounds[0]).max()
    for obj in objects:
        obj.mesh.apply_translation(-centre)
        obj.mesh.apply_scale(scale)
    return centre, scale


def align_to_view(objects: list[SceneObject], camera: Camera) -> Camera:
    """Turn the scene about the vertical axis so that ``camera`` looks along -z, re-normalise it,
    and return the camera in the new frame (the rendered image does not change)."""
    offset = camera.eye - camera.centre
    angle = np.arctan2(offset[2], offset[0]) - np.pi / 2
    rotation = trimesh.transformations.rotation_matrix(angle, [0, 1, 0])
    for obj in objects:
        obj.mesh.apply_transform(rotation)
    eye, centre = (trimesh.transform_points(np.stack([camera.eye, camera.centre]), rotation))
    shift, scale = _normalise(objects)
    return Camera((eye - shift) * scale, (centre - shift) * scale, camera.fov_deg)


# -- rendering ---------------------------------------------------------------------------------


@dataclass
class Camera:
    eye: np.ndarray
    centre: np.ndarray
    fov_deg: float


def sample_camera(rng: np.random.Generator, objects: list[SceneObject], config: SynthConfig) -> Camera:
    """A camera on a circle around the scene, looking at its centre, that sees every object."""
    vertices = np.concatenate([o.mesh.vertices for o in objects])
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    radius = np.linalg.norm(vertices - centre, axis=1).max()
    fov = rng.uniform(*config.fov_deg)
    elevation, azimuth = np.radians(rng.uniform(*config.elevation_deg)), rng.uniform(0, 2 * np.pi)
    distance = radius / np.sin(np.radians(fov) / 2) * 1.02
    direction = np.array([np.cos(elevation) * np.cos(azimuth), np.sin(elevation), np.cos(elevation) * np.sin(azimuth)])
    return Camera(centre + distance * direction, centre, fov)


def render(objects: list[SceneObject], camera: Camera, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast RGB ``[H, W, 3]`` uint8 (white background) and ids ``[H, W]`` uint8 (object k → k+1)."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    for obj in objects:
        scene.add_triangles(o3d.core.Tensor(np.asarray(obj.mesh.vertices, np.float32)),
                            o3d.core.Tensor(np.asarray(obj.mesh.faces, np.uint32)))
    rays = o3d.t.geometry.RaycastingScene.create_rays_pinhole(
        fov_deg=float(camera.fov_deg), center=o3d.core.Tensor(camera.centre.astype(np.float32)),
        eye=o3d.core.Tensor(camera.eye.astype(np.float32)), up=o3d.core.Tensor(np.array([0, 1, 0], np.float32)),
        width_px=size, height_px=size)
    # Open3D's pinhole grid starts at the bottom-right pixel; flip it so that row 0 is the top
    # and column 0 the left of the image (checked against a pinhole projection in the tests).
    rays = o3d.core.Tensor(np.ascontiguousarray(rays.numpy()[::-1, ::-1]))
    hits = scene.cast_rays(rays)
    ids = hits["geometry_ids"].numpy().astype(np.int64)
    hit = ids != o3d.t.geometry.RaycastingScene.INVALID_ID
    normals = hits["primitive_normals"].numpy()
    directions = rays.numpy()[..., 3:]
    normals = np.where((np.sum(normals * directions, axis=-1) > 0)[..., None], -normals, normals)
    light = np.array([0.4, 0.8, 0.3]) + 0.3 * (camera.eye - camera.centre) / np.linalg.norm(camera.eye - camera.centre)
    light /= np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.clip(normals @ light, 0, 1)
    albedo = np.array([o.colour for o in objects] + [(1.0, 1.0, 1.0)])[np.where(hit, ids, len(objects))]
    rgb = np.where(hit[..., None], albedo * shade[..., None], 1.0)
    labels = np.where(hit, ids + 1, 0).astype(np.uint8)
    return np.round(rgb * 255).astype(np.uint8), labels


# -- writing -----------------------------------------------------------------------------------


def _surface(mesh: trimesh.Trimesh, count: int, seed: int) -> dict[str, np.ndarray]:
    points, faces = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return {"surface_points": np.array(points, dtype=np.float32),
            "surface_normals": np.array(mesh.face_normals[faces], dtype=np.float32)}


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def build_room(root: Path, house: str, index: int, config: SynthConfig) -> dict:
    """Generate and write room ``index``; each per-room folder appears atomically (renamed last)."""
    room = f"room-{index:05d}"
    rng = np.random.default_rng([config.seed, index])
    objects = layout_scene(rng, config)
    staging = root / ".staging" / f"{house}__{room}"
    shutil.rmtree(staging, ignore_errors=True)
    for folder in (RENDER, SCENE, SURFACE):
        (staging / folder).mkdir(parents=True)
    if config.frame not in ("view", "world"):
        raise ValueError(f"frame must be 'view' or 'world', got {config.frame!r}")
    cameras = [sample_camera(rng, objects, config) for _ in range(config.views)]
    if config.frame == "view":  # view 0 defines the frame; the others keep their azimuth in it
        cameras[0] = align_to_view(objects, cameras[0])
        cameras[1:] = [sample_camera(rng, objects, config) for _ in cameras[1:]]
    for k, obj in enumerate(objects):
        coloured = obj.mesh.copy()
        coloured.visual = trimesh.visual.ColorVisuals(
            coloured, vertex_colors=np.tile(np.round(np.array([*obj.colour, 1.0]) * 255).astype(np.uint8),
                                            (len(coloured.vertices), 1)))
        (staging / SCENE / f"{obj.name}.glb").write_bytes(coloured.export(file_type="glb"))
        surface = _surface(obj.mesh, config.surface_points, seed=int(rng.integers(2**31)) + k)
        with open(staging / SURFACE / f"{obj.name}.npy", "wb") as handle:
            np.save(handle, np.array(surface, dtype=object), allow_pickle=True)
    pairs = []
    for view, camera in enumerate(cameras):
        rgb, labels = render(objects, camera, config.image_size)
        camera_json = {"eye": camera.eye.tolist(), "centre": camera.centre.tolist(), "up": [0.0, 1.0, 0.0],
                       "fov_deg": float(camera.fov_deg), "image_size": config.image_size}
        (staging / RENDER / f"camera_{view:04d}.json").write_text(json.dumps(camera_json, sort_keys=True) + "\n")
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="WEBP", lossless=True)
        (staging / RENDER / f"render_{view:04d}.webp").write_bytes(buffer.getvalue())
        (staging / RENDER / f"semantic_{view:04d}.png").write_bytes(_png_bytes(labels))
        if view == 0:
            pairs = [(f"{house}__{room}_rgb.png", _png_bytes(rgb)), (f"{house}__{room}_seg.png", _png_bytes(labels))]
    for name, data in pairs:
        (staging / name).write_bytes(data)
    # the object order (instance k+1 = object k) travels with the room: a resumed run reads it back
    (staging / RENDER / OBJECTS_FILE).write_text(json.dumps([o.name for o in objects]) + "\n")
    for folder in (SURFACE, SCENE):
        replace_folder(staging / folder, root / folder / house / room)
    (root / "pairs").mkdir(exist_ok=True)
    for name, _ in pairs:
        os.replace(staging / name, root / "pairs" / name)
    replace_folder(staging / RENDER, root / RENDER / house / room)  # last: its presence marks a finished room
    shutil.rmtree(staging, ignore_errors=True)
    return {"room": f"{house}/{room}", "objects": [o.name for o in objects]}


def _write_json(path: Path, data) -> None:
    write_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def _config_record(config: SynthConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))  # tuples as lists, as read back from the file


def check_same_settings(root: Path, config: SynthConfig) -> None:
    """Refuse to add rooms to a dataset made with other settings (the room count may grow)."""
    path = root / CONFIG_FILE
    if not path.is_file():
        if any((root / RENDER).glob("*/*")):
            raise InputError(f"{root}: holds rooms but no {CONFIG_FILE}; write to a new folder or pass --overwrite")
        return
    try:
        recorded = json.loads(path.read_text())
        recorded.pop("scenes", None)
    except (json.JSONDecodeError, AttributeError, OSError) as err:
        raise InputError(f"{path}: unreadable ({err}); pass --overwrite to start the dataset again") from None
    wanted = _config_record(config)
    changed = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
    if changed:
        detail = ", ".join(f"{k} {recorded.get(k)!r} → {wanted.get(k)!r}" for k in changed)
        raise InputError(f"{root}: made with other settings ({detail}); use the same settings, another folder, "
                         "or --overwrite to start it again")


def _finished_room(root: Path, house: str, index: int) -> dict | None:
    """The record of a finished room (its object order read back), or ``None``."""
    room = f"room-{index:05d}"
    render_dir, objects_dir = root / RENDER / house / room, root / SCENE / house / room
    if not (render_dir.is_dir() and objects_dir.is_dir() and (render_dir / OBJECTS_FILE).is_file()):
        return None  # unfinished, or written before the order was recorded: made again
    names = json.loads((render_dir / OBJECTS_FILE).read_text())
    return {"room": f"{house}/{room}", "objects": names}


def generate_dataset(root: str | Path, scenes: int, config: SynthConfig, jobs: int = 1, progress=None,
                     overwrite: bool = False) -> list[dict]:
    """Generate ``scenes`` rooms under ``root`` with ``jobs`` processes; reruns skip finished rooms
    (their object order is read back from the room, never re-derived), and refuse a dataset made
    with other settings unless ``overwrite`` (which starts it again). One writer at a time.

    ``progress(done, total)`` is called as rooms finish.
    """
    from ..io.locks import folder_lock

    root = Path(root)
    with folder_lock(root, "midi3d synth"):
        if overwrite:
            for name in (RENDER, SCENE, SURFACE, "pairs", ".staging", CONFIG_FILE):
                target = root / name
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        check_same_settings(root, config)
        return _generate_locked(root, scenes, config, jobs, progress)


def _generate_locked(root: Path, scenes: int, config: SynthConfig, jobs: int, progress) -> list[dict]:
    remove_stale_temporaries(root)  # a killed run's half-written JSON; its staging folders go below
    house = f"synth-{config.seed}"
    _write_json(root / CONFIG_FILE, asdict(config) | {"scenes": scenes})
    results: dict[int, dict] = {}
    todo = []
    for index in range(scenes):
        finished = _finished_room(root, house, index)
        if finished is not None:
            results[index] = finished
        else:
            todo.append(index)
    done = len(results)
    if progress:
        progress(done, scenes)
    if jobs <= 1:
        for index in todo:
            results[index] = build_room(root, house, index, config)
            done += 1
            if progress:
                progress(done, scenes)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(build_room, root, house, index, config): index for index in todo}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                done += 1
                if progress:
                    progress(done, scenes)
    ordered = [results[i] for i in range(scenes)]
    rooms = [r["room"] for r in ordered]
    furniture = [r["objects"] for r in ordered]
    for prefix in ("midi", "valid"):
        _write_json(root / f"{prefix}_room_ids.json", rooms)
        _write_json(root / f"{prefix}_furniture_ids.json", furniture)
    shutil.rmtree(root / ".staging", ignore_errors=True)
    return ordered
