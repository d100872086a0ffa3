"""Distinct display colours for instances (shared by exports, overlays and figures)."""

from __future__ import annotations

import colorsys


def instance_colour(index: int) -> tuple[int, int, int, int]:
    """A distinct RGBA colour per instance index (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((0.61803398875 * index + 0.1) % 1.0, 0.65, 0.95)
    return int(255 * r), int(255 * g), int(255 * b), 255
