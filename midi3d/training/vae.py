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


def far_queries(surfaces: np.ndarray, count: int, margin: float, rng: np.random.Generator,
                box: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points per object uniform in ``[-box, box]^3`` outside the object's bounding box
    (of its surface samples ``[B, M, 3]``) grown by ``margin``, and their distance to that box:
    ``([B, count, 3], [B, count])`` float32.

    The distance to an object's box is a lower bound of the distance to the object, so these
    labels need no mesh: the sign is exact, and so is any SDF value truncated below ``margin``.
    They supervise the empty room far from each object, which the cached queries (most of them
    near some surface) leave nearly unsupervised. An object whose grown box leaves no room gets
    its valid draws repeated; one with none at all is an error (its box fills the scene).
    """
    low, high = surfaces.min(1), surfaces.max(1)  # [B, 3]
    points, distances = [], []
    for lo, hi in zip(low, high):
        kept = np.empty((0, 3), np.float32)
        for _ in range(8):  # rejection sampling; 8 rounds of 4x cover boxes up to ~97 % of the scene
            draw = rng.uniform(-box, box, size=(4 * count, 3)).astype(np.float32)
            outside = ((draw < lo - margin) | (draw > hi + margin)).any(1)
            kept = np.concatenate([kept, draw[outside]])
            if len(kept) >= count:
                break
        if not len(kept):
            raise ValueError(f"far_queries: an object's box grown by {margin} fills the scene box; "
                             "lower far_margin")
        kept = kept[np.arange(count) % len(kept)]
        points.append(kept)
        distances.append(np.linalg.norm(np.maximum(np.maximum(lo - kept, kept - hi), 0.0), axis=1))
    return np.stack(points), np.stack(distances).astype(np.float32)


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
        with torch.no_grad():  # on the cached queries only, comparable with runs without far points
            cached = slice(0, predicted.shape[1] - batch.get("far_count", 0))
            sign_accuracy = ((predicted[:, cached] <= 0) == (sdf[:, cached] <= 0)).float().mean()
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
        sdf = torch.gather(self.cache.sdf[objects], 1, picks)
        surface = self.cache.surface[objects]
        far_count = self.config.far_points
        if far_count:
            far, far_sdf = far_queries(surface[..., :3].numpy(), far_count, self.config.far_margin, rng)
            queries = torch.cat([queries, torch.from_numpy(far)], 1)
            sdf = torch.cat([sdf, torch.from_numpy(far_sdf)], 1)
        return {"surface": surface.to(device), "queries": queries.to(device), "sdf": sdf.to(device),
                "subset_seed": int(rng.integers(2**31)), "far_count": far_count}

    def write_model(self, folder: Path) -> None:
        self.pipe.vae.eval()
        try:
            self.pipe.save_pretrained(folder / "pipeline")
        finally:
            self.pipe.vae.train()
