"""The layout format: what a scene image should show and where (JSON or YAML, validated).

```yaml
size: [1024, 768]            # width, height of the image to make (pixels)
prompt: a living room with a sofa and a lamp
units: pixels                # or "normalized" (boxes in [0, 1]); default pixels
instances:
  - box: [120, 380, 620, 700]        # x0, y0, x1, y1
    description: a green velvet sofa
    category: sofa                   # optional
  - box: [650, 90, 760, 520]
    description: a brass floor lamp
    mask: lamp_mask.png              # optional, relative to the layout file; the image's size
```

Every problem is one line that names the file and the entry (:class:`~midi3d.io.errors.InputError`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.errors import InputError

MAX_INSTANCES = 50  # InstanceAssemble's layout encoder holds up to 50 instances
MAX_SIDE = 4096
UNITS = ("pixels", "normalized")


@dataclass(frozen=True)
class LayoutInstance:
    """One object: its box in normalised image coordinates ``(x0, y0, x1, y1)`` in ``[0, 1]``."""

    box: tuple[float, float, float, float]
    description: str
    category: str | None = None
    mask: np.ndarray | None = field(default=None, compare=False)  # [H, W] bool at the image size

    def pixel_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = self.box
        return x0 * width, y0 * height, x1 * width, y1 * height


@dataclass(frozen=True)
class Layout:
    width: int
    height: int
    prompt: str
    instances: tuple[LayoutInstance, ...]

    @property
    def boxes(self) -> np.ndarray:
        """``[N, 4]`` normalised boxes."""
        return np.asarray([i.box for i in self.instances], np.float64).reshape(-1, 4)

    def label_map(self) -> np.ndarray:
        """``[H, W]`` instance ids (k + 1) from the masks, or the boxes where no mask is given; later
        instances are drawn over earlier ones."""
        labels = np.zeros((self.height, self.width), np.uint8 if len(self.instances) < 255 else np.uint16)
        for index, instance in enumerate(self.instances):
            if instance.mask is not None:
                region = instance.mask
            else:
                x0, y0, x1, y1 = instance.pixel_box(self.width, self.height)
                region = np.zeros_like(labels, bool)
                region[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = True
            labels[region] = index + 1
        return labels


def _fail(source: str, message: str):
    raise InputError(f"{source}: {message}")


def _number_list(value, size: int, where: str, source: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != size:
        _fail(source, f"{where}: expected a list of {size} numbers, got {value!r}")
    numbers = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not np.isfinite(item):
            _fail(source, f"{where}: expected a list of {size} numbers, got {value!r}")
        numbers.append(float(item))
    return numbers


def _read_mask(path: Path, size: tuple[int, int], where: str, source: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        _fail(source, f"{where}: mask file {path} not found")
    try:
        with Image.open(path) as image:
            if image.size != size:
                _fail(source, f"{where}: mask {path.name} is {image.size[0]}x{image.size[1]}, the layout's image is "
                              f"{size[0]}x{size[1]}")
            array = np.asarray(image.convert("L")) > 127
    except (UnidentifiedImageError, OSError) as err:
        _fail(source, f"{where}: mask {path.name} is not a readable image ({err})")
    if not array.any():
        _fail(source, f"{where}: mask {path.name} is empty")
    return array


def layout_from_data(data, base_dir: Path = Path("."), source: str = "layout") -> Layout:
    """Validate parsed layout data (a mapping); masks are read relative to ``base_dir``."""
    if not isinstance(data, dict):
        _fail(source, "expected a mapping with size, prompt and instances")
    unknown = sorted(set(data) - {"size", "prompt", "units", "instances"})
    if unknown:
        _fail(source, f"unknown key {unknown[0]!r} (expected size, prompt, units, instances)")
    if "size" not in data:
        _fail(source, "size: missing (width and height in pixels, e.g. [1024, 1024])")
    width, height = _number_list(data["size"], 2, "size", source)
    if width != int(width) or height != int(height) or not (16 <= width <= MAX_SIDE and 16 <= height <= MAX_SIDE):
        _fail(source, f"size: width and height must be whole numbers of pixels in 16..{MAX_SIDE}, got {data['size']!r}")
    width, height = int(width), int(height)
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        _fail(source, "prompt: the global prompt is missing or empty")
    units = data.get("units", "pixels")
    if units not in UNITS:
        _fail(source, f"units: {units!r} is not one of {', '.join(UNITS)}")
    instances = data.get("instances")
    if not isinstance(instances, list) or not instances:
        _fail(source, "instances: expected a non-empty list")
    if len(instances) > MAX_INSTANCES:
        _fail(source, f"instances: {len(instances)} exceed the limit of {MAX_INSTANCES}")
    parsed = []
    for index, entry in enumerate(instances):
        where = f"instances[{index}]"
        if not isinstance(entry, dict):
            _fail(source, f"{where}: expected a mapping with box and description")
        extra = sorted(set(entry) - {"box", "description", "category", "mask"})
        if extra:
            _fail(source, f"{where}: unknown key {extra[0]!r} (expected box, description, category, mask)")
        if "box" not in entry:
            _fail(source, f"{where}: box missing")
        x0, y0, x1, y1 = _number_list(entry["box"], 4, f"{where}.box", source)
        limit_x, limit_y = (width, height) if units == "pixels" else (1.0, 1.0)
        if not (0 <= x0 and 0 <= y0 and x1 <= limit_x and y1 <= limit_y):
            _fail(source, f"{where}.box {entry['box']!r} lies outside the image (0..{limit_x:g} x 0..{limit_y:g} "
                          f"in {units})")
        if x1 <= x0 or y1 <= y0:
            _fail(source, f"{where}.box {entry['box']!r} has zero area (needs x0 < x1 and y0 < y1)")
        box = (x0 / limit_x, y0 / limit_y, x1 / limit_x, y1 / limit_y)
        description = entry.get("description")
        if not isinstance(description, str) or not description.strip():
            _fail(source, f"{where}.description: missing or empty")
        category = entry.get("category")
        if category is not None and (not isinstance(category, str) or not category.strip()):
            _fail(source, f"{where}.category: expected a non-empty string")
        mask = None
        if entry.get("mask") is not None:
            if not isinstance(entry["mask"], str):
                _fail(source, f"{where}.mask: expected a file name")
            mask = _read_mask(base_dir / entry["mask"], (width, height), f"{where}.mask", source)
        parsed.append(LayoutInstance(box, description.strip(), category, mask))
    return Layout(width, height, prompt.strip(), tuple(parsed))


def load_layout(path: str | Path) -> Layout:
    """Read and validate a layout file (``.json``, ``.yaml`` or ``.yml``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: layout file not found")
    text = path.read_text(errors="replace")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (json.JSONDecodeError, ValueError) as err:
        raise InputError(f"{path}: not valid JSON/YAML ({str(err).splitlines()[0]})") from None
    except Exception as err:  # yaml.YAMLError and friends
        raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return layout_from_data(data, path.parent, str(path))
