"""The embedded default model: trained weights shipped in the package, or a random stand-in."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

EMBEDDED_NAME = "midi3d-tiny"


@dataclass(frozen=True)
class SamplingDefaults:
    """Settings a model samples with when the user gives none."""

    resolution: int  # meshing grid (cells per axis)
    guidance: float  # classifier-free guidance scale

    def resolve(self, resolution: int | None, guidance: float | None) -> tuple[int, float]:
        """The given values, with ``None`` replaced by these defaults."""
        return (resolution or self.resolution), (self.guidance if guidance is None else guidance)


# The official release meshes at 256³ and samples at guidance 7. The embedded model's coarse
# shapes gain nothing from 256³ (bundled room-5: 14.9 s end to end and 9.5 MB at 128³, 26.7 s and
# 38.6 MB at 256³), and it does better at guidance 2 (chosen on the validation split; docs/results.md).
EMBEDDED_DEFAULTS = SamplingDefaults(resolution=128, guidance=2.0)
OFFICIAL_DEFAULTS = SamplingDefaults(resolution=256, guidance=7.0)


def sampling_defaults(model: Path | None) -> SamplingDefaults:
    """The defaults for a model folder (``None`` = the embedded model)."""
    return EMBEDDED_DEFAULTS if model is None else OFFICIAL_DEFAULTS


def embedded_model_folder() -> Path | None:
    """The shipped pipeline folder, or ``None`` while no trained weights are bundled."""
    folder = Path(str(resources.files("midi3d.assets").joinpath(EMBEDDED_NAME)))
    return folder if (folder / "model_index.json").is_file() else None


def load_embedded_pipeline(dtype: torch.dtype = torch.float32, device: str = "cpu", mi_layers=None):
    """Load the embedded model (with its sampling defaults); falls back to the deterministic
    random stand-in."""
    from .pipelines.pipeline_midi import MIDIPipeline

    folder = embedded_model_folder()
    if folder is not None:
        pipe = MIDIPipeline.from_pretrained(folder, dtype=dtype, device=device, mi_layers=mi_layers)
    else:
        pipe = _random_stand_in(dtype, device, mi_layers)
    pipe.sampling_defaults = EMBEDDED_DEFAULTS
    return pipe


def _random_stand_in(dtype: torch.dtype, device: str, mi_layers):
    from .models.factory import PipelineSpec, build_pipeline

    logger.warning("no trained embedded model is bundled yet: using the deterministic random stand-in "
                   "'%s' (meshes are placeholders, not reconstructions)", EMBEDDED_NAME)
    pipe = build_pipeline(PipelineSpec.builtin(EMBEDDED_NAME))
    if mi_layers is not None:
        pipe.transformer.set_multi_instance_layers(mi_layers)
    return pipe.to_dtype(dtype).to(device)
