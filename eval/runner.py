"""Benchmark runner: predict (or load) every scene, score it, log it, summarise.

One JSON line per scene is appended and flushed to ``results-<rank>.jsonl`` as soon as the
scene is done, so a killed run loses nothing finished and a rerun skips finished scenes.
Failures are recorded with their error and counted. Several processes (``accelerate launch``)
each take every ``world``-th scene; the summary is computed from all logs sorted by key, so it
does not depend on the number of processes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from ..data.datasets import EvalScene
from ..geometry.extraction import FALLBACK_METADATA
from ..io.errors import InputError
from ..io.files import output_error, write_atomic
from ..io.paths import child_path
from .metrics import scene_metrics

Predictor = Callable[[EvalScene], dict[int, trimesh.Trimesh]]

COLUMNS = [  # (record key, column title, scale, higher is better)
    ("scene_cd", "CD-S", 1.0, False),
    ("scene_fscore", "F-Score-S", 100.0, True),
    ("object_cd", "CD-O", 1.0, False),
    ("object_fscore", "F-Score-O", 100.0, True),
    ("iou_bbox", "IoU-B", 1.0, True),
]


@dataclass
class EvalOptions:
    icp: str = "official"
    points: int = 20480
    seed: int = 42
    reprojection: bool = False  # also score silhouettes at the estimated camera (always without 3D GT)


def sample_points(mesh: trimesh.Trimesh, count: int, seed: int) -> np.ndarray:
    """``count`` area-weighted surface samples ``(count, 3)`` float32 (seeded)."""
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.array(points, dtype=np.float32)


def score(scene: EvalScene, predicted: dict[int, trimesh.Trimesh], options: EvalOptions) -> dict[str, float]:
    """Metrics of one scene; every kept GT instance needs a non-empty predicted mesh."""
    missing = [i for i in scene.ids if i not in predicted or len(predicted[i].faces) == 0]
    if missing:
        raise ValueError(f"no predicted surface for instance(s) {', '.join(map(str, missing))}")
    preds = [sample_points(predicted[i], options.points, options.seed + i) for i in scene.ids]
    return scene_metrics(preds, scene.gt_points, options.icp)


def load_prediction(path: Path) -> dict[int, trimesh.Trimesh]:
    """Meshes of a scene file whose nodes are named ``instance_<id>`` (world transforms applied)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prediction not found")
    scene = trimesh.load(path, force="scene")
    meshes: dict[int, trimesh.Trimesh] = {}
    for node in scene.graph.nodes_geometry:
        if not node.startswith("instance_"):
            continue
        try:
            instance = int(node[len("instance_"):])
        except ValueError:
            continue
        transform, geometry = scene.graph[node]
        mesh = scene.geometry[geometry].copy()
        mesh.apply_transform(transform)
        meshes[instance] = mesh
    return meshes


def export_ground_truth(scene: EvalScene, out_dir: Path) -> Path:
    """Write the scene's GT meshes as ``<key>.glb`` with nodes ``instance_<id>``."""
    target = child_path(out_dir, f"{scene.key}.glb", scene.key)
    export = trimesh.Scene()
    for instance, path in zip(scene.ids, scene.gt_meshes):
        mesh = trimesh.load(path, force="mesh")
        name = f"instance_{instance}"
        export.add_geometry(mesh, node_name=name, geom_name=name)
    write_atomic(target, export.export(file_type="glb"))
    return target


def _well_formed(record) -> bool:
    """A record this runner writes: a key, a status, and the metrics when it is ``ok``."""
    if not (isinstance(record, dict) and isinstance(record.get("key"), str) and record.get("status") in ("ok", "failed")):
        return False
    if record["status"] == "failed":
        return isinstance(record.get("error"), str)
    if record.get("kind") == "reprojection":  # a scene without 3D ground truth
        return isinstance(record.get("reprojection_iou"), (int, float)) and isinstance(record.get("seconds"),
                                                                                      (int, float))
    return all(isinstance(record.get(k), (int, float)) for k, *_ in COLUMNS) and isinstance(record.get("seconds"),
                                                                                          (int, float))


