"""Build a MIDI pipeline of any size from a specification (YAML), with random weights.

Used for the embedded model (the starting point of training from scratch, and a random
baseline of its architecture), and for tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from ..io.configfile import read_yaml

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class PipelineSpec:
    """Sizes of every component; mirrors ``configs/models/*.yaml``."""

    name: str = "custom"
    seed: int = 0
    mi_layers: list[int] | None = None
    image_size: int = 112
    transformer: dict = field(default_factory=dict)
    vae: dict = field(default_factory=dict)
    clip: dict = field(default_factory=dict)
    dino: dict = field(default_factory=dict)
    standin_occupancy: float | None = None

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineSpec:
        data = read_yaml(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of model settings")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def builtin(cls, name: str) -> PipelineSpec:
        """A spec shipped in ``midi3d.configs/models/<name>.yaml``."""
        path = resources.files("midi3d.configs").joinpath("models", f"{name}.yaml")
        if not path.is_file():
            raise ValueError(f"no built-in model spec named {name!r}")
        return cls.from_yaml(Path(str(path)))


def _processor_config(kind: str, size: int) -> dict:
    mean, std = (CLIP_MEAN, CLIP_STD) if kind == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
    return {"do_resize": True, "size": {"shortest_edge": size}, "resample": 3, "do_center_crop": True,
            "crop_size": {"height": size, "width": size}, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": mean, "image_std": std, "do_convert_rgb": True}


def build_pipeline(spec: PipelineSpec):
    """A :class:`~midi3d.pipelines.MIDIPipeline` with random weights drawn under ``spec.seed``."""
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        Dinov2Config,
        Dinov2Model,
    )

    from ..pipelines.pipeline_midi import MIDIPipeline
    from ..schedulers.rectified_flow import RectifiedFlowScheduler
    from .autoencoders.shape_vae import ShapeVAE
    from .image_encoders import build_image_processor
    from .transformers.midi_transformer import MIDITransformer

    torch.manual_seed(spec.seed)
    transformer = MIDITransformer(**spec.transformer)
    vae = ShapeVAE(**spec.vae)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=spec.image_size, **spec.clip))
    dino = Dinov2Model(Dinov2Config(image_size=spec.image_size, num_channels=7, **spec.dino))
    pipe = MIDIPipeline(
        transformer=transformer.eval(), vae=vae.eval(), scheduler=RectifiedFlowScheduler(),
        image_encoder_1=clip.eval(), image_encoder_2=dino.eval(),
        feature_extractor_1=build_image_processor("clip", _processor_config("clip", spec.image_size)),
        feature_extractor_2=build_image_processor("bit", _processor_config("bit", spec.image_size)),
    )
    pipe.transformer.set_multi_instance_layers(spec.mi_layers)
    if spec.standin_occupancy:
        calibrate_decoder_bias(pipe.vae, spec.transformer.get("width", 2048), spec.standin_occupancy, spec.seed)
    return pipe


@torch.no_grad()
def calibrate_decoder_bias(vae, num_tokens: int, occupancy: float, seed: int) -> None:
    """Shift the decoder output bias so that a random latent occupies ``occupancy`` of the box.

    A random network's field is high-frequency noise that rarely crosses zero; the stand-in
    keeps only the lowest two embedding frequencies (smooth blobs), damps the latents'
    influence and shifts the bias.
    """
    freqs = vae.embedder.num_freqs
    keep = torch.zeros(vae.embedder.out_dim, dtype=torch.bool)
    keep[:3] = True
    for block in (3, 3 + 3 * freqs):  # sines, cosines: coordinate-major, frequency fastest
        for axis in range(3):
            keep[block + axis * freqs : block + axis * freqs + 2] = True
    vae.decoder.proj_query.weight[:, ~keep] = 0.0
    # Damp the latents' influence so the calibrated occupancy holds for any generated latent.
    vae.decoder.blocks[-1].attn2.to_out[0].weight.mul_(0.05)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, num_tokens, vae.config.latent_channels, generator=generator)
    points = torch.rand(1, 20000, 3, generator=generator) * 2 - 1
    values = vae.decode(latents, points).sample.flatten()
    vae.decoder.proj_out.bias += torch.quantile(values, 1.0 - occupancy)
