"""Strict loading and saving of component folders (diffusers / transformers layout).

Components are dispatched on the class *name* recorded in ``model_index.json`` through a
fixed registry; module paths in the file are ignored and nothing named by a file is ever
imported. Weights load from safetensors; pickled files are refused unless the caller opts
in, and even then go through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..io.files import output_error, temporary_sibling, write_atomic


class CheckpointError(ValueError):
    """A pipeline or component folder that cannot be loaded; the message names the file."""


LEGACY_IGNORED_SUFFIXES = ("position_ids",)  # non-persistent buffers older transformers saved


def read_json(path: Path) -> dict:
    """Read a JSON object, raising :class:`CheckpointError` naming ``path`` on any problem."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def weight_files(folder: Path, stem: str, allow_pickle: bool) -> list[Path]:
    """The weight files of a component: one safetensors file, the shards of an index, or
    (only with ``allow_pickle``) a pickled file."""
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        if not shards:
            raise CheckpointError(f"{index}: empty weight_map")
        return [folder / name for name in shards]
    pickles = [folder / f"{stem}.bin", folder / f"{stem}.ckpt", folder / "pytorch_model.bin"]
    found = [p for p in pickles if p.is_file()]
    if found and not allow_pickle:
        raise CheckpointError(
            f"{found[0]}: pickled weights are refused by default (they can run code); convert them to "
            "safetensors or pass --trust-pickle to load them with torch.load(weights_only=True)"
        )
    if found:
        return found[:1]
    raise CheckpointError(f"{folder}: no weights file ({stem}.safetensors)")


def read_state_dict(folder: Path, stem: str, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a component folder's weights file(s)."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder, stem, allow_pickle):
        if not path.is_file():
            raise CheckpointError(f"{path}: shard listed in the index is missing")
        try:
            if path.suffix == ".safetensors":
                state.update(load_file(str(path)))
            else:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
                state.update(loaded.get("state_dict", loaded))
        except CheckpointError:
            raise
        except Exception as err:  # safetensors / torch raise several unrelated types
            raise CheckpointError(f"{path}: unreadable weights ({type(err).__name__}: {err})") from None
    return state


def _short_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" … (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(module: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected or mis-shaped keys."""
    expected = module.state_dict()
    state_keys = {k for k in state if not k.endswith(LEGACY_IGNORED_SUFFIXES) or k in expected}
    missing = sorted(set(expected) - state_keys)
    unexpected = sorted(state_keys - set(expected))
    mismatched = sorted(k for k in set(expected) & state_keys if tuple(expected[k].shape) != tuple(state[k].shape))
    problems = []
    if missing:
        problems.append(f"missing keys: {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short_list(unexpected)}")
    if mismatched:
        detail = [f"{k} {tuple(state[k].shape)} vs expected {tuple(expected[k].shape)}" for k in mismatched]
        problems.append(f"shape mismatch: {_short_list(detail)}")
    if problems:
        raise CheckpointError(f"{source}: weights do not match the config ({'; '.join(problems)})")
    nonfinite = [k for k in state_keys if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all())]
    if nonfinite:
        raise CheckpointError(f"{source}: non-finite values (NaN/inf) in {_short_list(sorted(nonfinite))}")


def load_weights_strict(module: nn.Module, folder: Path, stem: str, dtype: torch.dtype,
                        allow_pickle: bool = False) -> None:
    """Load a component's weights into ``module`` with no missing or unexpected key."""
    state = read_state_dict(folder, stem, allow_pickle)
    check_state_dict(module, state, folder / f"{stem}.safetensors")
    expected = module.state_dict()
    state = {k: v.to(dtype if v.is_floating_point() else v.dtype) for k, v in state.items() if k in expected}
    module.load_state_dict(state, strict=True, assign=True)


def save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file through a temporary sibling and a rename; an ``OSError`` becomes
    an :class:`~midi3d.io.errors.OutputError` naming ``path``."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise output_error(path, err) from None
        raise


def save_weights(module: nn.Module, folder: Path, stem: str) -> None:
    """Save a module's state dict as one safetensors file (atomically)."""
    save_tensors_atomic(folder / f"{stem}.safetensors", module.state_dict(), metadata={"format": "pt"})
