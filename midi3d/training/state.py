"""Resumable training state in safetensors + JSON (no pickles), and the metrics log.

A checkpoint folder ``<out>/checkpoints/step-XXXXXXX/`` holds ``pipeline/`` (a pipeline folder in
the official layout, or ``adapter/`` for LoRA) and ``state/``: the trainable weights as trained,
the optimiser moments, the EMA weights and ``state.json`` (step, config). ``<out>/latest.json``
names the newest complete checkpoint; it is replaced atomically after the folder is complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..io.files import write_atomic, write_folder_atomic
from ..models.checkpoint import CheckpointError

LATEST = "latest.json"


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's state as flat tensors ``state.<param>.<name>`` plus JSON-able groups."""
    state = optimizer.state_dict()
    tensors = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            tensors[f"state.{index}.{name}"] = torch.as_tensor(value).detach().clone().contiguous()
    return tensors, {"param_groups": state["param_groups"]}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(out_dir: Path, step: int, write_model, trainable: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, ema: dict[str, torch.Tensor] | None, config: dict,
                    keep: int) -> Path:
    """Write ``checkpoints/step-<step>`` completely, then point ``latest.json`` at it."""
    folder = out_dir / "checkpoints" / f"step-{step:07d}"

    def fill(tmp: Path) -> None:
        (tmp / "state").mkdir()
        write_model(tmp)
        save_file({k: v.detach().contiguous() for k, v in trainable.items()}, str(tmp / "state" / "trainable.safetensors"))
        tensors, meta = optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "state" / "optimizer.safetensors"))
        if ema is not None:
            save_file({k: v.detach().contiguous() for k, v in ema.items()}, str(tmp / "state" / "ema.safetensors"))
        (tmp / "state" / "state.json").write_text(json.dumps({"step": step, "config": config, "optimizer": meta},
                                                             indent=1, default=list) + "\n")

    write_folder_atomic(folder, fill)
    write_atomic(out_dir / LATEST, (json.dumps({"step": step, "folder": str(folder.relative_to(out_dir))}) + "\n").encode())
    older = sorted((out_dir / "checkpoints").glob("step-*"))[:-keep] if keep > 0 else []
    for stale in older:
        if stale != folder:
            shutil.rmtree(stale, ignore_errors=True)
    return folder


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint folder, or ``None``."""
    pointer = out_dir / LATEST
    if not pointer.is_file():
        return None
    try:
        folder = out_dir / json.loads(pointer.read_text())["folder"]
    except (json.JSONDecodeError, KeyError) as err:
        raise CheckpointError(f"{pointer}: unreadable ({err})") from err
    if not (folder / "state" / "state.json").is_file():
        raise CheckpointError(f"{pointer}: names {folder}, which is incomplete")
    return folder


def read_checkpoint(folder: Path) -> tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor], dict,
                                            dict[str, torch.Tensor] | None]:
    """``(step, trainable, optimizer tensors, optimizer meta, ema)`` of a checkpoint folder;
    an unreadable or damaged file is a :class:`CheckpointError` naming it."""
    from safetensors import SafetensorError

    state_dir = folder / "state"
    current = state_dir / "state.json"
    try:
        state = json.loads(current.read_text())
        step, meta = int(state["step"]), state["optimizer"]
        tensors = []
        for name in ("trainable", "optimizer", "ema"):
            current = state_dir / f"{name}.safetensors"
            tensors.append(load_file(str(current)) if name != "ema" or current.is_file() else None)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        raise CheckpointError(f"{current}: damaged checkpoint ({type(err).__name__}: {err}); remove "
                              f"{folder} to resume from an earlier one, or use another --out") from None
    return step, tensors[0], tensors[1], meta, tensors[2]


class MetricsLog:
    """``metrics.csv`` in the output folder; a resumed run drops rows past its checkpoint."""

    def __init__(self, path: Path, columns: list[str], resume_step: int = 0):
        self.path, self.columns = path, columns
        rows = path.read_text().splitlines() if path.is_file() else []
        kept = [line for line in rows[1:] if line and int(line.split(",")[0]) <= resume_step]
        write_atomic(path, ("\n".join([",".join(columns), *kept]) + "\n").encode())

    def append(self, values: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(",".join(_cell(values.get(c, "")) for c in self.columns) + "\n")
            handle.flush()


def _cell(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)  # full precision: resume checks compare rows
