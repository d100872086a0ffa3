"""``midi3d eval`` as library functions: open a benchmark, choose a predictor (a model, or GLB
files of another method), score every scene resumably, summarise.

The model predictor is one :class:`~midi3d.pipelines.MIDIPipeline` call per scene, with the
settings the user gave and the pipeline folder's defaults for the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..data.datasets import DATASETS, ObjectFilter
from ..io.errors import InputError
from ..io.files import remove_stale_temporaries, write_atomic
from .runner import EvalOptions, Predictor, ResultLog, export_ground_truth, load_prediction, run, summarise
from .runner import write_summary

OFFICIAL_MAX_OBJECTS = 7  # the released 3D-Front protocol
RUN_FILE = "eval_run.json"  # what produced the results in a folder


@dataclass
class BenchmarkSpec:
    """Which scenes: a dataset reader and its filters."""

    dataset: str = "3dfront"
    root: Path = Path(".")
    views: list[str] = field(default_factory=lambda: ["0000"])
    test_size: int = 1000
    max_objects: int | None = None  # None: 7 for 3dfront (official), none for blendswap
    min_area: float = 0.001
    points: int = 20480
    limit: int = 0                  # only the first N scenes (0 = all)


def open_benchmark(spec: BenchmarkSpec):
    """The dataset reader and the keys to score."""
    if spec.dataset not in DATASETS:
        raise InputError(f"--dataset {spec.dataset}: use one of {', '.join(DATASETS)}")
    max_objects = spec.max_objects
    if max_objects is None:
        max_objects = OFFICIAL_MAX_OBJECTS if spec.dataset == "3dfront" else 0
    object_filter = ObjectFilter(min_area_fraction=spec.min_area, max_objects=max_objects)
    try:
        if spec.dataset == "3dfront":
            data = DATASETS["3dfront"](spec.root, views=spec.views, test_size=spec.test_size,
                                       object_filter=object_filter, points=spec.points)
        elif spec.dataset == "pairs":
            data = DATASETS["pairs"](spec.root, object_filter=object_filter)
        else:
            data = DATASETS[spec.dataset](spec.root, object_filter=object_filter, points=spec.points)
    except FileNotFoundError as err:
        raise InputError(str(err)) from None
    keys = data.keys()[: spec.limit] if spec.limit else data.keys()
    return data, keys


def dataset_identity(spec: BenchmarkSpec) -> dict:
    """What decides which scenes and ground truth a run scores."""
    from ..data.layout import dataset_fingerprint

    return {"dataset": spec.dataset, "root": str(Path(spec.root).resolve()), "index": dataset_fingerprint(spec.root),
            "views": list(spec.views), "test_size": spec.test_size, "max_objects": spec.max_objects,
            "min_area": spec.min_area, "points": spec.points}


def _files_digest(folder: Path, paths) -> str:
    """A hash of the files' names (relative to ``folder``), sizes and modification times."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(paths):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def model_identity(model: Path | None) -> dict:
    """A pipeline folder (or the embedded model) as path + a hash of its index and weight files."""
    from .. import __version__
    from ..embedded import embedded_model_folder

    folder = Path(model) if model is not None else embedded_model_folder()
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".ckpt")]
    return {"model": "embedded" if model is None else str(folder.resolve()), "model_files": _files_digest(folder, files),
            "midi3d": __version__}


def predictions_identity(pred_dir: Path) -> dict:
    """Another method's GLB folder as path + a hash of its files."""
    folder = Path(pred_dir)
    return {"pred_dir": str(folder.resolve()), "pred_files": _files_digest(folder, folder.glob("*.glb"))}


