"""Point sampling helpers that need no compiled extension."""

from __future__ import annotations

import torch
from torch import Tensor


def farthest_point_sampling(points: Tensor, num_samples: int, random_start: bool = False,
                            generator: torch.Generator | None = None) -> Tensor:
    """Farthest point sampling, batched, matching torch_cluster's CPU kernel.

    Starts at index 0 (or a random index when ``random_start``), keeps the running minimum
    of squared Euclidean distances to the chosen set, and takes the first arg-max.

    Args:
        points: ``[B, M, 3]``.
        num_samples: number of points to pick per batch element (``<= M``).

    Returns:
        ``[B, num_samples]`` int64 indices, in selection order.
    """
    batch, count, _ = points.shape
    if num_samples > count:
        raise ValueError(f"cannot pick {num_samples} points out of {count}")
    points = points.float()
    chosen = torch.empty(batch, num_samples, dtype=torch.long, device=points.device)
    if random_start:
        current = torch.randint(count, (batch,), generator=generator, device=points.device)
    else:
        current = torch.zeros(batch, dtype=torch.long, device=points.device)
    min_dist = torch.full((batch, count), float("inf"), device=points.device)
    rows = torch.arange(batch, device=points.device)
    for step in range(num_samples):
        chosen[:, step] = current
        delta = points - points[rows, current][:, None, :]
        min_dist = torch.minimum(min_dist, delta.pow(2).sum(-1))
        current = min_dist.argmax(dim=1)
    return chosen
