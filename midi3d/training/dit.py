"""Diffusion transformer training: rectified flow over the latent sets of all instances of a scene.

Per step: a batch of scenes (all their instances, consecutive), one timestep per scene shared
by its instances (σ = sigmoid(N(0, 1)), the logit-normal density), x_σ = (1 − σ)·x₀ + σ·ε,
target v = x₀ − ε (the direction the sampler integrates), uniform loss weights, image
conditions dropped per scene (zeroed, as the sampler's unconditional branch) for CFG. With
probability ``mixed_probability`` the step is instead a batch of single objects, each its own
scene, so multi-instance attention is off (MIDI's mixed training). Latents of the training
objects are encoded once with the frozen VAE and cached. With ``box_loss_weight`` > 0 a
training-only head adds an L1 layout loss: each instance's 3D box regressed from its conditions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.checkpoint import save_tensors_atomic
from ..models.image_encoders import dino_channels, encode_clip, encode_dino, normalised_pixels
from ..models.layout_tokens import mask_boxes
from .cache import TrainingCache
from .config import DiTTrainConfig

AVERAGE_INSTANCES = 6


@torch.no_grad()
def encode_latents(vae, surface: torch.Tensor, num_tokens: int, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std ``[O, T, C]`` of every cached object (eval mode, subset seed 0)."""
    vae.eval()
    means, stds = [], []
    for start in range(0, len(surface), chunk):
        posterior = vae.encode(surface[start : start + chunk].to(vae.device, vae.dtype), num_tokens=num_tokens,
                               seed=0).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def cached_latents(vae, cache: TrainingCache, num_tokens: int, out_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode once; reuse ``latents-<digest>.safetensors`` when the VAE weights are the same."""
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    digest.update(json.dumps([num_tokens, len(cache.surface), cache.rooms[:3]]).encode())
    path = out_dir / f"latents-{digest.hexdigest()[:12]}.safetensors"
    if path.is_file():
        data = load_file(str(path))
        return data["mean"], data["std"]
    mean, std = encode_latents(vae, cache.surface, num_tokens)
    save_tensors_atomic(path, {"mean": mean, "std": std})
    return mean, std


@torch.no_grad()
def rescale_latent_space(vae, scale: float) -> None:
    """Reparametrise the VAE so that its latents are divided by ``scale``, exactly.

    The encoder's mean rows are divided by ``scale`` (log-variance shifted by ``-2 ln scale``) and
    the decoder's ``post_quant`` weight multiplied by it: decoded shapes do not change, the files
    keep the official layout, and the diffusion model sees latents of about unit spread. Only the
    shape channels are rescaled (the box channels of an object-frame VAE are not the encoder's).
    """
    channels = vae.shape_channels  # an object-frame VAE's box channels keep their box_scale
    vae.quant.weight[:channels] /= scale
    vae.quant.bias[:channels] /= scale
    vae.quant.bias[channels:] -= 2.0 * float(np.log(scale))
    vae.post_quant.weight *= scale


def object_boxes(surface: torch.Tensor) -> torch.Tensor:
    """Axis-aligned box of every cached object as ``[O, 6]``: centre xyz, then size xyz (scene frame)."""
    points = surface[..., :3]
    low, high = points.min(dim=1).values, points.max(dim=1).values
    return torch.cat([(low + high) / 2, high - low], dim=1)


class LayoutHead(nn.Module):
    """Training-only head: an instance's 3D box from its image conditions (never shipped).

    Reads the DINOv2 class token, the mean of its patch tokens and the CLIP embedding. Its L1 loss
    teaches the small from-scratch encoders where an instance lies in the scene long before the
    denoising loss alone would, so the transformer finds layout in the tokens it attends to.
    """

    def __init__(self, clip_dim: int, dino_dim: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(clip_dim + 2 * dino_dim, hidden), nn.GELU(), nn.Linear(hidden, 6))

    def forward(self, cond_1: torch.Tensor, cond_2: torch.Tensor) -> torch.Tensor:
        features = torch.cat([cond_1[:, 0], cond_2[:, 0], cond_2[:, 1:].mean(dim=1)], dim=1)
        return self.net(features.float())


class DiTLoss(nn.Module):
    def __init__(self, transformer, clip, dino, layout_head: LayoutHead | None = None, box_loss_weight: float = 0.0):
        super().__init__()
        self.transformer, self.clip, self.dino = transformer, clip, dino
        self.layout_head, self.box_loss_weight = layout_head, box_loss_weight
        self.channel_weights: torch.Tensor | None = None  # [C] flow-loss weight per latent channel

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        cond_1 = encode_clip(self.clip, batch["clip_pixels"])
        cond_2 = encode_dino(self.dino, batch["dino_pixels"])
        logs = {"single": torch.tensor(float(batch["single"]))}
        box_loss = None
        if self.layout_head is not None:
            box_loss = F.l1_loss(self.layout_head(cond_1, cond_2), batch["boxes"])
            logs["box"] = box_loss.detach()
        keep = batch["keep"][:, None, None]
        cond_1, cond_2 = cond_1 * keep.to(cond_1.dtype), cond_2 * keep.to(cond_2.dtype)
        x0, noise, sigma = batch["x0"], batch["noise"], batch["sigma"]
        noisy = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
        layout = batch.get("layout")
        if layout is not None:  # dropped with the condition, as the unconditional branch at inference
            layout = layout * keep[:, 0]
        velocity = self.transformer(noisy, sigma * 1000, cond_1.to(self.transformer.dtype),
                                    cond_2.to(self.transformer.dtype),
                                    attention_kwargs={"num_instances": batch["counts"]}, layout=layout).sample
        errors = (velocity.float() - (x0 - noise).float()).pow(2)
        if self.channel_weights is None:
            loss = errors.mean()
        else:  # normalised so that equal weights give the plain mean
            weights = self.channel_weights.to(errors.device)
            loss = (errors * weights).mean() / weights.mean()
        logs["flow"] = loss.detach()
        if box_loss is not None:
            loss = loss + self.box_loss_weight * box_loss
        return loss, logs


class DiTTask:
    """Trains the transformer (and the image encoders when ``train_encoders``), or LoRA adapters."""

    log_columns = ["single", "flow"]

    def __init__(self, pipe, cache: TrainingCache, config: DiTTrainConfig, latents: tuple[torch.Tensor, torch.Tensor]):
        self.pipe, self.cache, self.config = pipe, cache, config
        self.latent_mean, self.latent_std = latents
        pipe.vae.requires_grad_(False)
        pipe.set_multi_instance_layers(config.mi_layers)
        if config.layout_tokens:
            pipe.transformer.enable_layout_tokens()  # zero output layer: training starts from the model as it is
        if config.lora is not None:
            from ..models.lora import add_lora

            pipe.transformer.requires_grad_(False)
            add_lora(pipe.transformer, config.lora)
        else:
            pipe.transformer.requires_grad_(True)
        if pipe.transformer.has_layout_tokens:
            pipe.transformer.layout_encoder.requires_grad_(config.layout_tokens or config.lora is None)
        for encoder in (pipe.image_encoder_1, pipe.image_encoder_2):
            encoder.requires_grad_(config.train_encoders and config.lora is None)
            encoder.train(config.train_encoders and config.lora is None)
        pipe.transformer.gradient_checkpointing = config.gradient_checkpointing
        head = None
        self.boxes = None
        self.layouts = None  # per cached instance, for the layout tokens: their masks never change
        if pipe.transformer.has_layout_tokens:
            self.layouts = mask_boxes(cache.instance_masks)
        if config.box_loss_weight > 0:  # the config checked that the encoders train
            self.boxes = object_boxes(cache.surface)
            with torch.random.fork_rng(devices=[]):  # a seeded head, global RNG left as it was
                torch.manual_seed(config.seed)
                head = LayoutHead(pipe.image_encoder_1.config.projection_dim,
                                  pipe.image_encoder_2.config.hidden_size)
            self.log_columns = [*self.log_columns, "box"]
        self.module = DiTLoss(pipe.transformer, pipe.image_encoder_1, pipe.image_encoder_2, head,
                              config.box_loss_weight)
        if config.box_channel_weight != 1.0:
            if not pipe.vae.config.get("object_frame"):
                raise ValueError("box_channel_weight: the VAE is scene-frame, its latents have no box channels")
            weights = torch.ones(pipe.vae.config.latent_channels)
            weights[pipe.vae.shape_channels:] = config.box_channel_weight
            self.module.channel_weights = weights
        self.counts = [len(cache.scene_instances(s)) for s in range(cache.num_scenes)]
        self.instance_scene = torch.repeat_interleave(torch.arange(cache.num_scenes), torch.tensor(self.counts))

    def _instances(self, rng: np.random.Generator) -> tuple[torch.Tensor, list[int], bool]:
        config = self.config
        if rng.uniform() < config.mixed_probability:
            count = config.single_batch_instances or config.batch_size * AVERAGE_INSTANCES
            picks = rng.choice(len(self.instance_scene), min(count, len(self.instance_scene)), replace=False)
            return torch.from_numpy(np.sort(picks)), [1] * len(picks), True
        scenes = rng.choice(self.cache.num_scenes, min(config.batch_size, self.cache.num_scenes), replace=False)
        rows = [torch.arange(*self.cache.scene_offsets[s : s + 2].tolist()) for s in scenes]
        return torch.cat(rows), [len(r) for r in rows], False

    def batch(self, step: int, rank: int, world: int, device: torch.device) -> dict:
        rng = np.random.default_rng([self.config.seed, step, rank])
        rows, counts, single = self._instances(rng)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        objects = self.cache.instance_object[rows]
        mean, std = self.latent_mean[objects], self.latent_std[objects]
        x0 = mean + std * torch.randn(mean.shape, generator=generator)
        noise = torch.randn(mean.shape, generator=generator)
        per_scene = torch.tensor(counts)
        sigma = torch.sigmoid(torch.randn(len(counts), generator=generator)).repeat_interleave(per_scene)
        keep = (torch.rand(len(counts), generator=generator) >= self.config.condition_drop).float()
        clip, dino = self.encoder_pixels(rows)
        layout = {"layout": self.layouts[rows].to(device)} if self.layouts is not None else {}
        return {**layout, "clip_pixels": clip.to(device), "dino_pixels": dino.to(device),
                "x0": x0.to(device), "noise": noise.to(device), "sigma": sigma.to(device),
                "keep": keep.repeat_interleave(per_scene).to(device), "counts": counts, "single": single,
                **({"boxes": self.boxes[objects].to(device)} if self.boxes is not None else {})}

    def encoder_pixels(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP ``[I, 3, h1, w1]`` and DINOv2 ``[I, 7, h2, w2]`` inputs of cached instances ``rows``,
        normalised by the pipeline's own processors exactly as at inference."""
        clip = normalised_pixels(self.pipe.feature_extractor_1, self.cache.clip_pixels[rows])
        dino = dino_channels(self.pipe.feature_extractor_2, self.cache.instance_pixels[rows],
                             self.cache.scene_pixels[self.instance_scene[rows]],
                             self.cache.instance_masks[rows][:, None])
        return clip, dino

    def write_model(self, folder: Path) -> None:
        if self.config.lora is not None:
            from ..models.lora import save_lora

            save_lora(self.pipe.transformer, folder / "adapter")
            return
        modules = (self.pipe.transformer, self.pipe.image_encoder_1, self.pipe.image_encoder_2)
        states = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            self.pipe.save_pretrained(folder / "pipeline")
        finally:
            for m, state in zip(modules, states):
                m.train(state)
