"""The segmenter interface and label-map writers."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from ..io.errors import InputError
from ..io.files import write_atomic
from ..io.images import png_bytes
from ..colours import instance_colour


class Segmenter(Protocol):
    """Anything that turns an RGB image ``[H, W, 3]`` uint8 into instance ids ``[H, W]``."""

    name: str

    def segment(self, rgb: np.ndarray) -> np.ndarray: ...


def relabel(labels: np.ndarray) -> np.ndarray:
    """Ids renumbered 1..K in ascending order of the original ids (0 stays background)."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lookup = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int64)
    lookup[ids] = np.arange(1, len(ids) + 1)
    return lookup[labels]


def save_label_map(labels: np.ndarray, path: str | Path) -> Path:
    """A palette PNG whose indices are the ids (the encoding midi3d reads back exactly). Ids
    above 255 are renumbered 1..K in their order first (a palette holds 255 instances)."""
    if labels.max() > 255:
        if len(np.unique(labels[labels > 0])) > 255:
            raise InputError(f"{path}: {len(np.unique(labels[labels > 0]))} instances do not fit a palette PNG "
                             "(at most 255)")
        labels = relabel(labels)
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette = [0, 0, 0] + [c for k in range(255) for c in instance_colour(k)[:3]]
    image.putpalette(palette)
    path = Path(path)
    write_atomic(path, png_bytes(image))
    return path


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The image with each instance tinted in its colour and instance borders darkened."""
    out = rgb.astype(np.float32).copy()
    ids = [i for i in np.unique(labels) if i != 0]
    for k, instance in enumerate(ids):
        mask = labels == instance
        out[mask] = (1 - alpha) * out[mask] + alpha * np.array(instance_colour(k)[:3], np.float32)
    border = np.zeros(labels.shape, bool)
    border[:-1] |= labels[:-1] != labels[1:]
    border[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    out[border] *= 0.3
    return out.clip(0, 255).astype(np.uint8)


def save_overlay(rgb: np.ndarray, labels: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    write_atomic(path, png_bytes(Image.fromarray(overlay(rgb, labels))))
    return path
