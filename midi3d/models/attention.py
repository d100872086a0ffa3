"""Attention processors for the MIDI transformer and shape VAE.

The modules that own the weights are diffusers ``Attention`` instances; these small
processors hold the maths and are swapped with ``set_attn_processor``.

Two conventions of the official checkpoints are reproduced here:

* **Heads-first split.** Self-attention concatenates ``[Q | K | V]`` along channels and
  views it as ``[B, L, H, 3d]``; cross-attention does the same with ``[K | V]`` and
  ``[B, S, H, 2d]`` (the query of a cross-attention is split normally).
* **QK RMS-norm** per head (the ``norm_q`` / ``norm_k`` modules, absent in the VAE).

Multi-instance attention lets every instance of a scene attend to the keys and values of
all instances of that scene. It is computed without repeating keys/values: the queries of
one scene are viewed as a single sequence of ``N * L`` tokens and attend once to the
scene's concatenated keys/values.

Both processors that sit where instances meet (the MI self-attention and the DINOv2
cross-attention) know their block index and take the step's instance controls
(:class:`midi3d.control.StepControl`) as the ``control`` keyword; without it they compute
exactly what they computed before controls existed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

InstanceCounts = int | Sequence[int]


def _project(layers, tokens: Tensor) -> Tensor:
    """Concatenated projections ``[B, L, n*W]`` written into one buffer (no separate copies + cat)."""
    width = layers[0].out_features
    out = tokens.new_empty(*tokens.shape[:-1], len(layers) * width)
    for index, layer in enumerate(layers):
        out[..., index * width : (index + 1) * width] = layer(tokens)
    return out


def _rms_norm(norm, x: Tensor) -> Tensor:
    """QK RMS-norm (eps from the module, statistics in float32).

    At inference the result is written in place (no full-size temporaries); with gradients
    enabled the diffusers module runs as is.
    """
    if norm is None:
        return x
    if torch.is_grad_enabled() or norm.weight is None or norm.weight.dtype != x.dtype:
        return norm(x)
    mean_square = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32).square_() / x.shape[-1]
    return x.mul_(torch.rsqrt(mean_square.add_(norm.eps))).mul_(norm.weight)


def split_heads_first(attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None):
    """Project and split into heads with the official heads-first layout.

    Args:
        attn: a diffusers ``Attention`` module (``to_q``, ``to_k``, ``to_v``, optional
            ``norm_q``/``norm_k``/``norm_cross``).
        hidden_states: ``[B, L, W]`` query-side tokens.
        encoder_hidden_states: ``[B, S, D]`` key/value tokens, or ``None`` for self-attention.

    Returns:
        ``(q, k, v)``, each ``[B, tokens, H, d]`` (token-major, so that consecutive rows can be
        merged into one sequence by a view).
    """
    batch, length, _ = hidden_states.shape
    heads = attn.heads
    head_dim = attn.to_q.out_features // heads
    if encoder_hidden_states is None:
        qkv = _project((attn.to_q, attn.to_k, attn.to_v), hidden_states).view(batch, length, heads, 3 * head_dim)
        query, key, value = qkv.split(head_dim, dim=-1)
    else:
        if attn.norm_cross is not None:
            encoder_hidden_states = attn.norm_cross(encoder_hidden_states)
        kv_len = encoder_hidden_states.shape[1]
        kv = _project((attn.to_k, attn.to_v), encoder_hidden_states).view(batch, kv_len, heads, 2 * head_dim)
        key, value = kv.split(head_dim, dim=-1)
        query = attn.to_q(hidden_states).view(batch, length, heads, head_dim)
    return _rms_norm(attn.norm_q, query), _rms_norm(attn.norm_k, key), value


def merge_heads(attn, hidden_states: Tensor, dtype: torch.dtype) -> Tensor:
    """``[B, L, H, d]`` → output projection of ``[B, L, H*d]``."""
    batch, length, heads, head_dim = hidden_states.shape
    hidden_states = hidden_states.reshape(batch, length, heads * head_dim).to(dtype)
    hidden_states = attn.to_out[0](hidden_states)
    return attn.to_out[1](hidden_states)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Scaled dot-product attention on token-major ``[B, L, H, d]`` tensors (scale 1/sqrt(d))."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


class MIDIAttnProcessor:
    """Plain attention with the heads-first split and QK norm (per-sequence)."""

    def __init__(self, layer: int | None = None):
        self.layer = layer  # the block index (used by the subclasses that take controls)

    def __call__(
        self,
        attn,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        num_instances: InstanceCounts | None = None,
        num_instances_per_batch: int | None = None,
        control: object | None = None,
        **_: object,
    ) -> Tensor:
        q, k, v = split_heads_first(attn, hidden_states, encoder_hidden_states)
        out = attention(q, k, v)
        del q, k, v
        return merge_heads(attn, out, hidden_states.dtype)


def instance_groups(
    batch_size: int, num_instances: InstanceCounts, num_instances_per_batch: int | None = None
) -> list[int]:
    """Sizes of the consecutive row groups that attend jointly.

    ``num_instances`` is either one count N shared by every scene (rows are whole scenes of
    N consecutive instances) or a list of per-scene counts. With ``num_instances_per_batch``
    P, each scene occupies a block of P rows whose first ``n_s`` do multi-instance attention
    and whose remaining ``P - n_s`` rows attend alone (padding or single objects). The list
    is repeated when it covers an integer fraction of the batch (classifier-free guidance).

    Returns:
        group sizes summing to ``batch_size``.
    """
    if isinstance(num_instances, int):
        counts = [num_instances]
    else:
        counts = [int(n) for n in num_instances]
    if not counts or any(n < 1 for n in counts):
        raise ValueError(f"num_instances must hold positive counts, got {num_instances!r}")
    groups: list[int] = []
    for n in counts:
        if num_instances_per_batch is None:
            groups.append(n)
        else:
            if n > num_instances_per_batch:
                raise ValueError(f"scene with {n} instances exceeds num_instances_per_batch={num_instances_per_batch}")
            groups.append(n)
            groups.extend([1] * (num_instances_per_batch - n))
    period = sum(groups)
    if batch_size % period != 0:
        raise ValueError(f"batch of {batch_size} rows is not a multiple of the instance layout ({period} rows)")
    return groups * (batch_size // period)


class MultiInstanceAttnProcessor:
    """Self-attention where all instances of a scene attend to each other's tokens.

    Each query row of a scene attends over the keys/values of all ``N`` rows of that scene
    (``N * L`` keys). Groups of equal size are batched into one attention call per size.
    With a ``control``, block ``layer`` may attend per instance instead (grounding schedule,
    isolation) or reweight own- vs other-instance keys (specialty tuning).
    """

    def __init__(self, layer: int | None = None):
        self.layer = layer

    def __call__(
        self,
        attn,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        num_instances: InstanceCounts | None = None,
        num_instances_per_batch: int | None = None,
        control: object | None = None,
        **_: object,
    ) -> Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("multi-instance attention is a self-attention; got encoder_hidden_states")
        if num_instances is None:
            raise ValueError(
                "multi-instance attention needs `num_instances` in attention_kwargs "
                "(the official code silently returns garbage without it)"
            )
        q, k, v = split_heads_first(attn, hidden_states, None)
        groups = instance_groups(q.shape[0], num_instances, num_instances_per_batch)
        rules = []
        if control is not None:
            if not control.instances_joint(self.layer):
                groups = [1] * len(hidden_states)
            else:
                rules = control.reweights("instances", self.layer)
        if rules:
            out = reweighted_multi_instance_attention(q, k, v, groups, rules, control.plan.config.max_chunk_elements)
        else:
            out = multi_instance_attention(q, k, v, groups)
        del q, k, v  # release the projection buffer before the output projection
        return merge_heads(attn, out, hidden_states.dtype)


class ConditionAttnProcessor(MIDIAttnProcessor):
    """The DINOv2 cross-attention of block ``layer``: plain, or with a ``control``, masked to each
    instance's own region of the condition (isolation) and/or reweighted towards or away from it."""

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, control: object | None = None, **kwargs: object) -> Tensor:
        isolated = control is not None and control.image_isolated(self.layer)
        rules = control.reweights("image", self.layer) if control is not None else []
        if not (isolated or rules):
            return super().__call__(attn, hidden_states, encoder_hidden_states)
        regions = control.image_regions
        if regions is None or regions.shape != (hidden_states.shape[0], encoder_hidden_states.shape[1]):
            raise ValueError(f"image controls need image_regions [{hidden_states.shape[0]}, "
                             f"{encoder_hidden_states.shape[1]}] (got {None if regions is None else tuple(regions.shape)})")
        q, k, v = split_heads_first(attn, hidden_states, encoder_hidden_states)
        regions = regions.to(q.device)
        if rules:
            from ..control.reweight import reweighted_attention, region_updates

            out = torch.stack([reweighted_attention(q[b], k[b], v[b], region_updates(rules, regions[b]),
                                                    regions[b] if isolated else None,
                                                    control.plan.config.max_chunk_elements)
                               for b in range(len(q))])
        else:
            mask = regions[:, None, None, :]  # [B, 1 (heads), 1 (queries), S]
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=mask).transpose(1, 2)
        del q, k, v
        return merge_heads(attn, out, hidden_states.dtype)


