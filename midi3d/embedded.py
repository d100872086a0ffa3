"""The embedded default model: trained weights shipped in the package, or a random stand-in."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

EMBEDDED_NAME = "midi3d-tiny"


def embedded_model_folder() -> Path | None:
    """The shipped pipeline folder, or ``None`` while no trained weights are bundled."""
    folder = Path(str(resources.files("midi3d.assets").joinpath(EMBEDDED_NAME)))
    return folder if (folder / "model_index.json").is_file() else None


def load_embedded_pipeline(dtype: torch.dtype = torch.float32, device: str = "cpu", mi_layers=None):
    """Load the embedded model; falls back to the deterministic random stand-in."""
    from .models.factory import PipelineSpec, build_pipeline
    from .pipelines.pipeline_midi import MIDIPipeline

    folder = embedded_model_folder()
    if folder is not None:
        return MIDIPipeline.from_pretrained(folder, dtype=dtype, device=device, mi_layers=mi_layers)
    logger.warning("no trained embedded model is bundled yet: using the deterministic random stand-in "
                   "'%s' (meshes are placeholders, not reconstructions)", EMBEDDED_NAME)
    pipe = build_pipeline(PipelineSpec.builtin(EMBEDDED_NAME))
    if mi_layers is not None:
        pipe.transformer.set_multi_instance_layers(mi_layers)
    return pipe.to_dtype(dtype).to(device)