def claim_results_folder(out: Path, identity: dict, overwrite: bool = False) -> None:
    """Make ``out`` hold results of ``identity`` only: a new folder records it; a folder of the
    same run is continued; results of another run (other options, data, model or predictions)
    are refused with the differing keys named, or removed first with ``overwrite``."""
    path = out / RUN_FILE
    logs = sorted(out.glob("results-*.jsonl"))
    if overwrite:
        import shutil

        for stale in [*logs, *(out / name for name in ("summary.md", "summary.csv", "summary.json"))]:
            stale.unlink(missing_ok=True)
        shutil.rmtree(out / "visuals", ignore_errors=True)  # figures of the earlier run
        shutil.rmtree(out / "reprojection", ignore_errors=True)
    elif path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"{path}: unreadable ({err}); pass --overwrite to score again") from None
        changed = sorted(k for k in set(recorded) | set(identity) if recorded.get(k) != identity.get(k))
        if changed:
            detail = ", ".join(f"{k} {recorded.get(k)!r} → {identity.get(k)!r}" for k in changed)
            raise InputError(f"{out}: holds results of another run ({detail}); use another --out, or --overwrite "
                             "to score again")
        return
    elif logs:
        raise InputError(f"{out}: holds results without a record of what produced them; use another --out, or "
                         "--overwrite to score again")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(identity, indent=1, sort_keys=True) + "\n").encode())


def clean_outputs(*folders: Path | None) -> None:
    """Remove temporaries a killed run left (rank 0 only in an ``accelerate launch``)."""
    if os.environ.get("RANK", "0") != "0":
        return
    for folder in folders:
        if folder is not None:
            remove_stale_temporaries(folder)


def export_all_ground_truth(data, keys: list[str], out_dir: Path,
                            on_failure: Callable[[str, Exception], None] | None = None) -> tuple[int, int]:
    """Write ``<key>.glb`` for every key; returns ``(written, failed)``."""
    written, failed, wanted = 0, 0, set(keys)
    for index, key in enumerate(data.keys()):
        if key not in wanted:
            continue
        try:
            export_ground_truth(data.load(index), out_dir)
            written += 1
        except Exception as err:  # report and go on with the other scenes
            failed += 1
            if on_failure is not None:
                on_failure(key, err)
    return written, failed


def files_predictor(pred_dir: Path) -> Predictor:
    """Score ``<pred_dir>/<key>.glb`` (nodes ``instance_<id>``)."""
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: prediction folder not found")
    return lambda scene: load_prediction(pred_dir / f"{scene.key}.glb")


def model_predictor(pipe, options) -> Predictor:
    """Generate each scene with ``pipe`` (``options``: :class:`~midi3d.pipelines.scene.GenerateOptions`)."""
    from ..pipelines.scene import SceneInputs, generate_scene

    def predict(scene):
        return generate_scene(pipe, SceneInputs(scene.rgb, scene.labels, name=scene.key), options).meshes_by_id()

    return predict


def process_group() -> tuple[int, int, object | None]:
    """``(rank, world, state)`` of an ``accelerate launch`` (``(0, 1, None)`` without accelerate)."""
    try:
        from accelerate import PartialState
    except ImportError:
        return 0, 1, None
    state = PartialState(cpu=True)
    return state.process_index, state.num_processes, state


def score_benchmark(data, keys: list[str], predictor: Predictor, out: Path, options: EvalOptions,
                    retry_failed: bool = False, save_visuals: bool = False,
                    on_scene: Callable[[str, dict], None] | None = None, identity: dict | None = None,
                    overwrite: bool = False) -> dict | None:
    """Score this process's share; on rank 0, wait for the others and return the summary
    (written as ``summary.{md,csv,json}``); ``None`` on other ranks.

    ``identity`` (see :func:`claim_results_folder`) guards ``out`` against mixing runs; rank 0
    holds the folder's lock, so a second ``eval`` on the same folder is refused.
    """
    from ..io.locks import folder_lock

    rank, world, state = process_group()
    with folder_lock(out, "midi3d eval") if rank == 0 else contextlib.nullcontext():
        if rank == 0 and identity is not None:
            extra = {"reprojection": True} if options.reprojection else {}
            claim_results_folder(out, {**identity, "icp": options.icp, "seed": options.seed, **extra}, overwrite)
        if state is not None:
            state.wait_for_everyone()
        run(data, predictor, out, options, keys=keys, rank=rank, world=world, retry_failed=retry_failed,
            progress=on_scene, visuals_dir=out / "visuals" if save_visuals else None,
            reprojection_dir=out / "reprojection")
        if state is not None:
            state.wait_for_everyone()
    if rank != 0:
        return None
    cap = getattr(getattr(data, "filter", None), "max_objects", None)
    summary = summarise(ResultLog(out).records(), keys, options.icp, max_objects=cap)
    write_summary(out, summary)
    return summary
