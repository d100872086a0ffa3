"""The layout tab's canvas: draw a layout's boxes on a blank image, add a box from two clicks."""

from __future__ import annotations

import numpy as np
import yaml

from ..colours import instance_colour
from ..io.errors import InputError

CANVAS_MAX = 512  # the canvas's longest side on the page


def parse_layout_text(text: str) -> dict:
    try:
        data = yaml.safe_load(text or "") or {}
    except yaml.YAMLError as err:
        raise InputError(f"layout: not valid YAML/JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError("layout: expected a mapping with size, prompt and instances")
    return data


def _size(data: dict) -> tuple[int, int]:
    size = data.get("size") or [512, 512]
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InputError(f"layout: size {size!r} is not [width, height]") from None
    if not (16 <= width <= 4096 and 16 <= height <= 4096):
        raise InputError(f"layout: size {size!r} out of range")
    return width, height


def canvas_scale(data: dict) -> float:
    """Canvas pixels per layout pixel."""
    return min(1.0, CANVAS_MAX / max(_size(data)))


def draw_layout(text: str) -> np.ndarray:
    """``[h, w, 3]`` uint8: a white canvas with the layout's boxes outlined in instance colours."""
    from PIL import Image, ImageDraw

    data = parse_layout_text(text)
    width, height = _size(data)
    scale = canvas_scale(data)
    image = Image.new("RGB", (max(1, round(width * scale)), max(1, round(height * scale))), "white")
    draw = ImageDraw.Draw(image)
    normalized = data.get("units") == "normalized"
    for index, instance in enumerate(data.get("instances") or []):
        try:
            x0, y0, x1, y1 = (float(v) for v in instance["box"])
        except (KeyError, TypeError, ValueError):
            continue
        if normalized:
            x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
        colour = instance_colour(index)[:3]
        draw.rectangle([x0 * scale, y0 * scale, x1 * scale, y1 * scale], outline=colour, width=3)
        draw.text((x0 * scale + 4, y0 * scale + 2), f"{index + 1} {instance.get('description', '')}"[:40],
                  fill=colour)
    return np.asarray(image)


def add_box(text: str, corner_a: tuple[float, float], corner_b: tuple[float, float], description: str) -> str:
    """The layout text with one more instance: the box spanned by two canvas clicks (converted to
    the layout's pixels, or normalised units), with ``description``."""
    data = parse_layout_text(text)
    if not (description or "").strip():
        raise InputError("type the new box's description first")
    width, height = _size(data)
    scale = canvas_scale(data)
    (ax, ay), (bx, by) = corner_a, corner_b
    box = [min(ax, bx) / scale, min(ay, by) / scale, max(ax, bx) / scale, max(ay, by) / scale]
    box = [float(np.clip(box[0], 0, width)), float(np.clip(box[1], 0, height)),
           float(np.clip(box[2], 0, width)), float(np.clip(box[3], 0, height))]
    if data.get("units") == "normalized":
        box = [box[0] / width, box[1] / height, box[2] / width, box[3] / height]
        box = [round(v, 4) for v in box]
    else:
        box = [round(v) for v in box]
    data.setdefault("size", [width, height])
    data.setdefault("prompt", "")
    data.setdefault("instances", [])
    data["instances"] = list(data["instances"] or []) + [{"box": box, "description": description.strip()}]
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
