"""Reading instance label maps in every common encoding.

* palette (``P``): the palette *indices* are the ids (not the colours' luminance, which the
  official scripts use and which reorders or merges instances);
* 8/16/32-bit grayscale: the values are the ids;
* RGB / RGBA colour-coded: one colour = one instance, black = background; ids are 1..K in
  the order of the packed colour value. Fully transparent RGBA pixels are background.

Id 0 is background everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError
from .images import DEFAULT_MAX_PIXELS, lossy_or_truncated, open_image

DEFAULT_MAX_INSTANCES = 64


def label_array(image) -> np.ndarray:
    """Integer ids ``[H, W]`` (int64) from a decoded PIL label image."""
    mode = image.mode
    if mode == "P":
        return np.asarray(image, dtype=np.int64)
    if mode in ("1", "L", "I", "I;16", "I;16B", "I;16L"):
        return np.asarray(image).astype(np.int64)
    if mode == "F":
        values = np.asarray(image)
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise ValueError("float label map with non-integer values")
        return values.astype(np.int64)
    if mode == "LA":
        gray, alpha = np.asarray(image).transpose(2, 0, 1)
        return np.where(alpha == 0, 0, gray).astype(np.int64)
    rgba = np.asarray(image.convert("RGBA")).astype(np.int64)
    packed = (rgba[..., 0] << 16) | (rgba[..., 1] << 8) | rgba[..., 2]
    packed[rgba[..., 3] == 0] = 0
    colours, ids = np.unique(packed, return_inverse=True)
    ids = ids.reshape(packed.shape)
    if colours[0] != 0:  # no black: every colour is an instance
        ids = ids + 1
    return ids.astype(np.int64)


def read_label_map(path: str | Path, max_instances: int = DEFAULT_MAX_INSTANCES,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Instance ids ``[H, W]`` int64 with 0 = background; errors name the file.

    Refused with the reason: encodings that cannot hold exact ids (JPEG, lossy WebP, 16-bit
    colour PNG, which Pillow truncates) and negative ids. EXIF orientation is applied, as it is
    to the image (:func:`midi3d.pipelines.scene.load_scene` refuses a pair whose orientations differ).
    """
    image = open_image(path, max_pixels)
    problem = lossy_or_truncated(path)
    if problem is not None:
        raise InputError(f"{path}: unusable label map ({problem}); save it as a palette, grayscale or 8-bit "
                         "colour PNG")
    try:
        labels = label_array(image)
    except ValueError as err:
        raise InputError(f"{path}: unusable label map ({err})") from None
    if labels.size and labels.min() < 0:
        raise InputError(f"{path}: unusable label map (negative id {int(labels.min())}; ids are 0 = background "
                         "and positive integers)")
    count = len(instance_ids(labels))
    if count == 0:
        raise InputError(f"{path}: label map has no instance (every pixel is background 0)")
    if count > max_instances:
        raise InputError(f"{path}: label map has {count} instances, above the limit of {max_instances} "
                         "(raise it with --max-instances)")
    return labels


def instance_ids(labels: np.ndarray) -> list[int]:
    """Sorted non-zero ids present in ``labels``."""
    return [int(i) for i in np.unique(labels) if i != 0]