def reweighted_multi_instance_attention(q: Tensor, k: Tensor, v: Tensor, groups: Sequence[int], rules,
                                        max_elements: int) -> Tensor:
    """:func:`multi_instance_attention` with AST's reweighting of own- vs other-instance keys,
    one scene at a time, in query chunks."""
    from ..control.reweight import instance_updates, reweighted_attention

    batch, length, heads, head_dim = q.shape
    out = torch.empty_like(q)
    start = 0
    for size in groups:
        rows = slice(start, start + size)
        scene = [x[rows].reshape(size * length, heads, head_dim) for x in (q, k, v)]
        updates = instance_updates(rules, size, length, q.device)
        out[rows] = reweighted_attention(*scene, updates, max_elements=max_elements).reshape(size, length, heads,
                                                                                          head_dim)
        start += size
    return out


def multi_instance_attention(q: Tensor, k: Tensor, v: Tensor, groups: Sequence[int]) -> Tensor:
    """Joint attention inside consecutive row groups, without repeating keys/values.

    Args:
        q, k, v: token-major ``[B, L, H, d]``.
        groups: sizes of consecutive row groups, summing to ``B``.

    Returns:
        ``[B, L, H, d]``.
    """
    if len(set(groups)) == 1:
        return _grouped_attention(q, k, v, groups[0])
    # Mixed sizes: one call per distinct size, rows gathered by index.
    out = torch.empty_like(q)
    starts = torch.tensor([0, *groups[:-1]]).cumsum(0).tolist()
    by_size: dict[int, list[int]] = {}
    for start, size in zip(starts, groups):
        by_size.setdefault(size, []).append(start)
    for size, group_starts in by_size.items():
        rows = torch.tensor([s + i for s in group_starts for i in range(size)], device=q.device)
        out[rows] = _grouped_attention(q[rows], k[rows], v[rows], size)
    return out


