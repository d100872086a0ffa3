"""The ``labelmap`` back end: a user's own label map."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.errors import InputError
from ..io.images import DEFAULT_MAX_PIXELS
from ..io.labelmap import DEFAULT_MAX_INSTANCES, read_label_map


class LabelMapSegmenter:
    """Returns the label map read from ``path`` (checked against the image size)."""

    name = "labelmap"

    def __init__(self, path: str | Path, max_instances: int = DEFAULT_MAX_INSTANCES,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.path = Path(path)
        self.labels = read_label_map(self.path, max_instances=max_instances, max_pixels=max_pixels)

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        if self.labels.shape != rgb.shape[:2]:
            raise InputError(f"{self.path}: label map is {self.labels.shape[1]}x{self.labels.shape[0]} but the image "
                             f"is {rgb.shape[1]}x{rgb.shape[0]}")
        return self.labels
