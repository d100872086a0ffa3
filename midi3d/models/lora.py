"""LoRA adapters on the diffusion transformer, through diffusers' PEFT integration
(``PeftAdapterMixin``: ``add_adapter``, ``set_adapters``, ``unload_lora``).

An adapter folder holds ``adapter_config.json`` (peft's ``LoraConfig``) and
``adapter_model.safetensors`` (peft's state-dict key names), the layout peft and diffusers use.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..io.files import write_atomic, write_folder_atomic
from .checkpoint import CheckpointError, load_weights_strict, read_json, save_weights

ADAPTER_NAME = "default"
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
LAYOUT_STEM = "layout_tokens"  # <stem>.safetensors: the layout-token encoder trained with the adapter, if any
CONFIG_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "init_lora_weights")


def _lora_config(settings):
    from peft import LoraConfig

    if hasattr(settings, "model_dump"):
        settings = settings.model_dump()
    return LoraConfig(r=int(settings.get("rank", settings.get("r", 8))),
                      lora_alpha=float(settings.get("alpha", settings.get("lora_alpha", 8))),
                      lora_dropout=float(settings.get("dropout", settings.get("lora_dropout", 0.0))),
                      target_modules=list(settings.get("target_modules", ["to_q", "to_k", "to_v", "to_out.0"])))


def add_lora(transformer: torch.nn.Module, settings, adapter_name: str = ADAPTER_NAME) -> None:
    """Add a fresh adapter (``B = 0``: the output is unchanged) and make only adapters trainable."""
    transformer.add_adapter(_lora_config(settings), adapter_name=adapter_name)
    for name, param in transformer.named_parameters():
        param.requires_grad_("lora_" in name)


def save_lora(transformer: torch.nn.Module, folder: str | Path, adapter_name: str = ADAPTER_NAME) -> None:
    """Write the adapter folder atomically."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    config = transformer.peft_config[adapter_name].to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items() if k in CONFIG_KEYS}
    state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(transformer, adapter_name=adapter_name).items()}
    encoder = getattr(transformer, "layout_encoder", None)

    def fill(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS_FILE))
        if encoder is not None:
            save_weights(encoder, tmp, LAYOUT_STEM)
        write_atomic(tmp / CONFIG_FILE, (json.dumps(config, indent=1, sort_keys=True) + "\n").encode())

    write_folder_atomic(folder, fill)


def load_lora(transformer: torch.nn.Module, folder: str | Path, adapter_name: str = ADAPTER_NAME,
              scale: float = 1.0) -> None:
    """Add the adapter in ``folder`` to ``transformer`` as ``adapter_name`` and activate it at
    ``scale`` (strict: every adapter tensor must fit). The transformer stays frozen."""
    from peft import set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config = read_json(folder / CONFIG_FILE)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: adapter weights not found (only safetensors adapters are read)")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({err})") from err
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{weights}: non-finite values in {bad[0]}")
    if adapter_name in (getattr(transformer, "peft_config", None) or {}):
        raise CheckpointError(f"{folder}: an adapter named {adapter_name!r} is already loaded")
    before = {n for n, _ in transformer.named_parameters() if "lora_" in n}
    transformer.add_adapter(_lora_config(config), adapter_name=adapter_name)
    try:
        result = set_peft_model_state_dict(transformer, state, adapter_name=adapter_name)
    except RuntimeError as err:
        raise CheckpointError(f"{weights}: adapter does not fit this transformer ({str(err).splitlines()[0]})") from err
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise CheckpointError(f"{weights}: adapter keys not in this transformer, e.g. {unexpected[0]}")
    added = {n for n, _ in transformer.named_parameters() if "lora_" in n} - before
    if len(state) != len(added):
        raise CheckpointError(f"{weights}: {len(state)} adapter tensors for {len(added)} adapter parameters")
    transformer.set_adapters([adapter_name], [scale])
    if (folder / f"{LAYOUT_STEM}.safetensors").is_file():  # added if the transformer has none; strict
        transformer.enable_layout_tokens()
        load_weights_strict(transformer.layout_encoder, folder, LAYOUT_STEM, transformer.proj_in.weight.dtype)
    transformer.requires_grad_(False)
