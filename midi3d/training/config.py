"""Training configurations as validated, typed models (pydantic), filled from
``configs/train/*.yaml`` plus ``--set key=value`` overrides.

pydantic rather than OmegaConf structured configs: it is already installed (Gradio depends on
it), it checks ranges and enums as well as types, it refuses unknown keys in nested sections too,
and its errors carry the key's path, which becomes the one-line message. Every problem is found
before any work starts.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..io.configfile import read_yaml, validation_message
from ..models.layer_spec import check_layer_spec

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    # unknown keys are errors (nested sections too) and assignments are checked; numbers written
    # as strings by YAML (``1e-5``) are read as numbers, other strings are refused
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainConfig(_Strict):
    """Settings shared by every trainer."""

    kind: str = ""
    seed: NonNegativeInt = 0
    model: str = "midi3d-tiny"          # spec (built-in name or YAML path) to start from without --init
    max_steps: PositiveInt = 1000
    batch_size: PositiveInt = 8
    lr: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.01
    betas: tuple[Probability, Probability] = (0.9, 0.99)
    warmup_steps: NonNegativeInt = 100
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: from decay_start down to 5% at max_steps
    decay_start: NonNegativeInt = 0
    grad_clip: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0
    mixed_precision: Literal["no", "bf16"] = "no"
    gradient_checkpointing: bool = False
    checkpoint_every: PositiveInt = 500
    keep_checkpoints: PositiveInt = 2
    log_every: PositiveInt = 10
    # dataset reading
    min_area_fraction: Probability = 0.001  # instances at or below this share of the image are ignored
    max_instances: PositiveInt = 10
    cache_jobs: NonNegativeInt = 0      # processes for cache building (0 = one per core)
    surface_points: PositiveInt = 2048  # cached encoder input points per object
    near_points: PositiveInt = 2048     # cached near-surface SDF queries per object
    uniform_points: PositiveInt = 1024  # cached uniform SDF queries per object
    around_points: NonNegativeInt = 0   # cached SDF queries in the object's box grown by around_margin
    around_margin: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.3
    # what the trained folder samples with by default (written to its model_index.json)
    sample_steps: PositiveInt | None = None      # None: keep the starting folder's
    sample_guidance: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = None
    sample_resolution: PositiveInt | None = None
    sample_fallback_levels: list[float] | None = None  # iso-levels for instances with no surface ([] = none)

    @field_validator("sample_fallback_levels")
    @classmethod
    def _increasing_levels(cls, value):
        from ..geometry.extraction import check_fallback_levels

        return value if value is None else list(check_fallback_levels(value, "sample_fallback_levels"))

    @field_validator("sample_resolution")
    @classmethod
    def _power_of_two(cls, value):
        from ..pipelines.sampling import check_resolution

        return value if value is None else check_resolution(value, "sample_resolution")

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then constant or a
        cosine decay that starts at ``decay_start`` and ends at 5% of ``lr`` at ``max_steps``."""
        lr = self.lr * min(1.0, (step + 1) / max(1, self.warmup_steps))
        if self.lr_schedule == "cosine" and step >= self.decay_start:
            progress = (step - self.decay_start) / max(1, self.max_steps - self.decay_start)
            lr *= 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return lr


class VAETrainConfig(TrainConfig):
    """Shape VAE: surface points → latent set → truncated SDF, with a KL term."""

    kind: Literal["vae"] = "vae"
    latent_tokens: PositiveInt = 64
    query_points: PositiveInt = 2048    # queries drawn per object per step
    loss: Literal["l1", "bce"] = "l1"   # l1: on the truncated SDF; bce: occupancy logits (value = -logit)
    sdf_truncation: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 0.05  # l1 target = clamp(sdf - offset, ±t) / t
    sdf_offset: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0  # > 0: learn the surface dilated by this
    kl_weight: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 1e-3
    latent_noise: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0  # > 0: decode latent + N(0, σ²): a
                                                                              # decoder robust to generated latents
    freeze_encoder: bool = False        # decoder-only fine-tuning (the latent space stays valid)
    far_points: NonNegativeInt = 0      # per object per step, drawn afresh: uniform in the scene box,
                                        # outside the object's box grown by far_margin (labelled outside)
    far_margin: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 0.05

    @model_validator(mode="after")
    def _far_labels_exact(self):
        # a far point's label is its distance to the object's box, a lower bound of its SDF: exact
        # for the sign (BCE) and, for L1, where the margin reaches past the truncation band
        if self.far_points and self.loss == "l1" and self.far_margin < self.sdf_offset + self.sdf_truncation:
            raise ValueError(f"far_margin {self.far_margin} must be at least sdf_offset + sdf_truncation "
                             f"({self.sdf_offset + self.sdf_truncation:g}) with loss l1: the far labels would be wrong")
        if self.far_points and self.far_margin <= self.sdf_offset:
            raise ValueError(f"far_margin {self.far_margin} must exceed sdf_offset {self.sdf_offset}")
        return self


class LoRASettings(_Strict):
    rank: PositiveInt = 8
    alpha: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 8.0
    dropout: Probability = 0.0
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"], min_length=1)


