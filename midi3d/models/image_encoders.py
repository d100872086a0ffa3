"""The two image encoders (CLIP vision with projection, 7-channel DINOv2) and their preprocessing.

Preprocessing uses transformers' PIL back ends (Pillow bicubic on uint8), which are
bit-identical to the slow processors the official stack (transformers 4.49) used; the
torchvision back end that transformers 5 picks by default differs by up to 0.018.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

ImageLike = Image.Image | np.ndarray

DINO_CHANNELS = 7


def _processor_class(kind: str):
    import transformers

    names = {"clip": ("CLIPImageProcessorPil", "CLIPImageProcessor"), "bit": ("BitImageProcessorPil", "BitImageProcessor")}
    pil_name, slow_name = names[kind]
    # transformers >= 5 ships explicit PIL back ends; in 4.x the plain class is the PIL one.
    return getattr(transformers, pil_name, None) or getattr(transformers, slow_name)


def build_image_processor(kind: str, config: dict):
    """An image processor of ``kind`` ``"clip"`` or ``"bit"`` from a preprocessor config dict."""
    kwargs = {k: v for k, v in config.items() if k not in ("image_processor_type", "processor_class", "_processor_class")}
    return _processor_class(kind)(**kwargs)


def processed_size(processor) -> tuple[int, int]:
    """``(height, width)`` of the processor's output pixels."""
    if getattr(processor, "do_center_crop", False):
        crop = processor.crop_size
        return int(crop["height"]), int(crop["width"])
    size = processor.size
    if "height" in size:
        return int(size["height"]), int(size["width"])
    raise ValueError("processor without center crop needs an explicit height/width size")


def _as_pil(images: Sequence[ImageLike]) -> list[Image.Image]:
    return [img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, dtype=np.uint8)) for img in images]


def clip_pixels(processor, images: Sequence[ImageLike]) -> Tensor:
    """Encoder-1 pixels ``[N, 3, h, w]`` from instance images (RGB uint8)."""
    return processor(_as_pil(images), return_tensors="pt")["pixel_values"]


def dino_pixels(processor, images: Sequence[ImageLike], scenes: Sequence[ImageLike],
                masks: Sequence[ImageLike]) -> Tensor:
    """Encoder-2 pixels ``[N, 7, h, w]``: instance RGB, scene RGB, mask.

    The mask is ``value / 255`` resized with legacy nearest from the full image straight to
    the processed size, without the RGB channels' centre crop (official behaviour).
    """
    instance = processor(_as_pil(images), return_tensors="pt")["pixel_values"]
    scene = processor(_as_pil(scenes), return_tensors="pt")["pixel_values"]
    mask = torch.from_numpy(np.stack([np.asarray(m, dtype=np.float32) for m in masks]))[:, None] / 255.0
    mask = F.interpolate(mask, size=instance.shape[-2:], mode="nearest")
    return torch.cat([instance, scene, mask], dim=1)


def encode_clip(encoder, pixels: Tensor) -> Tensor:
    """``image_embeds`` (projection of the pooled CLS token, not L2-normalised) → ``[N, 1, D1]``."""
    pixels = pixels.to(device=encoder.device, dtype=encoder.dtype)
    return encoder(pixel_values=pixels).image_embeds[:, None]


def encode_dino(encoder, pixels: Tensor) -> Tensor:
    """``last_hidden_state`` after the final layer norm → ``[N, 1 + patches, D2]``."""
    weight = encoder.embeddings.patch_embeddings.projection.weight
    pixels = pixels.to(device=weight.device, dtype=weight.dtype)
    return encoder(pixel_values=pixels).last_hidden_state


def expand_patch_embedding(encoder, init: str = "clone") -> None:
    """Turn a 3-channel DINOv2 into the 7-channel MIDI encoder in place.

    ``clone``: channels 0–2 keep the RGB kernel, 3–5 copy it, channel 6 copies the R kernel;
    ``zero``: channels 3–6 start at zero.
    """
    projection = encoder.embeddings.patch_embeddings.projection
    if projection.in_channels == DINO_CHANNELS:
        return
    if projection.in_channels != 3:
        raise ValueError(f"cannot expand a {projection.in_channels}-channel patch embedding")
    weight = projection.weight.data
    if init == "clone":
        extra = torch.cat([weight, weight[:, :1]], dim=1)
    elif init == "zero":
        extra = torch.zeros_like(weight[:, :1]).repeat(1, 4, 1, 1)
    else:
        raise ValueError(f"unknown init {init!r} (clone or zero)")
    new = torch.nn.Conv2d(DINO_CHANNELS, projection.out_channels, projection.kernel_size, projection.stride,
                          bias=projection.bias is not None)
    new.weight.data = torch.cat([weight, extra], dim=1)
    if projection.bias is not None:
        new.bias.data = projection.bias.data.clone()
    encoder.embeddings.patch_embeddings.projection = new
    encoder.embeddings.patch_embeddings.num_channels = DINO_CHANNELS
    encoder.config.num_channels = DINO_CHANNELS
