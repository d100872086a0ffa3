"""The embedded default model: trained weights shipped in the package (``midi3d/assets``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

EMBEDDED_NAME = "midi3d-tiny"


def embedded_model_folder() -> Path:
    """The shipped pipeline folder (its ``model_index.json`` records its sampling defaults)."""
    return Path(str(resources.files("midi3d.assets").joinpath(EMBEDDED_NAME)))


def load_embedded_pipeline(torch_dtype: torch.dtype | None = None, device: str = "cpu", mi_layers=None,
                           dtype: torch.dtype | None = None):
    """Load the embedded model (v2: object-frame VAE and layout model); it samples with the
    defaults saved in its folder (guidance 2, 64 cells across each object's box; docs/results.md)."""
    from .pipelines.pipeline_midi import MIDIPipeline

    return MIDIPipeline.from_pretrained(embedded_model_folder(), torch_dtype=torch_dtype, dtype=dtype, device=device,
                                        mi_layers=mi_layers)
