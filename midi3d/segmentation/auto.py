"""Automatic segmentation, as ``midi3d generate IMAGE`` (no label map) and the demo's
"automatic" mode use it: SAM when a checkpoint is configured, else the rough classic back end."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io.errors import InputError
from ..io.labelmap import DEFAULT_MAX_INSTANCES


def segment_automatically(rgb: np.ndarray, source: str | Path, checkpoint: str | Path | None = None,
                          allow_pickle: bool = False, max_instances: int = DEFAULT_MAX_INSTANCES
                          ) -> tuple[np.ndarray, str]:
    """``(labels, how)`` for ``rgb``: automatic SAM with ``checkpoint`` (or
    ``$MIDI3D_SAM_CHECKPOINT``), else the rough ``classic`` back end; both keep the
    ``max_instances`` largest objects. Finding nothing is an :class:`InputError` naming ``source``."""
    from .classic import ClassicSegmenter
    from .sam import CHECKPOINT_ENV, SamSegmenter

    if checkpoint is not None or os.environ.get(CHECKPOINT_ENV):
        segmenter = SamSegmenter(checkpoint, allow_pickle=allow_pickle, max_instances=max_instances)
        how = "automatic SAM"
    else:
        segmenter, how = ClassicSegmenter(max_instances=max_instances), "rough classic"
    labels = segmenter.segment(rgb)
    if int(labels.max()) == 0:
        raise InputError(f"{source}: the {how} segmentation found no object; give a label map")
    return labels, how
