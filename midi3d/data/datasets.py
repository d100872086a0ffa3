"""Evaluation dataset readers: 3D-Front in the MIDI layout, and our documented BlendSwap layout.

Both yield :class:`EvalScene` records: an RGB image and label map at the evaluation size,
the kept instance ids and, per kept instance, ground-truth surface points in scene
coordinates. Sub-sampling is seeded (the official code is not), so runs are repeatable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..io.images import load_rgb
from ..io.labelmap import instance_ids, read_label_map
from ..io.paths import relative_inside, safe_name
from .layout import FURNITURE_IDS, RENDER, ROOM_IDS, SCENE, SURFACE, read_surface

EVAL_SIZE = 512
MIN_AREA_FRACTION = 0.001
MAX_OBJECTS = 7
GT_POINTS = 20480
TEST_SIZE = 1000


@dataclass
class EvalScene:
    """One evaluation sample; ``gt_points[i]`` belongs to instance ``ids[i]``."""

    key: str
    rgb: np.ndarray
    labels: np.ndarray
    ids: list[int]
    gt_points: list[np.ndarray]
    gt_meshes: list[Path] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    camera_file: Path | None = None


@dataclass
class ObjectFilter:
    """The official object rules: drop masks covering ``<= min_area_fraction`` of the image, then
    keep a random subset of ``max_objects`` (seeded here; 0 = no cap)."""

    min_area_fraction: float = MIN_AREA_FRACTION
    max_objects: int = MAX_OBJECTS
    seed: int = 0

    def apply(self, labels: np.ndarray, ids: list[int], key: str) -> tuple[list[int], list[int]]:
        area = labels.size
        kept = [i for i in ids if (labels == i).sum() > self.min_area_fraction * area]
        if self.max_objects and len(kept) > self.max_objects:
            rng = np.random.default_rng([self.seed, _stable_hash(key)])
            kept = sorted(rng.choice(kept, self.max_objects, replace=False).tolist())
        return kept, [i for i in ids if i not in kept]


def _stable_hash(text: str) -> int:
    value = 0
    for char in text.encode():
        value = (value * 131 + char) % (2**31 - 1)
    return value


def _subsample(points: np.ndarray, count: int, seed: list[int]) -> np.ndarray:
    if len(points) <= count:
        return points
    return points[np.random.default_rng(seed).choice(len(points), count, replace=False)]


def _resize_pair(rgb: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    if rgb.shape[:2] != (size, size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC))
    if labels.shape != (size, size):
        labels = np.asarray(Image.fromarray(labels.astype(np.int32)).resize((size, size), Image.NEAREST)).astype(
            np.int64)
    return rgb, labels


class ThreeDFrontDataset:
    """3D-Front in the MIDI layout (see :mod:`midi3d.data.synth` for the folders and files).

    The test split is the last ``test_size`` rooms of ``midi_room_ids.json``; object k of a room
    (0-based, in ``midi_furniture_ids.json``) has id k+1 in the semantic map.
    """

    def __init__(self, root: str | Path, views: list[str] | None = None, test_size: int = TEST_SIZE,
                 object_filter: ObjectFilter | None = None, points: int = GT_POINTS, size: int = EVAL_SIZE):
        self.root = Path(root)
        rooms_file, furniture_file = self.root / ROOM_IDS, self.root / FURNITURE_IDS
        for path in (rooms_file, furniture_file):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: not found (is {self.root} a 3D-Front/MIDI dataset root?)")
        rooms, furniture = json.loads(rooms_file.read_text()), json.loads(furniture_file.read_text())
        if len(rooms) != len(furniture):
            raise ValueError(f"{furniture_file}: {len(furniture)} entries but {len(rooms)} rooms")
        self.rooms = rooms[-test_size:]
        self.furniture = furniture[-test_size:]
        self.views = views or ["0000"]
        self.filter = object_filter or ObjectFilter()
        self.points = points
        self.size = size
        self._keys = [f"{room.replace('/', '__')}__{view}" for room in self.rooms for view in self.views]

    def keys(self) -> list[str]:
        """Sample keys ``<house>__<room>__<view>``, in order."""
        return list(self._keys)

    def __len__(self) -> int:
        return len(self.rooms) * len(self.views)

    def load(self, index: int) -> EvalScene:
        """Read sample ``index``; raises with the failing file named on missing or corrupt data."""
        room_index, view = divmod(index, len(self.views))
        room, names, view_name = self.rooms[room_index], self.furniture[room_index], self.views[view]
        key = self._keys[index]
        source = self.root / ROOM_IDS
        render_dir = relative_inside(self.root / RENDER, room, source)
        rgb = load_rgb(render_dir / f"render_{view_name}.webp")
        labels = read_label_map(render_dir / f"semantic_{view_name}.png", max_instances=10_000)
        rgb, labels = _resize_pair(rgb, labels, self.size)
        present = [i for i in instance_ids(labels) if 1 <= i <= len(names)]
        kept, dropped = self.filter.apply(labels, present, key)
        labels = np.where(np.isin(labels, kept), labels, 0)
        gt_points, meshes = [], []
        for instance in kept:
            name = safe_name(names[instance - 1], self.root / FURNITURE_IDS)
            surface = read_surface(relative_inside(self.root / SURFACE, room, source) / f"{name}.npy")["surface_points"]
            gt_points.append(_subsample(surface, self.points, [self.filter.seed, _stable_hash(key), instance]))
            meshes.append(relative_inside(self.root / SCENE, room, source) / f"{name}.glb")
        return EvalScene(key, rgb, labels, kept, gt_points, meshes, dropped, render_dir / f"camera_{view_name}.json")

    def __iter__(self) -> Iterator[EvalScene]:
        for index in range(len(self)):
            yield self.load(index)


class BlendSwapDataset:
    """Our BlendSwap layout (documented in ``eval/README.md``)::

        <root>/<scene>/image.png            RGB (or RGBA, composited on white)
        <root>/<scene>/labels.png           instance label map (any encoding midi3d reads)
        <root>/<scene>/meshes/<id>.glb      one mesh per labelled instance, scene coordinates (.obj/.ply too)
        <root>/<scene>/camera.json          optional: {"eye", "centre", "fov_deg"} of the image, for figures

    Ground-truth points are sampled on the meshes (area-weighted, seeded).
    """

    MESH_SUFFIXES = (".glb", ".obj", ".ply")

    def __init__(self, root: str | Path, object_filter: ObjectFilter | None = None, points: int = GT_POINTS,
                 size: int = EVAL_SIZE):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: dataset folder not found")
        self.scenes = sorted(p.name for p in self.root.iterdir() if (p / "image.png").is_file())
        self.filter = object_filter or ObjectFilter(max_objects=0)
        self.points = points
        self.size = size

    def keys(self) -> list[str]:
        return list(self.scenes)

    def __len__(self) -> int:
        return len(self.scenes)

    def load(self, index: int) -> EvalScene:
        import trimesh

        key = self.scenes[index]
        folder = self.root / key
        rgb, labels = _resize_pair(load_rgb(folder / "image.png"), read_label_map(folder / "labels.png"), self.size)
        kept, dropped = self.filter.apply(labels, instance_ids(labels), key)
        labels = np.where(np.isin(labels, kept), labels, 0)
        gt_points, meshes = [], []
        for instance in kept:
            path = next((folder / "meshes" / f"{instance}{s}" for s in self.MESH_SUFFIXES
                         if (folder / "meshes" / f"{instance}{s}").is_file()), None)
            if path is None:
                raise FileNotFoundError(f"{folder / 'meshes'}: no mesh for instance {instance}")
            mesh = trimesh.load(path, force="mesh")
            if len(mesh.faces) == 0:
                raise ValueError(f"{path}: mesh has no faces")
            points, _ = trimesh.sample.sample_surface(mesh, self.points, seed=_stable_hash(f"{key}/{instance}"))
            gt_points.append(np.array(points, dtype=np.float32))
            meshes.append(path)
        return EvalScene(key, rgb, labels, kept, gt_points, meshes, dropped, folder / "camera.json")

    def __iter__(self) -> Iterator[EvalScene]:
        for index in range(len(self)):
            yield self.load(index)


class PairsDataset:
    """Photos without 3D ground truth: ``<root>/NAME_rgb.png`` + ``NAME_seg.png`` (the layout of
    ``midi3d generate DIR``). Scenes have no ground-truth points: only the reprojection score
    applies (``midi3d eval --dataset pairs``)."""

    def __init__(self, root: str | Path, object_filter: ObjectFilter | None = None, size: int = EVAL_SIZE, **_):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: dataset folder not found")
        self.names = sorted(p.name[: -len("_rgb.png")] for p in self.root.glob("*_rgb.png")
                            if (self.root / p.name.replace("_rgb.png", "_seg.png")).is_file())
        if not self.names:
            raise FileNotFoundError(f"{self.root}: no NAME_rgb.png + NAME_seg.png pairs in this folder")
        self.filter = object_filter or ObjectFilter(max_objects=0)
        self.size = size

    def keys(self) -> list[str]:
        return list(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> EvalScene:
        key = self.names[index]
        rgb, labels = _resize_pair(load_rgb(self.root / f"{key}_rgb.png"),
                                   read_label_map(self.root / f"{key}_seg.png"), self.size)
        kept, dropped = self.filter.apply(labels, instance_ids(labels), key)
        labels = np.where(np.isin(labels, kept), labels, 0)
        return EvalScene(key, rgb, labels, kept, [], [], dropped)

    def __iter__(self) -> Iterator[EvalScene]:
        for index in range(len(self)):
            yield self.load(index)


DATASETS = {"3dfront": ThreeDFrontDataset, "blendswap": BlendSwapDataset, "pairs": PairsDataset}
