"""Scene image + label map → the per-instance inputs of the official pipeline, in one place.

Official conventions: instances in ascending id order, instance images equal to the scene
inside the mask and white outside, masks uint8 0/255, the scene image itself for every
instance, optional padding of the scene (``--do-image-padding``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..io.errors import InputError
from ..io.labelmap import DEFAULT_MAX_INSTANCES, instance_ids, label_array


@dataclass
class InstanceInputs:
    """What the encoders read: one entry per instance, in ``ids`` order (any sequences: the
    scene-image path makes each instance image and mask on demand, so only one full-resolution
    copy exists at a time)."""

    ids: list[int]
    images: Sequence[np.ndarray]   # [H, W, 3] uint8, white outside the instance
    masks: Sequence[np.ndarray]    # [H, W] uint8, 0/255
    scenes: Sequence[np.ndarray]   # [H, W, 3] uint8, the (padded) scene image


class _PerInstance(Sequence):
    """``images[k]`` / ``masks[k]`` of instance ``ids[k]``, computed when read."""

    def __init__(self, rgb: np.ndarray, labels: np.ndarray, ids: list[int], kind: str):
        self.rgb, self.labels, self.ids, self.kind = rgb, labels, ids, kind

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if self.kind == "mask":
            return instance_mask(self.labels, self.ids[k])
        return instance_image(self.rgb, self.labels, self.ids[k])


def instance_mask(labels: np.ndarray, instance_id: int) -> np.ndarray:
    """The official mask of one instance: uint8 0/255."""
    return np.where(labels == instance_id, 255, 0).astype(np.uint8)


def instance_image(rgb: np.ndarray, labels: np.ndarray, instance_id: int) -> np.ndarray:
    """The official instance image: the scene inside the instance, white outside."""
    return np.where((labels == instance_id)[..., None], rgb, 255).astype(np.uint8)


def _padded_shape(labels: np.ndarray) -> tuple[int, int]:
    """``(height, width)`` of the official padding's canvas before it is squared."""
    h, w = labels.shape
    rows, cols = np.nonzero(labels > 0)
    r_min, r_max, c_min, c_max = rows.min(), rows.max(), cols.min(), cols.max()
    extent = max(2 * max(abs(r_max - w // 2), abs(r_min - w // 2)), 2 * max(abs(c_max - h // 2), abs(c_min - h // 2)))
    return (int(1.25 * extent) if extent > 0.8 * h else h), (int(1.25 * extent) if extent > 0.8 * w else w)


def padded_size(labels: np.ndarray) -> int:
    """The side of the square canvas :func:`pad_scene` makes (computed without allocating it)."""
    return max(_padded_shape(labels))


def pad_scene(rgb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The official ``--do-image-padding``: enlarge the canvas around the objects, then square it.

    Reproduces the official comparison of rows with the width and columns with the height
    (harmless for square inputs; for very wide or tall images it makes a canvas far larger than
    the image: :func:`padded_size` tells how large before anything is allocated).
    """
    h, w = labels.shape
    new_h, new_w = _padded_shape(labels)
    canvas_rgb = np.full((new_h, new_w, 3), 255, np.uint8)
    canvas_seg = np.zeros((new_h, new_w), labels.dtype)
    top, left = (new_h - h) // 2, (new_w - w) // 2
    canvas_rgb[top : top + h, left : left + w] = rgb
    canvas_seg[top : top + h, left : left + w] = labels
    side = max(new_h, new_w)
    square_rgb = np.full((side, side, 3), 255, np.uint8)
    square_seg = np.zeros((side, side), labels.dtype)
    square_rgb[:new_h, :new_w] = canvas_rgb
    square_seg[:new_h, :new_w] = canvas_seg
    return square_rgb, square_seg


def split_instances(rgb: np.ndarray, labels: np.ndarray, ids: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Instance images (scene inside the mask, white outside) and masks (uint8 0/255)."""
    return [instance_image(rgb, labels, i) for i in ids], [instance_mask(labels, i) for i in ids]


def as_rgb(image) -> np.ndarray:
    """A PIL image or array as ``[H, W, 3]`` uint8."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise InputError(f"scene image must be RGB uint8 [H, W, 3], got {array.dtype} {list(array.shape)}")
    return array


def as_labels(label_map) -> np.ndarray:
    """A PIL label map (palette or grayscale: the values are the ids) or array as ``[H, W]``."""
    if isinstance(label_map, Image.Image):
        return label_array(label_map)
    array = np.asarray(label_map)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"label map must be an integer array [H, W], got {array.dtype} {list(array.shape)}")
    return array


def scene_arrays(image, label_map, max_instances: int = DEFAULT_MAX_INSTANCES
                 ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``(rgb, labels, ids)`` of a scene image and its label map, checked; labels are stored in
    the smallest integer type that holds their ids (the same ids, a fraction of the memory)."""
    rgb, labels = as_rgb(image), as_labels(label_map)
    if labels.shape != rgb.shape[:2]:
        raise InputError(f"label map is {labels.shape[1]}x{labels.shape[0]} but the image is "
                         f"{rgb.shape[1]}x{rgb.shape[0]}")
    ids = instance_ids(labels)
    if not ids:
        raise InputError("label map has no instance (all background)")
    if len(ids) > max_instances:
        raise InputError(f"label map has {len(ids)} instances, more than the limit of {max_instances}")
    top = max(ids)
    compact = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32 if top < 2**32 else np.int64
    return rgb, labels.astype(compact, copy=False), ids


def scene_instances(image, label_map, pad: bool = False, max_instances: int = DEFAULT_MAX_INSTANCES,
                    before_allocating: Callable[[int, int, int, int | None], None] | None = None) -> InstanceInputs:
    """The per-instance inputs of a scene image and its label map (0 = background), made on demand.

    ``before_allocating(height, width, instances, padded_side)`` runs before the padded canvas or
    any per-instance array exists (the memory check).
    """
    rgb, labels, ids = scene_arrays(image, label_map, max_instances)
    if before_allocating is not None:
        before_allocating(*labels.shape, len(ids), padded_size(labels) if pad else None)
    if pad:
        rgb, labels = pad_scene(rgb, labels)
    return InstanceInputs(ids, _PerInstance(rgb, labels, ids, "image"), _PerInstance(rgb, labels, ids, "mask"),
                          [rgb] * len(ids))