class ResultLog:
    """Per-rank JSONL files in ``out_dir``: append + flush + fsync per record."""

    def __init__(self, out_dir: Path, rank: int = 0):
        self.out_dir = out_dir
        self.path = out_dir / f"results-{rank}.jsonl"

    def records(self) -> dict[str, dict]:
        """All complete records of all ranks, by key (a torn last line is ignored)."""
        found: dict[str, dict] = {}
        for path in sorted(self.out_dir.glob("results-*.jsonl")):
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError as err:
                raise InputError(f"{path}: unreadable results log ({err})") from None
            for number, line in enumerate(lines, 1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill (only ever the last one this code writes)
                if not _well_formed(record):
                    raise InputError(f"{path}: line {number} is not a result record of midi3d eval; use another "
                                     "--out, or --overwrite to score again")
                if record["status"] == "ok" or record["key"] not in found:  # a retried success wins
                    found[record["key"]] = record
        return found

    def append(self, record: dict) -> None:
        """Append one record; a line torn by an earlier kill is closed first so that it cannot
        swallow this one."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True) + "\n"
        try:
            with open(self.path, "ab+") as handle:
                if handle.tell() > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":
                        line = "\n" + line
                handle.write(line.encode())
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            raise output_error(self.path, err) from None


def run(dataset, predictor: Predictor, out_dir: Path, options: EvalOptions, keys: Iterable[str] | None = None,
        rank: int = 0, world: int = 1, retry_failed: bool = False,
        progress: Callable[[str, dict], None] | None = None, visuals_dir: Path | None = None,
        reprojection_dir: Path | None = None) -> None:
    """Score this rank's share of ``dataset`` (optionally only ``keys``), skipping finished scenes.

    With ``visuals_dir``, a figure per scored scene is written there (see :mod:`.visuals`); with
    ``options.reprojection`` (always for scenes without 3D ground truth) the reprojection score
    is added, and its sheet written to ``reprojection_dir`` when given.
    """
    log = ResultLog(out_dir, rank)
    finished = log.records()
    all_keys = dataset.keys()
    wanted = set(keys) if keys is not None else None
    for index, key in enumerate(all_keys):
        if index % world != rank or (wanted is not None and key not in wanted):
            continue
        previous = finished.get(key)
        if previous is not None and (previous["status"] == "ok" or not retry_failed):
            continue
        start = time.perf_counter()
        scene = None
        try:
            scene = dataset.load(index)
            predicted = predictor(scene)
            has_truth = bool(scene.gt_points)
            metrics = score(scene, predicted, options) if has_truth else {}
            record = {"key": key, "status": "ok", "objects": len(scene.ids), **metrics}
            dilated = sorted(i for i, m in predicted.items() if FALLBACK_METADATA in m.metadata)
            if dilated:  # meshed at a fallback iso-level (no zero crossing): scored, and counted
                record["dilated"] = dilated
            if not has_truth:
                record["kind"] = "reprojection"
            if options.reprojection or not has_truth:
                record.update(_reprojection(scene, predicted, reprojection_dir, key, required=not has_truth))
        except Exception as err:  # every failure is recorded and counted, the run goes on
            record = {"key": key, "status": "failed", "error": f"{type(err).__name__}: {err}"}
            if scene is not None:
                record["objects"] = len(scene.ids)
        if visuals_dir is not None and record["status"] == "ok":
            from .visuals import save_scene_figure

            try:
                save_scene_figure(scene, predicted, metrics, child_path(visuals_dir, f"{key}.png", key))
            except Exception as err:  # a figure never fails a scored scene
                record["visual_error"] = f"{type(err).__name__}: {err}"
        record["seconds"] = round(time.perf_counter() - start, 3)
        record["icp"] = options.icp
        log.append(record)
        if progress:
            progress(key, record)


def _reprojection(scene: EvalScene, predicted: dict[int, trimesh.Trimesh], sheets: Path | None, key: str,
                  required: bool) -> dict:
    """The reprojection fields of a record; a failure fails the scene only when it is all there is."""
    from .reprojection import reprojection_scores

    sheet = child_path(sheets, f"{key}.png", key) if sheets is not None else None
    try:
        return reprojection_scores(scene.rgb, scene.labels, scene.ids, predicted, sheet)
    except Exception as err:
        if required:
            raise
        return {"reprojection_error": f"{type(err).__name__}: {err}"}


BUCKETS = ((2, 4), (5, 7), (8, 12), (13, 24))  # objects per scene, for the IoU-B by scene density


def summarise(records: dict[str, dict], keys: list[str], icp: str, max_objects: int | None = None) -> dict:
    """Means over scored scenes (in key order), counts of scored and failed scenes, the object
    cap (``max_objects``, 0 = none) and the IoU-B per object-count bucket (:data:`BUCKETS`)."""
    chosen = [records[k] for k in keys if k in records]
    ok = [r for r in chosen if r["status"] == "ok"]
    failed = [r for r in chosen if r["status"] != "ok"]
    summary = {"icp": icp, "scenes": len(keys), "scored": len(ok), "failed": len(failed),
               "missing": len(keys) - len(chosen),
               "seconds_per_scene": float(np.mean([r["seconds"] for r in ok])) if ok else math.nan}
    for key, _, _, _ in COLUMNS:
        values = [r[key] for r in ok if key in r]
        summary[key] = float(np.mean(values)) if values else math.nan
    reprojected = [r["reprojection_iou"] for r in ok if "reprojection_iou" in r]
    summary["reprojection_scored"] = len(reprojected)
    summary["reprojection_iou"] = float(np.mean(reprojected)) if reprojected else math.nan
    summary["failures"] = {r["key"]: r["error"] for r in failed}
    summary["dilated_instances"] = sum(len(r.get("dilated", [])) for r in ok)
    summary["max_objects"] = max_objects
    summary["buckets"] = {}
    for low, high in BUCKETS:
        inside = [r for r in chosen if low <= r.get("objects", -1) <= high]
        scored = [r["iou_bbox"] for r in inside if r["status"] == "ok" and "iou_bbox" in r]
        summary["buckets"][f"{low}-{high}"] = {"scenes": len(inside), "scored": len(scored),
                                                "iou_bbox": float(np.mean(scored)) if scored else math.nan}
    return summary


def _format(value: float) -> str:
    """Four decimals, or scientific notation for values too small to show that way."""
    return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 or math.isnan(value) else f"{value:.2e}"


def _has_3d(summary: dict) -> bool:
    """Whether any scene was scored against 3D ground truth (not only by reprojection)."""
    return any(not math.isnan(summary.get(key, math.nan)) for key, *_ in COLUMNS)


def summary_rows(summary: dict) -> tuple[list[str], list[str]]:
    """Header and values of the paper's table (F-scores in percent)."""
    columns = COLUMNS if _has_3d(summary) or not summary.get("reprojection_scored") else []
    header = [f"{title} {'↑' if better else '↓'}" for _, title, _, better in columns]
    values = [_format(summary[key] * scale) for key, _, scale, _ in columns]
    if summary.get("reprojection_scored"):
        header.append("Reproj-IoU ↑")
        values.append(_format(summary["reprojection_iou"]))
    header += ["s/scene", "scored", "failed"]
    values += [f"{summary['seconds_per_scene']:.2f}", str(summary["scored"]), str(summary["failed"])]
    return header, values


def write_summary(out_dir: Path, summary: dict) -> None:
    """``summary.md``, ``summary.csv`` and ``summary.json`` (atomic)."""
    header, values = summary_rows(summary)
    dilated = summary.get("dilated_instances", 0)
    markdown = [f"ICP: {summary['icp']} · scenes: {summary['scenes']} (scored {summary['scored']}, "
                f"failed {summary['failed']}, missing {summary['missing']})"
                + (f" · {dilated} instance(s) meshed at a fallback iso-level" if dilated else ""), "",
                "| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(values) + " |"]
    cap = summary.get("max_objects")
    if cap is not None and _has_3d(summary):
        markdown += ["", f"Objects per scene: {f'at most {cap}' if cap else 'all'} (`--max-objects {cap}`). "
                     "IoU-B by objects per scene:", "", "| objects | scenes | scored | IoU-B ↑ |", "|---|---|---|---|"]
        markdown += [f"| {name} | {b['scenes']} | {b['scored']} | {_format(b['iou_bbox'])} |"
                     for name, b in summary["buckets"].items()]
    if summary["failures"]:
        markdown += ["", "Failed scenes:", ""] + [f"- `{k}`: {v}" for k, v in sorted(summary["failures"].items())]
    write_atomic(out_dir / "summary.md", ("\n".join(markdown) + "\n").encode())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["icp"] + [h.split(" ")[0] for h in header])
    writer.writerow([summary["icp"]] + values)
    write_atomic(out_dir / "summary.csv", buffer.getvalue().encode())
    write_atomic(out_dir / "summary.json", (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode())
