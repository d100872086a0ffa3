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


def _as_pil(images: Sequence[ImageLike]) -> list[Image.Image]:
    return [img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, dtype=np.uint8)) for img in images]


def resized_pixels(processor, images: Sequence[ImageLike]) -> Tensor:
    """The processor's resize and centre crop, as uint8 ``[N, 3, h, w]`` (no rescale or
    normalisation): what the training cache stores. Images are read and resized one at a time
    (the same values as a batch: each image is processed on its own)."""
    out = []
    for image in images:
        pixels = processor(_as_pil([image]), do_rescale=False, do_normalize=False, return_tensors="pt")
        out.append(pixels["pixel_values"].round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def normalised_pixels(processor, pixels: Tensor) -> Tensor:
    """uint8 pixels from :func:`resized_pixels` → the processor's rescaled, normalised float32,
    computed by the processor itself (its rescale and normalisation only), so the numbers are
    those of a full ``processor(image)`` call, bit for bit."""
    arrays = [np.ascontiguousarray(p.permute(1, 2, 0).numpy()) for p in pixels]
    out = processor(arrays, do_resize=False, do_center_crop=False, do_convert_rgb=False, return_tensors="pt")
    return out["pixel_values"].to(torch.float32)


def mask_pixels(masks: Sequence[ImageLike], size: tuple[int, int]) -> Tensor:
    """Masks (0/255, full image size) → ``[N, 1, h, w]`` in {0, 1}: ``value / 255`` resized with
    legacy nearest straight to ``size``, without the RGB channels' centre crop (official)."""
    resized = []
    for m in masks:  # one full-resolution float mask at a time
        mask = torch.from_numpy(np.asarray(m, dtype=np.float32))[None, None] / 255.0
        resized.append(F.interpolate(mask, size=tuple(size), mode="nearest"))
    return torch.cat(resized)


def clip_pixels(processor, images: Sequence[ImageLike]) -> Tensor:
    """Encoder-1 pixels ``[N, 3, h, w]`` from instance images (RGB uint8)."""
    return normalised_pixels(processor, resized_pixels(processor, images))


def dino_channels(processor, instance: Tensor, scene: Tensor, mask: Tensor) -> Tensor:
    """Encoder-2 input ``[N, 7, h, w]`` from resized uint8 instance pixels, scene pixels (``[N]``,
    or ``[1]`` for one scene shared by all) and the resized mask: the one assembly shared by
    inference and training."""
    scene = normalised_pixels(processor, scene).expand(len(instance), -1, -1, -1)
    return torch.cat([normalised_pixels(processor, instance), scene, mask.to(torch.float32)], dim=1)


def resized_scenes(processor, scenes: Sequence[ImageLike]) -> Tensor:
    """Resized uint8 scene pixels: ``[1, 3, h, w]`` when every instance shares one scene image
    (the usual case: it is resized once), else one per instance."""
    if all(scene is scenes[0] for scene in scenes):
        return resized_pixels(processor, [scenes[0]])
    return resized_pixels(processor, scenes)


def resized_instances(clip_processor, dino_processor, images: Sequence[ImageLike], masks: Sequence[ImageLike]
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """CLIP uint8 ``[N, 3, h1, w1]``, DINOv2 uint8 ``[N, 3, h2, w2]`` and masks ``[N, 1, h2, w2]``,
    reading each instance image and mask once (they may be made on demand, at full resolution)."""
    clip, dino, resized_masks = [], [], []
    for image, mask in zip(images, masks, strict=True):
        clip.append(resized_pixels(clip_processor, [image]))
        dino.append(resized_pixels(dino_processor, [image]))
        resized_masks.append(mask_pixels([mask], dino[-1].shape[-2:]))
    return torch.cat(clip), torch.cat(dino), torch.cat(resized_masks)


def patch_regions(masks: Tensor, patch_size: int, num_tokens: int) -> Tensor:
    """Which DINOv2 tokens belong to each instance: ``[N, num_tokens]`` bool, the class token and
    every patch with a mask pixel in it (the mask channel as the encoder sees it, ``[N, 1, h, w]``)."""
    patches = F.max_pool2d(masks.float(), kernel_size=patch_size, stride=patch_size).flatten(1) > 0.5
    if patches.shape[1] + 1 != num_tokens:
        raise ValueError(f"{patches.shape[1]} patches of {patch_size} px and a class token do not make the "
                         f"encoder's {num_tokens} tokens")
    return torch.cat([torch.ones_like(patches[:, :1]), patches], dim=1)


def dino_pixels(processor, images: Sequence[ImageLike], scenes: Sequence[ImageLike],
                masks: Sequence[ImageLike]) -> Tensor:
    """Encoder-2 pixels ``[N, 7, h, w]``: instance RGB, scene RGB, mask (see :func:`mask_pixels`)."""
    instance = resized_pixels(processor, images)
    return dino_channels(processor, instance, resized_scenes(processor, scenes), mask_pixels(masks, instance.shape[-2:]))


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
