"""Training caches built once from a dataset root in the 3D-Front/MIDI layout.

* objects: per object, encoder input (surface points + normals) and SDF query points with
  their truncation-free signed distance (see :mod:`.sdf`);
* scenes: per room (view 0), each instance's pixels resized and cropped by the pipeline's own
  processors (``feature_extractor_1`` for CLIP, ``feature_extractor_2`` for DINOv2) as uint8,
  its mask at the DINOv2 input size, the scene's pixels, and which object each instance is. The
  trainer normalises them with the same processors, through the functions inference uses
  (:mod:`midi3d.models.image_encoders`), so training sees exactly the tensors sampling does.

A room that cannot be read (unreadable image or label map, a mesh without faces, a bad surface
file) is skipped with its reason logged and written to ``skipped.jsonl``; the rest is cached.
Caches are written atomically and reused when their settings match.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.layout import FURNITURE_IDS, RENDER, ROOM_IDS, SCENE, SURFACE, dataset_fingerprint, read_surface
from ..io.errors import InputError
from ..io.files import write_atomic
from ..io.images import load_rgb
from ..io.labelmap import instance_ids, read_label_map
from ..io.paths import relative_inside, safe_name
from ..models.checkpoint import save_tensors_atomic
from .sdf import query_points, signed_distance

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheSettings:
    surface_points: int
    near_points: int
    uniform_points: int
    min_area_fraction: float
    max_instances: int
    seed: int = 0
    around_points: int = 0
    around_margin: float = 0.3

    def digest(self, processors: tuple[dict, dict], root: Path, dataset: str = "") -> str:
        """Name of the cache of ``root`` (whose index files hash to ``dataset``) built with these
        settings and processor configs: another dataset, or the same folder made again, gets
        another cache."""
        fields = {**self.__dict__, "processors": list(processors), "root": str(Path(root).resolve()),
                  "dataset": dataset}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class TrainingCache:
    """Everything the trainers read, as tensors (one row per object / instance / scene)."""

    surface: torch.Tensor        # [O, M, 6] float32
    queries: torch.Tensor        # [O, Q, 3] float32
    sdf: torch.Tensor            # [O, Q] float32
    clip_pixels: torch.Tensor      # [I, 3, h1, w1] uint8, feature_extractor_1's resize + crop
    instance_pixels: torch.Tensor  # [I, 3, h2, w2] uint8, feature_extractor_2's resize + crop
    instance_masks: torch.Tensor   # [I, h2, w2] uint8 (0/1), mask_pixels at the DINOv2 size
    instance_object: torch.Tensor  # [I] int64, row in the object tensors
    scene_pixels: torch.Tensor     # [N, 3, h2, w2] uint8, feature_extractor_2's resize + crop
    scene_offsets: torch.Tensor    # [N + 1] int64, instances of scene n: offsets[n]:offsets[n+1]
    rooms: list[str]

    @property
    def num_scenes(self) -> int:
        return len(self.rooms)

    def scene_instances(self, scene: int) -> range:
        return range(int(self.scene_offsets[scene]), int(self.scene_offsets[scene + 1]))


def processor_configs(pipe) -> tuple[dict, dict]:
    """The pipeline's two preprocessor configs (picklable, for the cache workers and its name)."""
    return pipe.feature_extractor_1.to_dict(), pipe.feature_extractor_2.to_dict()


@functools.lru_cache(maxsize=8)  # one pair per worker process, not one per room
def _processors(configs_json: str):
    from ..models.image_encoders import build_image_processor

    clip, dino = json.loads(configs_json)
    return build_image_processor("clip", clip), build_image_processor("bit", dino)


def instance_arrays(processors, rgb: np.ndarray, labels: np.ndarray, ids: list[int]) -> dict[str, np.ndarray]:
    """What the cache stores of one scene's instances: the inference preprocessing
    (:meth:`MIDIPipeline.encode_condition`) up to the uint8 resize and crop."""
    from ..models.image_encoders import resized_instances, resized_scenes
    from ..pipelines.preprocess import split_instances

    images, masks = split_instances(rgb, labels, ids)
    clip, dino, resized_masks = resized_instances(*processors, images, masks)
    return {"clip_pixels": clip.numpy(), "instance_pixels": dino.numpy(),
            "instance_masks": resized_masks[:, 0].to(torch.uint8).numpy(),
            "scene_pixels": resized_scenes(processors[1], [rgb]).numpy()[0]}


