"""Layout tokens (InstanceAssemble's layout encoder, moved to 3D): each instance's mask box,
densely sampled and Fourier-encoded, through an MLP into one token added to the instance's time
token, so that in the multi-instance layers every instance also sees the others' boxes.

Why the time token (self-attention) and not the cross-attention context: the time token is the
one token every self-attention of an instance attends to, including the MI layers, where the
other instances' tokens see it too (relative placement is what the boxes are for); and adding a
zero vector to it leaves the model unchanged exactly, where an extra context token would take
attention weight even at zero. The output layer is zero-initialised.

The box features follow the official InstanceAssemble code (checked against its arrays): 36
points of a 6x6 grid over the box, x the outer loop; frequencies ``100 ** (k / 8)``; flat index
``k * 144 + s * 72 + c`` (``s`` 0 for sin, 1 for cos, ``c`` the coordinate).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

GRID = 6
NUM_FREQUENCIES = 8
EXTRA = 2  # mask area and box aspect (log h/w), after the Fourier features


def mask_boxes(masks: Tensor) -> Tensor:
    """``[N, 1, h, w]`` (or ``[N, h, w]``) masks → ``[N, 5]``: box ``x1, y1, x2, y2`` in [0, 1] of
    the image and the mask's area fraction (all 0 for an empty mask)."""
    masks = masks.reshape(masks.shape[0], *masks.shape[-2:]) > 0.5
    height, width = masks.shape[-2:]
    out = torch.zeros(len(masks), 5)
    for index, mask in enumerate(masks):
        rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
        if len(rows):
            out[index] = torch.tensor([cols[0].item() / width, rows[0].item() / height, (cols[-1].item() + 1) / width,
                                       (rows[-1].item() + 1) / height, mask.float().mean().item()])
    return out


def dense_box_points(boxes: Tensor, grid: int = GRID) -> Tensor:
    """``[..., 4]`` boxes → ``[..., 2 * grid**2]``: the (x, y) of a grid over each box (x outer)."""
    steps = torch.arange(grid, dtype=boxes.dtype, device=boxes.device) / (grid - 1)
    x = boxes[..., 0:1] + steps * (boxes[..., 2:3] - boxes[..., 0:1])  # [..., grid]
    y = boxes[..., 1:2] + steps * (boxes[..., 3:4] - boxes[..., 1:2])
    points = torch.stack(torch.broadcast_tensors(x[..., :, None], y[..., None, :]), dim=-1)  # [..., u, v, 2]
    return points.reshape(*boxes.shape[:-1], 2 * grid * grid)


def fourier_features(coordinates: Tensor, num_frequencies: int = NUM_FREQUENCIES) -> Tensor:
    """``[..., C]`` → ``[..., num_frequencies * 2 * C]``: sin and cos of ``100 ** (k / F) * c``."""
    frequencies = 100.0 ** (torch.arange(num_frequencies, dtype=coordinates.dtype, device=coordinates.device)
                            / num_frequencies)
    angles = frequencies[:, None, None] * coordinates[..., None, None, :]  # [..., F, 1, C]
    return torch.cat([angles.sin(), angles.cos()], dim=-2).flatten(-3)  # [..., F, 2, C] → flat


class LayoutTokenEncoder(nn.Module):
    """Box (+ area, aspect) features → a ``width``-dim token; zero at initialisation."""

    def __init__(self, width: int, hidden: int | None = None, grid: int = GRID,
                 num_frequencies: int = NUM_FREQUENCIES):
        super().__init__()
        self.grid, self.num_frequencies = grid, num_frequencies
        features = num_frequencies * 2 * 2 * grid * grid + EXTRA
        hidden = hidden or width
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.SiLU(), nn.Linear(hidden, width))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def features(self, layout: Tensor) -> Tensor:
        """``[N, 5]`` from :func:`mask_boxes` → the MLP's input ``[N, features]``."""
        boxes, area = layout[:, :4], layout[:, 4:5]
        aspect = torch.log((boxes[:, 3:4] - boxes[:, 1:2]).clamp_min(1e-3) / (boxes[:, 2:3] - boxes[:, 0:1]).clamp_min(1e-3))
        return torch.cat([fourier_features(dense_box_points(boxes, self.grid), self.num_frequencies), area, aspect], 1)

    def forward(self, layout: Tensor) -> Tensor:
        return self.net(self.features(layout.float()).to(self.net[0].weight.dtype))
