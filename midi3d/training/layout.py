"""Instance layout model training: each instance's 3D box from the 2D masks of its scene.

Per step: a batch of scenes (all their cached instances), each instance read as its mask features
(:func:`midi3d.models.layout_model.mask_features`, computed once), the target its object's box
from the cached surface samples (centre, log half-size; L1). With ``mirror`` half of the scenes
are mirrored about x, in the masks and in the boxes. Nothing else of the pipeline trains; the
trained model is saved into the pipeline folder as its ``layout_model``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.autoencoders.shape_vae import ShapeVAE
from ..models.layout_model import InstanceLayoutModel, mirror_features
from .cache import TrainingCache
from .config import LayoutTrainConfig

FEATURE_CHUNK = 1024  # instances per feature pass (the masks are read at the DINOv2 size)


def layout_targets(surface: torch.Tensor, chunk: int = FEATURE_CHUNK) -> torch.Tensor:
    """Centre and log half-size ``[O, 6]`` of every cached object's box (half-sizes floored as
    the object-frame VAE floors them)."""
    boxes = torch.cat([ShapeVAE.surface_box(surface[start : start + chunk]) for start in range(0, len(surface), chunk)])
    return torch.cat([boxes[:, :3], boxes[:, 3:].log()], dim=1)


class LayoutLoss(nn.Module):
    def __init__(self, model: InstanceLayoutModel):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        predicted = self.model.raw(batch["features"], batch["counts"]).float()
        errors = F.l1_loss(predicted, batch["targets"], reduction="none")
        logs = {"centre": errors[:, :3].mean().detach(), "log_size": errors[:, 3:].mean().detach()}
        return errors.mean(), logs


class LayoutTask:
    """Trains the pipeline's ``layout_model`` (a new one, or the one ``--init`` has)."""

    log_columns = ["centre", "log_size"]

    def __init__(self, pipe, cache: TrainingCache, config: LayoutTrainConfig):
        if not pipe.vae.config.get("object_frame"):
            raise ValueError("layout training: the pipeline's VAE is scene-frame; a layout model places the "
                             "instances of an object-frame VAE (pass --init an object-frame pipeline)")
        self.pipe, self.cache, self.config = pipe, cache, config
        for name in ("transformer", "vae", "image_encoder_1", "image_encoder_2"):
            getattr(pipe, name).requires_grad_(False)
        model = pipe.layout_model
        if model is None:
            with torch.random.fork_rng(devices=[]):  # a seeded model, global RNG left as it was
                torch.manual_seed(config.seed)
                model = InstanceLayoutModel(grid=config.grid, width=config.width, num_layers=config.num_layers,
                                            num_attention_heads=config.num_attention_heads, dropout=config.dropout,
                                            min_half_size=pipe.vae.config.box_min_half_size)
            pipe.register_modules(layout_model=model)
        model.requires_grad_(True)
        masks = cache.instance_masks
        self.features = torch.cat([model.features(masks[start : start + FEATURE_CHUNK])
                                   for start in range(0, len(masks), FEATURE_CHUNK)])
        self.targets = layout_targets(cache.surface)[cache.instance_object]
        self.module = LayoutLoss(model)

    def batch(self, step: int, rank: int, world: int, device: torch.device) -> dict:
        rng = np.random.default_rng([self.config.seed, step, rank])
        scenes = rng.choice(self.cache.num_scenes, min(self.config.batch_size, self.cache.num_scenes), replace=False)
        rows = [torch.arange(*self.cache.scene_offsets[s : s + 2].tolist()) for s in scenes]
        counts = [len(r) for r in rows]
        index = torch.cat(rows)
        features, targets = self.features[index].clone(), self.targets[index].clone()
        if self.config.mirror:
            flip = torch.from_numpy(rng.uniform(size=len(scenes)) < 0.5).repeat_interleave(torch.tensor(counts))
            features[flip] = mirror_features(features[flip], self.module.model.config.grid)
            targets[flip, 0] = -targets[flip, 0]
        return {"features": features.to(device), "targets": targets.to(device), "counts": counts}

    def write_model(self, folder: Path) -> None:
        model = self.module.model
        state = model.training
        model.eval()
        try:
            self.pipe.save_pretrained(folder / "pipeline")
        finally:
            model.train(state)
