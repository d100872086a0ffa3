"""Reprojection score: how well a scene's meshes line up with the photo's instance masks, at the
camera estimated from them (:mod:`midi3d.geometry.camera_fit`). Needs no 3D ground truth, so any
method's output on real photos can be scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from ..geometry.camera_fit import CameraFitOptions, estimate_camera
from ..io.images import write_png


def reprojection_scores(rgb: np.ndarray, labels: np.ndarray, ids: list[int], predicted: dict[int, trimesh.Trimesh],
                        sheet: Path | None = None, options: CameraFitOptions | None = None) -> dict:
    """``reprojection_iou`` (mean over *all* instances; one without a mesh counts 0),
    ``reprojection_ious`` per id (``None`` without a mesh) and the ``camera``; with ``sheet``, a
    picture photo | rendered instances | blend is written there."""
    from ..pipelines.alignment import overlay_sheet

    meshes = [predicted.get(i) for i in ids]
    fit = estimate_camera(meshes, labels, ids, options)
    per_instance = {str(i): (None if v is None else round(float(v), 5)) for i, v in zip(ids, fit.ious)}
    mean = float(np.mean([0.0 if v is None else v for v in fit.ious])) if ids else float("nan")
    if sheet is not None:
        write_png(sheet, overlay_sheet(rgb, meshes, fit.camera))
    return {"reprojection_iou": mean, "reprojection_ious": per_instance, "camera": fit.camera.to_dict(),
            "camera_seconds": round(fit.seconds, 3)}
