"""Shape VAE training: surface points → latent set → truncated SDF (L1) or occupancy logits (BCE) at
query points, plus KL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cache import TrainingCache
from .config import VAETrainConfig


class VAELoss(nn.Module):
    """Wraps the VAE so that one ``forward(batch)`` is one loss (what DDP needs)."""

    def __init__(self, vae, config: VAETrainConfig):
        super().__init__()
        self.vae, self.config = vae, config

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        posterior = self.vae.encode(batch["surface"], num_tokens=self.config.latent_tokens,
                                    seed=batch["subset_seed"]).latent_dist
        latents = posterior.sample()
        if self.config.latent_noise > 0:
            latents = latents + self.config.latent_noise * torch.randn_like(latents)
        predicted = self.vae.decode(latents, batch["queries"]).sample[..., 0].float()
        sdf = batch["sdf"] - self.config.sdf_offset
        if self.config.loss == "bce":  # the decoder's value is minus the occupancy logit: inside <= 0
            recon = F.binary_cross_entropy_with_logits(-predicted, (sdf <= 0).float())
        else:
            recon = F.l1_loss(predicted, (sdf / self.config.sdf_truncation).clamp(-1.0, 1.0))
        kl = posterior.kl().mean().float()
        with torch.no_grad():
            sign_accuracy = ((predicted <= 0) == (sdf <= 0)).float().mean()
        return recon + self.config.kl_weight * kl, {"recon": recon.detach(), "kl": kl.detach(),
                                                    "sign_acc": sign_accuracy}


class VAETask:
    """Trains ``pipe.vae`` on the cached objects; writes the whole pipeline folder."""

    log_columns = ["recon", "kl", "sign_acc"]

    def __init__(self, pipe, cache: TrainingCache, config: VAETrainConfig):
        self.pipe, self.cache, self.config = pipe, cache, config
        for name in ("transformer", "image_encoder_1", "image_encoder_2"):
            getattr(pipe, name).requires_grad_(False)
        pipe.vae.requires_grad_(True)
        if config.freeze_encoder:
            pipe.vae.encoder.requires_grad_(False)
            pipe.vae.quant.requires_grad_(False)
        self.module = VAELoss(pipe.vae, config)

    def batch(self, step: int, rank: int, world: int, device: torch.device) -> dict:
        rng = np.random.default_rng([self.config.seed, step, rank])
        objects = torch.from_numpy(rng.choice(len(self.cache.surface), self.config.batch_size, replace=False))
        total = self.cache.queries.shape[1]
        picks = torch.from_numpy(np.stack([rng.choice(total, self.config.query_points, replace=False)
                                           for _ in range(len(objects))]))
        queries = torch.gather(self.cache.queries[objects], 1, picks[..., None].expand(-1, -1, 3))
        return {"surface": self.cache.surface[objects].to(device), "queries": queries.to(device),
                "sdf": torch.gather(self.cache.sdf[objects], 1, picks).to(device),
                "subset_seed": int(rng.integers(2**31))}

    def write_model(self, folder: Path) -> None:
        self.pipe.vae.eval()
        try:
            self.pipe.save_pretrained(folder / "pipeline")
        finally:
            self.pipe.vae.train()
