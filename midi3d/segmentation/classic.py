"""The ``classic`` back end: rough instance masks without any weights.

Meant for objects on a plain background (product shots, renders, drawings). Background
colours are the colours that dominate the image border; every pixel far from all of them is
foreground; foreground connected components (after a small opening) are the instances.
Objects that touch each other come out as one instance: use a label map or SAM for those.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .base import relabel


class ClassicSegmenter:
    """Border-colour background estimation + connected components.

    Args:
        tolerance: RGB distance under which a pixel matches a background colour.
        border_share: a border colour is background if it covers at least this share of the border.
        min_area: drop components smaller than this fraction of the image.
        max_instances: keep at most this many components (largest first).
    """

    name = "classic"

    def __init__(self, tolerance: float = 40.0, border_share: float = 0.1, min_area: float = 0.001,
                 max_instances: int = 32):
        self.tolerance = tolerance
        self.border_share = border_share
        self.min_area = min_area
        self.max_instances = max_instances

    def background_colours(self, rgb: np.ndarray) -> np.ndarray:
        """Colours ``[K, 3]`` that cover at least ``border_share`` of the border (quantised to 8 levels)."""
        border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int64)
        quantised = border // 32
        keys = (quantised[:, 0] * 8 + quantised[:, 1]) * 8 + quantised[:, 2]
        colours = []
        for key, count in zip(*np.unique(keys, return_counts=True)):
            if count >= self.border_share * len(border):
                colours.append(np.median(border[keys == key], axis=0))
        if not colours:  # no dominant border colour: take the overall median
            colours.append(np.median(border, axis=0))
        return np.array(colours, dtype=np.float32)

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        pixels = rgb.astype(np.float32)
        distance = np.min([np.linalg.norm(pixels - colour, axis=-1) for colour in self.background_colours(rgb)],
                          axis=0)
        foreground = ndimage.binary_opening(distance > self.tolerance, iterations=1)
        components, count = ndimage.label(foreground)
        if count == 0:
            return np.zeros(rgb.shape[:2], np.int64)
        areas = np.bincount(components.ravel())[1:]
        keep = [i + 1 for i in np.argsort(-areas, kind="stable")[: self.max_instances]
                if areas[i] >= self.min_area * components.size]
        labels = np.where(np.isin(components, keep), components, 0)
        return relabel(labels)
