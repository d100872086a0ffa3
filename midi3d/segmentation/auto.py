"""The segmentation ``midi3d generate IMAGE`` uses when no label map is given."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..io.errors import InputError
from ..io.labelmap import DEFAULT_MAX_INSTANCES

logger = logging.getLogger(__name__)


def segment_automatically(rgb: np.ndarray, source: str | Path, allow_pickle: bool = False,
                          max_instances: int = DEFAULT_MAX_INSTANCES) -> np.ndarray:
    """A label map for ``rgb``: automatic SAM when ``$MIDI3D_SAM_CHECKPOINT`` is set, else the rough
    ``classic`` back end; both keep the ``max_instances`` largest objects. ``source`` names the
    image in messages."""
    from .classic import ClassicSegmenter
    from .sam import CHECKPOINT_ENV, SamSegmenter

    if os.environ.get(CHECKPOINT_ENV):
        segmenter, how = SamSegmenter(None, allow_pickle=allow_pickle, max_instances=max_instances), "automatic SAM"
    else:
        segmenter, how = ClassicSegmenter(max_instances=max_instances), "rough classic"
    labels = segmenter.segment(rgb)
    count = int(labels.max())
    if count == 0:
        raise InputError(f"{source}: the {how} segmentation found no object; pass --seg LABELS.png")
    logger.warning("%s: no --seg given, using the %s segmentation (%d instances, at most %d kept); "
                   "check it with `midi3d segment` or pass --seg", source, how, count, max_instances)
    return labels
