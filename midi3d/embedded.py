"""The embedded default model: trained weights shipped in the package, or a random stand-in."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

EMBEDDED_NAME = "midi3d-tiny"
# Meshing grid used when none is given. The official release meshes at 256³. The embedded model's
# coarse shapes gain nothing from it: on the bundled room-5, 128³ takes 13.7 s end to end and
# writes 9.5 MB, 256³ takes 26.7 s and writes 38.6 MB (docs/results.md, "Speed").
EMBEDDED_RESOLUTION = 128
OFFICIAL_RESOLUTION = 256
# Classifier-free guidance scale used when none is given. The official release samples at 7; the
# small embedded model does better with less (chosen on the validation split, docs/results.md).
EMBEDDED_GUIDANCE = 2.0
OFFICIAL_GUIDANCE = 7.0


def default_resolution(model: Path | None) -> int:
    """The meshing grid for a model folder (``None`` = the embedded model) when none is given."""
    return EMBEDDED_RESOLUTION if model is None else OFFICIAL_RESOLUTION


def default_guidance(model: Path | None) -> float:
    """The guidance scale for a model folder (``None`` = the embedded model) when none is given."""
    return EMBEDDED_GUIDANCE if model is None else OFFICIAL_GUIDANCE


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
