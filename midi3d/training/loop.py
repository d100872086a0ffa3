"""The training loop shared by every trainer, on accelerate.

A *task* owns the module (whose ``forward(batch)`` returns ``(loss, logs)``), builds the batch of
any step deterministically from ``(seed, step, rank)`` and writes the model folder. So a resumed
run draws exactly the batches and noise an uninterrupted run would have drawn, and nothing but
weights, optimiser moments and EMA weights needs saving.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..io.files import remove_stale_temporaries
from .config import TrainConfig, config_dict
from .state import MetricsLog, latest_checkpoint, load_optimizer, read_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)


class TrainTask(Protocol):
    module: nn.Module
    log_columns: list[str]

    def batch(self, step: int, rank: int, world: int, device: torch.device) -> dict: ...

    def write_model(self, folder: Path) -> None: ...


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of one step on one process."""
    return int(np.random.default_rng([seed, step, rank]).integers(2**62))


class EMA:
    """Exponential moving average of named parameters (decay warmed up as ``(1+s)/(10+s)``)."""

    def __init__(self, params: dict[str, nn.Parameter], decay: float, state: dict[str, torch.Tensor] | None = None):
        self.params, self.decay = params, decay
        self.shadow = {n: (state[n] if state is not None else p.detach()).clone().float() for n, p in params.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach().float(), 1.0 - decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange live and EMA weights (call twice to undo)."""
        for name, param in self.params.items():
            live = param.detach().clone()
            param.copy_(self.shadow[name].to(param.dtype))
            self.shadow[name].copy_(live.float())


def train(task: TrainTask, config: TrainConfig, out_dir: Path, ema_decay: float = 0.0, quiet: bool = False,
          accelerator=None) -> dict:
    """Run (or resume) ``task`` to ``config.max_steps``; returns ``{"step", "loss", "seconds"}``."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from tqdm.auto import tqdm

    if accelerator is None:
        accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available(),
                                  kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    out_dir = Path(out_dir)
    named = {n: p for n, p in task.module.named_parameters() if p.requires_grad}
    if not named:
        raise ValueError("nothing to train: no parameter requires gradients")
    optimizer = torch.optim.AdamW(list(named.values()), lr=config.lr, betas=tuple(config.betas),
                                  weight_decay=config.weight_decay)
    start, ema_state = 0, None
    if accelerator.is_main_process:  # staging folders of a run killed while saving (never under a final name)
        remove_stale_temporaries(out_dir / "checkpoints")
        remove_stale_temporaries(out_dir)
    accelerator.wait_for_everyone()
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is not None:
        start, trainable, opt_tensors, opt_meta, ema_state = read_checkpoint(checkpoint)
        missing, unexpected = set(named) - set(trainable), set(trainable) - set(named)
        wrong = [n for n in set(named) & set(trainable) if named[n].shape != trainable[n].shape]
        if missing or unexpected or wrong:
            raise ValueError(f"{checkpoint}: a checkpoint of another model or settings (missing "
                             f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}, other shapes "
                             f"{sorted(wrong)[:3]}); use another --out")
        with torch.no_grad():
            for name, param in named.items():
                param.copy_(trainable[name])
        load_optimizer(optimizer, opt_tensors, opt_meta)
        if accelerator.is_main_process:
            logger.info("resuming from %s (step %d)", checkpoint, start)
    ema = EMA(named, ema_decay, ema_state) if ema_decay > 0 else None
    module, optimizer = accelerator.prepare(task.module, optimizer)
    module.train()
    log = MetricsLog(out_dir / "metrics.csv", ["step", "loss", *task.log_columns, "lr", "seconds"],
                     resume_step=start) if accelerator.is_main_process else None
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        with open(out_dir / "train.log", "a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {config.kind}: steps {start}->{config.max_steps}, "
                         f"world {world}, device {accelerator.device}, threads {torch.get_num_threads()}"
                         f"{f', resumed from {checkpoint.name}' if checkpoint is not None else ''}\n")

    def write_model(folder: Path) -> None:
        """The task's model folder, with the EMA weights when there are any."""
        if ema is not None:
            ema.swap()
        try:
            task.write_model(folder)
        finally:
            if ema is not None:
                ema.swap()

    def save(step: int) -> None:
        if accelerator.is_main_process:
            save_checkpoint(out_dir, step, write_model, dict(named), optimizer,
                            ema.shadow if ema is not None else None, config_dict(config), config.keep_checkpoints)
        accelerator.wait_for_everyone()

    started, loss_value = time.perf_counter(), float("nan")
    bar = tqdm(total=config.max_steps, initial=start, disable=quiet or not accelerator.is_main_process,
               desc=f"train {config.kind}", dynamic_ncols=True)
    for step in range(start, config.max_steps):
        torch.manual_seed(step_seed(config.seed, step, rank))
        batch = task.batch(step, rank, world, accelerator.device)
        lr = config.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with accelerator.autocast():
            loss, logs = module(batch)
        accelerator.backward(loss)
        if config.grad_clip > 0:
            accelerator.clip_grad_norm_(list(named.values()), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(step)
        loss_value = accelerator.gather(loss.detach()[None]).float().mean().item()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        done = step + 1
        if done % config.log_every == 0 or done == config.max_steps:
            values = {k: accelerator.gather(torch.as_tensor(v, device=accelerator.device)[None]).float().mean().item()
                      for k, v in logs.items()}  # every rank takes part in the same gathers
            if log is not None:
                log.append({"step": done, "loss": loss_value, **values, "lr": lr,
                            "seconds": round(time.perf_counter() - started, 2)})
        if done % config.checkpoint_every == 0 or done == config.max_steps:
            save(done)
    bar.close()
    if accelerator.is_main_process:
        write_model(out_dir / "final")
    accelerator.wait_for_everyone()
    return {"step": config.max_steps, "loss": loss_value, "seconds": time.perf_counter() - started}