class DiTTrainConfig(TrainConfig):
    """Diffusion transformer (and, when training from scratch, the image encoders)."""

    kind: Literal["dit"] = "dit"
    mi_layers: list[NonNegativeInt] | str | None = None  # the layer grammar: None/"default", "all", "none", "2-6"
    mixed_probability: Probability = 0.0   # chance that a step is a batch of single objects, MI off
    condition_drop: Probability = 0.1      # per scene, for classifier-free guidance
    train_encoders: bool = True            # small models train their CLIP/DINOv2 from scratch
    ema_decay: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.999
    latent_tokens: PositiveInt | None = None  # None = transformer width (official rule)
    normalise_latents: bool = False        # rescale the (frozen) VAE so cached latent means have std 1
    single_batch_instances: NonNegativeInt = 0  # instances in a single-object batch (0 = batch_size × 6)
    lora: LoRASettings | None = None       # set: LoRA fine-tuning of the transformer only
    box_loss_weight: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 0.0  # > 0: auxiliary layout loss
                                           # (a training-only head regresses each instance's 3D box)
    layout_tokens: bool = False            # add (or keep training) the layout-token encoder; it trains with LoRA too
    box_channel_weight: Annotated[float, Field(gt=0.0, allow_inf_nan=False)] = 1.0  # object-frame VAEs: weight
                                           # of the latent's box channels in the flow loss (others 1)

    @field_validator("mi_layers")
    @classmethod
    def _layer_grammar(cls, value):
        check_layer_spec(value)
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.box_loss_weight > 0 and not (self.train_encoders and self.lora is None):
            raise ValueError("box_loss_weight trains the image encoders: it needs train_encoders and no lora")
        return self


class LayoutTrainConfig(TrainConfig):
    """Instance layout model (:mod:`midi3d.models.layout_model`): 3D boxes from 2D masks, added to
    an object-frame pipeline (``--init``) as its ``layout_model`` component."""

    kind: Literal["layout"] = "layout"
    grid: PositiveInt = 16                 # the mask picture's cells per side
    width: PositiveInt = 128
    num_layers: PositiveInt = 4
    num_attention_heads: PositiveInt = 4
    dropout: Probability = 0.1
    mirror: bool = True                    # augment: mirror half of the scenes about x (image and boxes)

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.width % self.num_attention_heads:
            raise ValueError(f"width {self.width} must be divisible by num_attention_heads {self.num_attention_heads}")
        return self


CONFIG_CLASSES = {"vae": VAETrainConfig, "dit": DiTTrainConfig, "layout": LayoutTrainConfig}


def build_config(data: dict, source: str) -> TrainConfig:
    """A validated config from plain data; ``ValueError`` with one line naming the key otherwise."""
    kind = data.get("kind")
    if kind not in CONFIG_CLASSES:
        raise ValueError(f"{source}: kind: must be one of {sorted(CONFIG_CLASSES)} (got {kind!r})")
    try:
        return CONFIG_CLASSES[kind].model_validate(data)
    except ValidationError as err:
        raise ValueError(validation_message(err, source)) from None


def builtin_config_path(name: str) -> Path | None:
    """``configs/train/<name>.yaml`` shipped in the package, or ``None``."""
    path = resources.files("midi3d.configs").joinpath("train", f"{name.removesuffix('.yaml')}.yaml")
    return Path(str(path)) if path.is_file() else None


def _find(name: str | Path, relative_to: Path | None = None) -> Path:
    path = Path(name)
    if relative_to is not None and not path.is_absolute() and (relative_to / path).is_file():
        return relative_to / path
    if path.is_file():
        return path
    builtin = builtin_config_path(path.name)
    if builtin is None:
        raise ValueError(f"{path}: no such config file (and no built-in train config of that name)")
    return builtin


def read_config_data(name: str | Path, relative_to: Path | None = None, seen: tuple[Path, ...] = ()) -> dict:
    """The plain data of a config file; ``extends: OTHER`` (a built-in name or a path next to the
    file) starts from OTHER's data, and this file's keys replace (nested: merge into) its keys."""
    path = _find(name, relative_to)
    if path.resolve() in seen:
        raise ValueError(f"{path}: 'extends' loops back to itself")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ValueError(f"{path}: extends: expected a config name or path (got {parent!r})")
    return _merged(read_config_data(parent, path.parent, (*seen, path.resolve())), data)


def _merged(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_train_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config (a path, or the name of a built-in one; see :func:`read_config_data` for
    ``extends``) and apply ``key=value`` overrides (values parsed as YAML; ``a.b=v`` sets a nested key)."""
    path = _find(path)
    data = read_config_data(path)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected key=value")
        *parents, leaf = key.strip().split(".")
        target = data
        for parent in parents:
            if not isinstance(target.get(parent), dict):
                target[parent] = {}
            target = target[parent]
        target[leaf] = read_yaml(f"--set {item}", value)
    return build_config(data, str(path) if not overrides else f"{path} (with --set)")


def config_dict(config: TrainConfig) -> dict:
    """Plain data (tuples as lists) for ``config.yaml`` and checkpoints."""
    return config.model_dump(mode="json")
