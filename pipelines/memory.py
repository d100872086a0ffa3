"""What one generation costs in memory, known before anything large is allocated.

The model's weights are not counted (they are loaded already); what grows with the input is:
the scene image and label map, the padded canvas (official ``--pad``), one instance's
full-resolution working copies (instances are made and resized one at a time), the latents and
the meshing grid of one instance (instances are meshed one at a time). The estimate is checked
against a budget (``--max-memory-gb``); the message names the part that does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..io.errors import InputError

DEFAULT_BUDGET_GB = 4.0
GIB = 2**30

# bytes per pixel: RGB uint8 + compact ids
SCENE_BYTES_PER_PIXEL = 3 + 1
# one instance at a time: its image (3), mask (1), float mask (4), two PIL/resize copies (2 x 3)
INSTANCE_BYTES_PER_PIXEL = 3 + 1 + 4 + 6
# per grid node: hierarchical keeps a float32 value and a bool marker; dense holds values,
# the smoothed copy and marching cubes' working arrays
GRID_BYTES_PER_NODE = {"hierarchical": 4 + 1 + 1, "dense": 16}


@dataclass
class MemoryEstimate:
    """Bytes per part of one generation (see the module docstring)."""

    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def check(self, budget_gb: float = DEFAULT_BUDGET_GB) -> None:
        """:class:`InputError` naming the largest part when the total exceeds ``budget_gb``."""
        if self.total <= budget_gb * GIB:
            return
        largest = max(self.parts, key=self.parts.get)
        raise InputError(f"this generation needs about {self.total / GIB:.1f} GiB ({largest}: "
                         f"{self.parts[largest] / GIB:.1f} GiB), above the memory budget of {budget_gb:g} GiB; "
                         "use a smaller image, resolution or fewer instances, or raise --max-memory-gb")


def estimate(height: int, width: int, instances: int, resolution: int, method: str = "hierarchical",
             padded_side: int | None = None, latent_tokens: int = 2048, channels: int = 64) -> MemoryEstimate:
    """The estimate for an ``height x width`` scene with ``instances`` instances meshed at
    ``resolution`` (``padded_side``: the square canvas of the official padding, if used)."""
    side_h, side_w = (padded_side, padded_side) if padded_side else (height, width)
    parts = {"scene image and label map": height * width * SCENE_BYTES_PER_PIXEL,
             f"one instance at {side_w}x{side_h} pixels": side_h * side_w * INSTANCE_BYTES_PER_PIXEL,
             "latents (two guidance halves, a few copies)": 8 * instances * latent_tokens * channels * 4,
             f"meshing grid at {resolution}³": (resolution + 1) ** 3 * GRID_BYTES_PER_NODE.get(method, 16)}
    if padded_side:
        # the padded canvas and its square copy, both alive while padding
        parts[f"padded canvas of {padded_side}x{padded_side} pixels"] = 2 * padded_side**2 * SCENE_BYTES_PER_PIXEL
    return MemoryEstimate(parts)
