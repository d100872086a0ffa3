"""Sampling defaults that travel with a model: read from and written to its pipeline folder.

A folder's ``model_index.json`` may hold ``"_midi3d_sampling": {"num_inference_steps": …,
"guidance_scale": …, "resolution": …, "empty_fallback_levels": […]}`` (the official loader
ignores keys starting with ``_``; the last key is optional).
A folder without it gets the official release's values. Every caller (``MIDIPipeline.__call__``,
``generate_scene``, the CLI, ``eval``, the demo) resolves its settings through
:meth:`SamplingDefaults.resolve`: a value the user gives always wins.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

SAMPLING_KEY = "_midi3d_sampling"
MI_LAYERS_KEY = "_midi3d_mi_layers"
CONTROL_KEY = "_midi3d_control"  # the folder's instance control (midi3d.control.ControlConfig data)
MIN_RESOLUTION = 8
DEFAULT_SEED = 42  # the official demo's seed; sampling is seeded unless a caller passes a generator


def check_resolution(resolution: int, what: str = "resolution") -> int:
    """``resolution`` if it is a power of two >= 8, else ``ValueError`` naming ``what``."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < MIN_RESOLUTION \
            or resolution & (resolution - 1):
        raise ValueError(f"{what} {resolution!r}: must be a power of two >= {MIN_RESOLUTION}")
    return resolution


def check_guidance(guidance: float, what: str = "guidance") -> float:
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance) \
            or guidance < 0:
        raise ValueError(f"{what} {guidance!r}: must be a finite number >= 0 (<= 1 turns guidance off)")
    return float(guidance)


def check_steps(steps: int, what: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{what} {steps!r}: must be an integer >= 1")
    return steps


@dataclass(frozen=True)
class SamplingDefaults:
    """What a model samples with when the caller gives no value."""

    steps: int = 50            # denoising steps
    guidance: float = 7.0      # classifier-free guidance scale
    resolution: int = 256      # meshing grid (cells per axis)
    fallback_levels: tuple[float, ...] = ()  # iso-levels tried for an instance with no surface (none: official)

    def __post_init__(self):
        from ..geometry.extraction import check_fallback_levels

        check_steps(self.steps, "num_inference_steps")
        check_guidance(self.guidance, "guidance_scale")
        check_resolution(self.resolution)
        object.__setattr__(self, "fallback_levels", check_fallback_levels(self.fallback_levels,
                                                                          "empty_fallback_levels"))

    def resolve(self, steps: int | None = None, guidance: float | None = None, resolution: int | None = None,
                fallback_levels: tuple[float, ...] | None = None) -> SamplingDefaults:
        """The given values, each ``None`` replaced by this default; the values are checked."""
        return SamplingDefaults(self.steps if steps is None else steps,
                                self.guidance if guidance is None else guidance,
                                self.resolution if resolution is None else resolution,
                                self.fallback_levels if fallback_levels is None else fallback_levels)

    def to_index(self) -> dict[str, Any]:
        """The ``model_index.json`` entry (``empty_fallback_levels`` only when there are some)."""
        entry = {"num_inference_steps": self.steps, "guidance_scale": self.guidance, "resolution": self.resolution}
        if self.fallback_levels:
            entry["empty_fallback_levels"] = list(self.fallback_levels)
        return entry

    @classmethod
    def from_index(cls, index: dict, source: str) -> SamplingDefaults:
        """The defaults recorded in a ``model_index.json`` (``source`` names it in errors); the
        official values where it records none."""
        entry = index.get(SAMPLING_KEY)
        if entry is None:
            return OFFICIAL_DEFAULTS
        names = {"num_inference_steps": "steps", "guidance_scale": "guidance", "resolution": "resolution",
                 "empty_fallback_levels": "fallback_levels"}
        if not isinstance(entry, dict) or set(entry) - set(names):
            raise ValueError(f"{source}: {SAMPLING_KEY} must be a mapping with keys {sorted(names)}, got {entry!r}")
        try:
            values = {names[k]: v for k, v in entry.items()}
            if "fallback_levels" in values and not isinstance(values["fallback_levels"], list):
                raise ValueError(f"empty_fallback_levels {values['fallback_levels']!r}: must be a list")
            return OFFICIAL_DEFAULTS.resolve(**values)
        except ValueError as err:
            raise ValueError(f"{source}: {SAMPLING_KEY}: {err}") from None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# The official release: 50 steps, guidance 7, 256³ (its demo and inference script).
OFFICIAL_DEFAULTS = SamplingDefaults(steps=50, guidance=7.0, resolution=256)
