"""One way to get a ready pipeline for the CLI, ``eval`` and the demo: a folder or the embedded
model, a dtype and device, optional multi-instance layers and a LoRA adapter."""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.layer_spec import LayerSpec
from .pipeline_midi import MIDIPipeline

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """The torch dtype called ``name``, checked against ``device`` (``ValueError`` otherwise)."""
    if name not in DTYPES:
        raise ValueError(f"--dtype {name}: use one of {', '.join(DTYPES)}")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device {device}: not a torch device (cpu, cuda, cuda:1, mps)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    if DTYPES[name] is torch.float16 and kind == "cpu":
        raise ValueError("--dtype float16 needs a GPU; use --dtype bfloat16 or float32 on the CPU")
    return DTYPES[name]


def load_pipeline(model: Path | None = None, torch_dtype: torch.dtype = torch.float32, device: str = "cpu",
                  mi_layers: LayerSpec = None, allow_pickle: bool = False, lora: Path | None = None,
                  lora_scale: float = 1.0, quiet: bool = False) -> MIDIPipeline:
    """``model`` (a pipeline folder; ``None`` = the embedded model) with its sampling defaults,
    on ``device`` in ``torch_dtype``; ``quiet`` hides its progress bars."""
    if model is None:
        from ..embedded import load_embedded_pipeline

        pipe = load_embedded_pipeline(torch_dtype=torch_dtype, device=device, mi_layers=mi_layers)
    else:
        pipe = MIDIPipeline.from_pretrained(model, torch_dtype=torch_dtype, device=device, mi_layers=mi_layers,
                                            allow_pickle=allow_pickle)
    if lora is not None:
        pipe.load_lora_weights(lora, scale=lora_scale)
        pipe.transformer.to(device=device, dtype=torch_dtype)
    pipe.set_progress_bar_config(disable=quiet, leave=False)
    return pipe
