"""Instance layout model: the 3D box of every instance of a scene from the instances' 2D masks.

Not part of the official MIDI release (there, the diffusion transformer places each object through
its scene-frame latents). Embedded object-frame models carry it as an optional pipeline component
(``layout_model/``): a small set transformer over a scene's instances, each read as its mask box,
centroid, area and a coarse ``grid x grid`` picture of the mask, so that every instance sees the
others (the room's extent and the camera are only known from all of them). It predicts each box's
centre and log half-size (scene frame); the sampler then holds the latents' box channels on it
(:meth:`midi3d.pipelines.MIDIPipeline.__call__`, ``instance_boxes``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

SCALARS = 7  # x1, y1, x2, y2, centroid x, y (image coordinates in [-1, 1]) and sqrt(area fraction)
BOX_SIZE = 6  # centre xyz, half-size xyz
EMPTY_BOX = 4.0  # the box coordinates an empty mask reads as (outside any image)


def mask_features(masks: Tensor, grid: int) -> Tensor:
    """Masks ``[I, h, w]`` (or ``[I, 1, h, w]``, values in [0, 1]) → features ``[I, 7 + grid²]``.

    Coordinates are in [-1, 1] of the image (x to the right, y down); the grid is the mask
    averaged over ``grid x grid`` cells, so the features do not depend on the mask's resolution.
    """
    masks = masks.reshape(masks.shape[0], *masks.shape[-2:]).float()
    count, height, width = masks.shape
    inside = masks > 0.5
    ys = torch.linspace(-1.0, 1.0, height, device=masks.device)[None, :, None].expand(count, height, width)
    xs = torch.linspace(-1.0, 1.0, width, device=masks.device)[None, None, :].expand(count, height, width)

    def extreme(values: Tensor, low: bool) -> Tensor:
        filled = torch.where(inside, values, torch.full_like(values, EMPTY_BOX if low else -EMPTY_BOX))
        flat = filled.flatten(1)
        return flat.amin(1) if low else flat.amax(1)

    pixels = inside.flatten(1).sum(1).clamp_min(1)
    centroid_x = (xs * inside).flatten(1).sum(1) / pixels
    centroid_y = (ys * inside).flatten(1).sum(1) / pixels
    scalars = torch.stack([extreme(xs, True), extreme(ys, True), extreme(xs, False), extreme(ys, False),
                           centroid_x, centroid_y, inside.float().mean((1, 2)).sqrt()], dim=1)
    pooled = F.adaptive_avg_pool2d(masks[:, None], grid).flatten(1)
    return torch.cat([scalars, pooled], dim=1)


def mirror_features(features: Tensor, grid: int) -> Tensor:
    """The features of the horizontally mirrored masks (x → -x)."""
    out = features.clone()
    out[..., 0], out[..., 2], out[..., 4] = -features[..., 2], -features[..., 0], -features[..., 4]
    cells = features[..., SCALARS:].reshape(*features.shape[:-1], grid, grid)
    out[..., SCALARS:] = cells.flip(-1).flatten(-2)
    return out


def padded_sets(values: Tensor, counts: list[int], fill: float = 0.0) -> tuple[Tensor, Tensor]:
    """Rows ``[I, D]`` of consecutive scenes of ``counts`` instances → ``[S, n, D]`` and the padding
    mask ``[S, n]`` (True = padding)."""
    longest = max(counts)
    out = values.new_full((len(counts), longest, values.shape[-1]), fill)
    padding = torch.ones(len(counts), longest, dtype=torch.bool, device=values.device)
    start = 0
    for scene, count in enumerate(counts):
        out[scene, :count] = values[start : start + count]
        padding[scene, :count] = False
        start += count
    return out, padding


class InstanceLayoutModel(ModelMixin, ConfigMixin):
    """Boxes ``[I, 6]`` (centre, half-size; scene frame) of a batch of scenes' instances."""

    official_class_name = "InstanceLayoutModel"  # midi3d's own: the official release has none
    official_module = "midi3d"
    config_may_be_zero = ("dropout",)  # the folder loader's check: every other number is a size

    @register_to_config
    def __init__(self, grid: int = 16, width: int = 128, num_layers: int = 4, num_attention_heads: int = 4,
                 dropout: float = 0.1, min_half_size: float = 0.005):
        super().__init__()
        if grid < 1 or width % num_attention_heads:
            raise ValueError(f"grid must be >= 1 and width ({width}) divisible by the heads ({num_attention_heads})")
        self.embed = nn.Sequential(nn.Linear(SCALARS + grid * grid, width), nn.GELU(), nn.Linear(width, width))
        layer = nn.TransformerEncoderLayer(width, num_attention_heads, 4 * width, dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, BOX_SIZE)  # centre, log half-size

    def features(self, masks: Tensor) -> Tensor:
        """:func:`mask_features` at this model's grid."""
        return mask_features(masks, self.config.grid)

    def raw(self, features: Tensor, counts: list[int]) -> Tensor:
        """Centre and log half-size ``[I, 6]`` from features ``[I, F]`` of scenes of ``counts``
        consecutive instances (the training target's parametrisation)."""
        sets, padding = padded_sets(features.to(self.dtype), counts)
        out = self.head(self.encoder(self.embed(sets), src_key_padding_mask=padding))
        return out[~padding]

    def forward(self, masks: Tensor, counts: list[int] | None = None) -> Tensor:
        """Boxes ``[I, 6]`` for masks ``[I, (1,) h, w]``; ``counts`` splits them into scenes
        (``None``: one scene)."""
        counts = [len(masks)] if counts is None else list(counts)
        if sum(counts) != len(masks) or min(counts, default=1) < 1:
            raise ValueError(f"counts {counts} do not split {len(masks)} masks into non-empty scenes")
        raw = self.raw(self.features(masks), counts).float()
        half = raw[:, 3:].exp().clamp_min(self.config.min_half_size)
        return torch.cat([raw[:, :3], half], dim=1)