def _grouped_attention(q: Tensor, k: Tensor, v: Tensor, size: int) -> Tensor:
    """Attention within consecutive groups of ``size`` rows (all groups equal).

    ``[S*N, L, H, d]`` is viewed as ``[S, N*L, H, d]``: one sequence per scene, no copy.
    """
    batch, length, heads, head_dim = q.shape
    if size == 1:
        return attention(q, k, v)
    scenes = batch // size
    out = attention(*(x.reshape(scenes, size * length, heads, head_dim) for x in (q, k, v)))
    return out.reshape(batch, length, heads, head_dim)


def repeated_multi_instance_attention(q: Tensor, k: Tensor, v: Tensor, num_instances: int) -> Tensor:
    """Reference formulation of the official code: keys/values repeated for every instance.

    Token-major ``[B, L, H, d]`` in and out. Kept for tests and benchmarks only (memory grows
    with ``N**2``).
    """
    batch, length, heads, head_dim = q.shape
    scenes = batch // num_instances

    def scene_kv(x: Tensor) -> Tensor:  # [S*N, L, H, d] -> [S*N, N*L, H, d]
        x = x.reshape(scenes, num_instances * length, heads, head_dim)
        return x.repeat_interleave(num_instances, dim=0)

    return attention(q, scene_kv(k), scene_kv(v))


class RepeatingMultiInstanceAttnProcessor(MultiInstanceAttnProcessor):
    """The official formulation (keys/values repeated N times), for comparisons only."""

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, num_instances: InstanceCounts | None = None,
                 num_instances_per_batch: int | None = None, **_: object) -> Tensor:
        if not isinstance(num_instances, int) or num_instances_per_batch is not None:
            raise ValueError("the repeating reference supports one instance count per call only")
        q, k, v = split_heads_first(attn, hidden_states, None)
        out = repeated_multi_instance_attention(q, k, v, num_instances)
        return merge_heads(attn, out, hidden_states.dtype)
