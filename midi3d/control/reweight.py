"""AST's attention specialty tuning, computed in query chunks.

The rule is row-wise (each query's probabilities are renormalised on their own), so the
probabilities of a chunk of queries are all that is ever held: the full ``(N*T)^2`` matrix of a
scene never exists at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

RowMaps = Callable[[int, int], Tensor]  # (first query, end query) -> [C, S] or [C, 1]


def specialty_update(probs: Tensor, target: Tensor, gain: Tensor) -> Tensor:
    """``rownorm(P * exp(gain * (M - P)))`` on the last axis (rows sum to 1; ``+1e-12`` as in AST)."""
    updated = probs * torch.exp(gain * (target - probs))
    return updated / (updated.sum(-1, keepdim=True) + 1e-12)


def reweighted_attention(q: Tensor, k: Tensor, v: Tensor, updates: Sequence[tuple[RowMaps, RowMaps]],
                         key_mask: Tensor | None = None, max_elements: int = 2**25) -> Tensor:
    """Attention of one sequence with the probabilities reweighted by each ``(target, gain)`` in turn.

    Args:
        q: ``[Lq, H, d]``; k, v: ``[S, H, d]`` (token-major, scale ``1/sqrt(d)``).
        updates: pairs of functions giving, for query rows ``[a, b)``, the target map ``M`` and the
            gain ``s * w * tau`` (``[C, S]`` or ``[C, 1]``), applied one after the other.
        key_mask: ``[S]`` bool, keys a query may attend to (hard mask before the softmax).
        max_elements: probabilities held at once (``chunk * H * S``).

    Returns:
        ``[Lq, H, d]`` in ``q``'s dtype (computed in float32).
    """
    length, heads, head_dim = q.shape
    keys = k.shape[0]
    chunk = max(1, max_elements // (heads * keys))
    k32, v32 = k.float().transpose(0, 1), v.float().transpose(0, 1)  # [H, S, d]
    out = torch.empty_like(q)
    for start in range(0, length, chunk):
        stop = min(length, start + chunk)
        scores = torch.matmul(q[start:stop].float().transpose(0, 1), k32.transpose(1, 2)) * head_dim**-0.5
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask, float("-inf"))
        probs = scores.softmax(dim=-1)  # [H, C, S]
        del scores
        for target, gain in updates:
            probs = specialty_update(probs, target(start, stop), gain(start, stop))
        out[start:stop] = torch.matmul(probs, v32).transpose(0, 1).to(q.dtype)
    return out


def instance_updates(rules: Sequence[tuple[object, float]], size: int, length: int, device
                     ) -> list[tuple[RowMaps, RowMaps]]:
    """Maps for the MI self-attention of one scene of ``size`` instances of ``length`` tokens:
    query ``i`` belongs to instance ``i // length``; ``own`` keys are that instance's tokens."""
    key_instance = torch.arange(size * length, device=device) // length

    def own(start: int, stop: int) -> Tensor:
        query_instance = torch.arange(start, stop, device=device)[:, None] // length
        return (query_instance == key_instance).float()

    updates = []
    for rule, tau in rules:
        target = own if rule.target == "own" else (lambda a, b: 1.0 - own(a, b))
        share = 1.0 - 1.0 / size if rule.size_factor else 1.0  # 1 - own area / total
        gain_value = torch.tensor(share * rule.weight * tau, device=device)
        updates.append((target, lambda a, b, g=gain_value: g))
    return updates


def region_updates(rules: Sequence[tuple[object, float]], region: Tensor) -> list[tuple[RowMaps, RowMaps]]:
    """Maps for the DINOv2 cross-attention of one instance: ``own`` keys are ``region`` (``[S]``
    bool: the class token and the patches inside the instance's mask)."""
    inside = region.float()
    share = 1.0 - inside.mean()  # 1 - own area / total
    updates = []
    for rule, tau in rules:
        target = inside if rule.target == "own" else 1.0 - inside
        gain_value = (share if rule.size_factor else torch.ones_like(share)) * (rule.weight * tau)
        updates.append((lambda a, b, m=target: m, lambda a, b, g=gain_value: g))
    return updates