def _room(root: Path, room: str, names: list[str], settings: CacheSettings, processors_json: str) -> dict:
    """Read one room; returns arrays, or ``{"skip": reason}``."""
    import trimesh

    try:
        render_dir = relative_inside(root / RENDER, room, root / ROOM_IDS)
        rgb = load_rgb(render_dir / "render_0000.webp")
        labels = read_label_map(render_dir / "semantic_0000.png", max_instances=10_000)
    except Exception as err:  # an unreadable sample is skipped, not fatal
        return {"skip": f"{err}"}
    if labels.shape != rgb.shape[:2]:
        return {"skip": f"{render_dir / 'semantic_0000.png'}: label map {labels.shape} does not match the image"}
    area = labels.size
    ids = [i for i in instance_ids(labels) if 1 <= i <= len(names)
           and (labels == i).sum() > settings.min_area_fraction * area][: settings.max_instances]
    if not ids:
        return {"skip": f"{render_dir}: no visible object"}
    rng = np.random.default_rng([settings.seed, int(hashlib.sha256(room.encode()).hexdigest()[:8], 16)])
    surfaces, queries, sdfs = [], [], []
    for instance in ids:
        try:
            name = safe_name(names[instance - 1], root / FURNITURE_IDS)
            mesh_path = relative_inside(root / SCENE, room, root / ROOM_IDS) / f"{name}.glb"
            surface_path = relative_inside(root / SURFACE, room, root / ROOM_IDS) / f"{name}.npy"
            mesh = trimesh.load(mesh_path, force="mesh")
            if len(mesh.faces) == 0:
                return {"skip": f"{mesh_path}: mesh has no faces"}
            data = read_surface(surface_path)
            points = np.concatenate([data["surface_points"], data["surface_normals"]], axis=1).astype(np.float32)
            if len(points) == 0 or not np.isfinite(points).all():
                return {"skip": f"{surface_path}: empty or non-finite surface samples"}
        except InputError as err:  # names the file already
            return {"skip": str(err)}
        except Exception as err:
            return {"skip": f"{err}" if str(mesh_path) in str(err) or str(surface_path) in str(err)
                    else f"{mesh_path}: {err}"}
        picks = rng.choice(len(points), settings.surface_points, replace=len(points) < settings.surface_points)
        surface = points[picks]
        query = query_points(points[:, :3], rng, settings.near_points, settings.uniform_points,
                             around=settings.around_points, margin=settings.around_margin)
        surfaces.append(surface)
        queries.append(query)
        sdfs.append(signed_distance(mesh, query))
    return {"surface": np.stack(surfaces), "queries": np.stack(queries), "sdf": np.stack(sdfs),
            **instance_arrays(_processors(processors_json), rgb, labels, ids)}


def _room_job(args):
    return _room(*args)


def build_cache(root: str | Path, cache_dir: str | Path, settings: CacheSettings, processors: tuple[dict, dict],
                jobs: int = 0, progress=None) -> TrainingCache:
    """Build (or reuse) the cache of every room under ``root`` in ``cache_dir``; ``processors``
    are the pipeline's preprocessor configs (:func:`processor_configs`)."""
    from safetensors.torch import load_file

    root, cache_dir = Path(root), Path(cache_dir)
    path = cache_dir / f"cache-{settings.digest(processors, root, dataset_fingerprint(root))}.safetensors"
    index_path = path.with_suffix(".json")
    if path.is_file() and index_path.is_file():
        tensors = load_file(path)
        return TrainingCache(**tensors, rooms=json.loads(index_path.read_text())["rooms"])
    rooms_file, furniture_file = root / ROOM_IDS, root / FURNITURE_IDS
    for required in (rooms_file, furniture_file):
        if not required.is_file():
            raise FileNotFoundError(f"{required}: not found (is {root} a dataset root in the 3D-Front/MIDI layout?)")
    rooms, furniture = json.loads(rooms_file.read_text()), json.loads(furniture_file.read_text())
    processors_json = json.dumps(list(processors), sort_keys=True)
    work = [(root, room, names, settings, processors_json) for room, names in zip(rooms, furniture)]
    jobs = jobs or os.cpu_count() or 1
    results = []
    if jobs == 1:
        for index, item in enumerate(work):
            results.append(_room_job(item))
            if progress:
                progress(index + 1, len(work))
    else:
        # spawn, not fork: a forked child of a process that already ran torch/Open3D threads can hang
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for index, result in enumerate(pool.map(_room_job, work, chunksize=8)):
                results.append(result)
                if progress:
                    progress(index + 1, len(work))
    kept, skipped = [], []
    for (_, room, *_), result in zip(work, results):
        if "skip" in result:
            logger.warning("skipping %s: %s", room, result["skip"])
            skipped.append({"room": room, "reason": result["skip"]})
        else:
            kept.append((room, result))
    if not kept:
        raise ValueError(f"{root}: no usable room ({len(skipped)} skipped; see the log)")
    counts = [len(r["surface"]) for _, r in kept]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    tensors = {
        "surface": torch.from_numpy(np.concatenate([r["surface"] for _, r in kept])),
        "queries": torch.from_numpy(np.concatenate([r["queries"] for _, r in kept])),
        "sdf": torch.from_numpy(np.concatenate([r["sdf"] for _, r in kept])),
        "clip_pixels": torch.from_numpy(np.concatenate([r["clip_pixels"] for _, r in kept])),
        "instance_pixels": torch.from_numpy(np.concatenate([r["instance_pixels"] for _, r in kept])),
        "instance_masks": torch.from_numpy(np.concatenate([r["instance_masks"] for _, r in kept])),
        "instance_object": torch.arange(int(offsets[-1]), dtype=torch.int64),
        "scene_pixels": torch.from_numpy(np.stack([r["scene_pixels"] for _, r in kept])),
        "scene_offsets": torch.from_numpy(offsets),
    }
    save_tensors_atomic(path, tensors)  # then the index: the pair is used only when both exist
    write_atomic(index_path, (json.dumps({"rooms": [room for room, _ in kept], "settings": settings.__dict__,
                                          "root": str(root)}, indent=1) + "\n").encode())
    write_atomic(cache_dir / "skipped.jsonl", "".join(json.dumps(s) + "\n" for s in skipped).encode())
    return TrainingCache(**tensors, rooms=[room for room, _ in kept])
