"""Training configurations: dataclasses filled from ``configs/train/*.yaml`` (+ ``--set`` overrides)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

from ..io.configfile import read_yaml


@dataclass
class TrainConfig:
    """Settings shared by every trainer."""

    kind: str = ""
    seed: int = 0
    model: str = "midi3d-tiny"          # spec (built-in name or YAML path) to start from without --init
    max_steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 100
    lr_schedule: str = "constant"       # "constant" or "cosine" (from decay_start down to 5% at max_steps)
    decay_start: int = 0
    grad_clip: float = 1.0
    mixed_precision: str = "no"         # "no" or "bf16" (accelerate)
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    # dataset reading
    min_area_fraction: float = 0.001    # instances at or below this share of the image are ignored
    max_instances: int = 10
    cache_jobs: int = 0                 # processes for cache building (0 = one per core)
    surface_points: int = 2048          # cached encoder input points per object
    near_points: int = 2048             # cached near-surface SDF queries per object
    uniform_points: int = 1024          # cached uniform SDF queries per object
    around_points: int = 0              # cached SDF queries in the object's box grown by around_margin
    around_margin: float = 0.3

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then constant or a
        cosine decay that starts at ``decay_start`` and ends at 5% of ``lr`` at ``max_steps``."""
        lr = self.lr * min(1.0, (step + 1) / max(1, self.warmup_steps))
        if self.lr_schedule == "cosine" and step >= self.decay_start:
            progress = (step - self.decay_start) / max(1, self.max_steps - self.decay_start)
            lr *= 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        elif self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        return lr


@dataclass
class VAETrainConfig(TrainConfig):
    """Shape VAE: surface points → latent set → truncated SDF, with a KL term."""

    kind: str = "vae"
    latent_tokens: int = 64
    query_points: int = 2048            # queries drawn per object per step
    sdf_truncation: float = 0.05        # target = clamp(sdf - offset, ±t) / t
    sdf_offset: float = 0.0             # > 0: learn the surface dilated by this much (thin parts stay visible)
    kl_weight: float = 1e-3
    latent_noise: float = 0.0           # > 0: decode latent + N(0, latent_noise²): a decoder robust to
                                        # the small errors of generated latents
    freeze_encoder: bool = False        # decoder-only fine-tuning (the latent space, hence a trained
                                        # diffusion model, stays valid)


@dataclass
class LoRASettings:
    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])


@dataclass
class DiTTrainConfig(TrainConfig):
    """Diffusion transformer (and, when training from scratch, the image encoders)."""

    kind: str = "dit"
    mi_layers: list[int] | str | None = None   # None = model default, "all", or explicit indices ([] = off)
    mixed_probability: float = 0.0             # chance that a step is a batch of single objects, MI off
    condition_drop: float = 0.1                # per scene, for classifier-free guidance
    train_encoders: bool = True                # small models train their CLIP/DINOv2 from scratch
    ema_decay: float = 0.999
    latent_tokens: int | None = None           # None = transformer width (official rule)
    normalise_latents: bool = False            # rescale the (frozen) VAE so cached latent means have std 1
    single_batch_instances: int = 0            # instances in a single-object batch (0 = batch_size × 6)
    lora: LoRASettings | None = None           # set: LoRA fine-tuning of the transformer only
    box_loss_weight: float = 0.0               # > 0: auxiliary layout loss on the image encoders (a
                                               # training-only head regresses each instance's 3D box)

    def __post_init__(self):
        if isinstance(self.lora, dict):
            self.lora = LoRASettings(**self.lora)


CONFIG_CLASSES = {"vae": VAETrainConfig, "dit": DiTTrainConfig}


def _coerce(cls, data: dict, source: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown} for a {data.get('kind', '?')} config")
    if "betas" in data:
        data["betas"] = tuple(float(b) for b in data["betas"])
    types = {f.name: str(f.type) for f in fields(cls)}
    for key, value in data.items():
        kind = types[key]
        try:  # YAML reads 1e-5 (no dot) as a string; plain numbers must be numbers
            if kind == "float" and not isinstance(value, bool):
                data[key] = float(value)
            elif kind == "int" and not isinstance(value, bool):
                if float(value) != int(float(value)):
                    raise ValueError
                data[key] = int(float(value))
        except (TypeError, ValueError):
            raise ValueError(f"{source}: {key} must be a{'n integer' if kind == 'int' else ' number'}, "
                             f"got {value!r}") from None
    return cls(**data)


def load_train_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config (a path, or the name of a built-in one) and apply ``key=value`` overrides
    (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        builtin = resources.files("midi3d.configs").joinpath("train", f"{path.name.removesuffix('.yaml')}.yaml")
        if not builtin.is_file():
            raise ValueError(f"{path}: no such config file (and no built-in train config of that name)")
        path = Path(str(builtin))
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value")
        data[key.strip()] = read_yaml(f"--set {item}", value)
    kind = data.get("kind")
    if kind not in CONFIG_CLASSES:
        raise ValueError(f"{path}: 'kind' must be one of {sorted(CONFIG_CLASSES)}, got {kind!r}")
    return _coerce(CONFIG_CLASSES[kind], data, str(path))


def config_dict(config: TrainConfig) -> dict:
    return asdict(config)
