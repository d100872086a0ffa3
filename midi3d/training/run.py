"""Entry point of ``midi3d train``: pipeline, cache, task, loop."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import yaml

from .config import DiTTrainConfig, LayoutTrainConfig, TrainConfig, VAETrainConfig, config_dict

logger = logging.getLogger(__name__)


def base_pipeline(config: TrainConfig, init: Path | None, allow_pickle: bool = False):
    """The starting pipeline: a folder (``--init``) or the built-in spec with fresh weights."""
    from ..models.factory import PipelineSpec, build_pipeline
    from ..pipelines.pipeline_midi import MIDIPipeline

    if init is not None:
        return MIDIPipeline.from_pretrained(init, allow_pickle=allow_pickle)
    spec = (PipelineSpec.from_yaml(config.model) if config.model.endswith((".yaml", ".yml"))
            else PipelineSpec.builtin(config.model))
    spec = dataclasses.replace(spec, standin_occupancy=None, seed=config.seed)
    pipe = build_pipeline(spec)
    # Start the posterior nearly deterministic (std ~ 0.05): with unit noise the decoder cannot
    # read where the tokens are and learns a blurred average first; the KL term widens it as it can.
    import torch

    with torch.no_grad():
        pipe.vae.quant.bias[pipe.vae.shape_channels :] = -6.0
    return pipe


TRAIN_DEVICES = ("auto", "cpu", "cuda")


def use_cpu(device: str) -> bool:
    """Whether a run on ``device`` (``auto``: CUDA when there is one, ``cpu``, ``cuda``) runs on CPUs."""
    import torch

    if device not in TRAIN_DEVICES:
        raise ValueError(f"--device {device}: expected one of {', '.join(TRAIN_DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available to torch on this machine")
    return device == "cpu" or not torch.cuda.is_available()


def run_training(config: TrainConfig, data: Path, out: Path, init: Path | None = None, cache_dir: Path | None = None,
                 quiet: bool = False, allow_pickle: bool = False, device: str = "auto") -> dict:
    """Train (or resume) into ``out`` on ``device`` (``auto``, ``cpu`` or ``cuda``; several GPUs
    through ``accelerate launch``); the final model lands in ``out/final``."""
    import torch
    from accelerate import Accelerator, DistributedDataParallelKwargs

    from .cache import CacheSettings, build_cache, processor_configs
    from .loop import train

    if isinstance(config, DiTTrainConfig) and config.lora is not None and init is None:
        raise ValueError("LoRA fine-tuning needs a pretrained pipeline: pass --init FOLDER")
    if init is not None and not (Path(init) / "model_index.json").is_file():
        raise ValueError(f"{init}: not a pipeline folder (no model_index.json)")
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=use_cpu(device),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        (out / "config.yaml").write_text(yaml.safe_dump(config_dict(config), sort_keys=False))
    torch.manual_seed(config.seed)
    pipe = base_pipeline(config, init, allow_pickle).to(accelerator.device)
    # the trained folder records what it should sample with (model_index.json)
    levels = None if config.sample_fallback_levels is None else tuple(config.sample_fallback_levels)
    pipe.sampling_defaults = pipe.sampling_defaults.resolve(config.sample_steps, config.sample_guidance,
                                                            config.sample_resolution, levels)
    settings = CacheSettings(config.surface_points, config.near_points, config.uniform_points,
                             config.min_area_fraction, config.max_instances, config.seed,
                             config.around_points, config.around_margin)
    with accelerator.main_process_first():
        cache = build_cache(data, cache_dir or out / "cache", settings, processor_configs(pipe),
                            jobs=config.cache_jobs)
    if accelerator.is_main_process:
        logger.info("training cache: %d scenes, %d objects", cache.num_scenes, len(cache.surface))
    if isinstance(config, VAETrainConfig):
        from .vae import VAETask

        task = VAETask(pipe, cache, config)
        ema_decay = 0.0
    elif isinstance(config, LayoutTrainConfig):
        from .layout import LayoutTask

        task = LayoutTask(pipe, cache, config)
        ema_decay = 0.0
    else:
        from .dit import DiTTask, cached_latents

        tokens = config.latent_tokens or pipe.transformer.config.width
        with accelerator.main_process_first():
            latents = cached_latents(pipe.vae, cache, tokens, cache_dir or out / "cache")
        if config.normalise_latents:
            from .dit import rescale_latent_space

            shape = pipe.vae.shape_channels  # (an object-frame VAE's box channels are not rescaled)
            scale = float(latents[0][..., :shape].std())
            rescale_latent_space(pipe.vae, scale)
            factor = torch.ones(latents[0].shape[-1])
            factor[:shape] = 1.0 / scale
            latents = (latents[0] * factor, latents[1] * factor)
            if accelerator.is_main_process:
                logger.info("latent space rescaled by 1/%.4f (cached latent means now have std 1)", scale)
        task = DiTTask(pipe, cache, config, latents)
        ema_decay = config.ema_decay
    return train(task, config, out, ema_decay=ema_decay, quiet=quiet, accelerator=accelerator)
