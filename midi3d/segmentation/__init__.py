"""Instance segmentation back ends behind one interface: ``segment(rgb) -> labels``.

* ``labelmap``: a user's label map (every encoding :mod:`midi3d.io.labelmap` reads);
* ``sam``: segment-anything with a local checkpoint, automatic or prompted (points, boxes);
* ``classic``: a rough, weights-free fallback for objects on plain backgrounds (background
  colours estimated on the image border, then connected components).

Label maps are ``[H, W]`` int64 with 0 = background and ids 1..K.
"""

from .base import Segmenter, save_label_map, save_overlay
from .classic import ClassicSegmenter
from .labelmap import LabelMapSegmenter
from .sam import SamSegmenter

BACKENDS = {"classic": ClassicSegmenter, "labelmap": LabelMapSegmenter, "sam": SamSegmenter}

__all__ = ["BACKENDS", "ClassicSegmenter", "LabelMapSegmenter", "SamSegmenter", "Segmenter", "save_label_map",
           "save_overlay"]
