"""AST (step-layer-wise attention specialty tuning) on FLUX: training-free reweighting of the joint
attention's probabilities towards layout target maps, ``P ← rownorm(P · exp(r · w · τ(t) · (M − P)))``
with ``τ(t) = (t / 1000)^decay``, as a diffusers attention processor.

Target maps come from the layout: image→image (``M_img``: tokens of the same region), text→text
(``M_txt``: tokens of the same prompt segment) and image→text (an instance's region to its words,
split into *instance* words, *attribute* words and the background's words). Which map a call uses
follows the published layer groups (:data:`LAYER_GROUPS`); text→image is never reweighted.

``compat=True`` keeps the official code's hard-coded text length 512 in the text size factor
(``1 − sizereg_text · rowsum / 512`` whatever the text length); the default uses the actual length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ASTConfig:
    """The published UI's defaults."""

    num_mod_steps: int = 16  # steps 0 … num_mod_steps − 1 are reweighted
    w_i2i: float = 3.5
    w_t2t: float = 3.5
    w_i2t: float = 5.0
    decay: float = 3.0
    sizereg_image: float = 1.0
    sizereg_text: float = 4.0
    compat: bool = False
    max_chunk_elements: int = 2 ** 25  # probabilities held at once (query rows × keys × heads)


@dataclass(frozen=True)
class LayerRule:
    i2i_t2t: bool
    i2t_map: str | None  # instance, instance+background, instance+attribute, attribute
    i2t_size: str  # "all" (reg_image_sizes) or "instance" (reg_image_sizes_instance)


def layer_rule(call: int, double_blocks: int = 19, total_calls: int = 57) -> LayerRule | None:
    """The published layer groups over FLUX's 19 double + 38 single attention calls of a step
    (call c: double block c, then single block c − 19); ``None`` = plain attention."""
    if total_calls != 57 or double_blocks != 19:
        raise ValueError("AST's layer groups are defined for FLUX's 19 double + 38 single blocks")
    if call < 5:
        return None
    if call < 19:
        return LayerRule(True, "instance", "instance")
    if call < 24:
        return LayerRule(True, "instance+background", "all")
    if call < 34:
        return LayerRule(True, "instance+attribute", "instance")
    if call < 50:
        return LayerRule(True, "attribute", "instance")
    return LayerRule(False, "attribute", "instance")


@dataclass
class ASTMaps:
    """Target maps and size factors; ``L`` text tokens, ``HW`` image tokens."""

    image: np.ndarray  # [HW, HW] M_img
    image_sizes: np.ndarray  # [HW] over all regions
    image_sizes_instance: np.ndarray  # [HW] over the instance regions (1 on the background)
    text: np.ndarray  # [L, L] M_txt
    text_sizes: np.ndarray  # [L]
    i2t_instance: np.ndarray  # [HW, L]
    i2t_attribute: np.ndarray  # [HW, L]
    i2t_background: np.ndarray  # [HW, L]

    def i2t(self, name: str) -> np.ndarray:
        return sum(getattr(self, f"i2t_{part}") for part in name.split("+"))


def find_span(master: list[int], part: list[int]) -> int | None:
    """The first start of ``part`` in ``master`` (``None`` if absent or empty)."""
    if not part:
        return None
    for start in range(len(master) - len(part) + 1):
        if master[start:start + len(part)] == part:
            return start
    return None


def build_maps(regions: np.ndarray, master_ids: list[int], segment_ids: list[list[int]],
               attribute_ids: list[list[int] | None], text_len: int, config: ASTConfig) -> ASTMaps:
    """The maps of one layout.

    ``regions`` ``[1 + N, HW]`` bool: the background, then each instance; ``segment_ids`` the
    token ids (no EOS) of the background prompt, then of each instance's description;
    ``attribute_ids[k]`` the ids of instance *k*'s attribute words (``None``: none)."""
    regions = np.asarray(regions, np.float64).reshape(len(regions), -1)
    hw = regions.shape[1]
    image = sum(np.outer(m, m) for m in regions)
    image_sizes = 1 - config.sizereg_image * (regions * regions.sum(1, keepdims=True)).sum(0) / hw
    instances = regions[1:]
    image_sizes_instance = 1 - config.sizereg_image * (instances * instances.sum(1, keepdims=True)).sum(0) / hw
    text = np.eye(text_len)
    spans = []
    for ids in segment_ids:
        start = find_span(master_ids, list(ids))
        spans.append(None if start is None else (start, start + len(ids)))
        if start is not None:
            text[start:start + len(ids), start:start + len(ids)] = 1
    denominator = 512 if config.compat else text_len
    text_sizes = 1 - config.sizereg_text * text.sum(1) / denominator
    background = np.zeros((hw, text_len))
    instance = np.zeros((hw, text_len))
    attribute = np.zeros((hw, text_len))
    if spans[0] is not None:
        background[:, spans[0][0]:spans[0][1]] = regions[0][:, None]
    for index, (span, attributes) in enumerate(zip(spans[1:], attribute_ids)):
        if span is None:
            continue
        mask = regions[index + 1][:, None]
        hit = find_span(master_ids, list(attributes)) if attributes else None  # the whole prompt, first hit
        columns = np.zeros(text_len, bool)
        columns[span[0]:span[1]] = True
        if hit is not None:
            attribute[:, hit:hit + len(attributes)] = mask
        if hit is not None and hit > 0:
            columns[hit:hit + len(attributes)] = False
        instance[:, columns] = mask
    return ASTMaps(image, image_sizes, image_sizes_instance, text, text_sizes, instance, attribute, background)


def reweighted_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, maps: ASTMaps, rule: LayerRule,
                         tau: float, config: ASTConfig, return_probs: bool = False):
    """AST's rule on ``[B, heads, S, D]`` q/k/v over ``[text (L); image (HW)]``, in query chunks so
    that at most ``config.max_chunk_elements`` probabilities exist at once (the rule is row-wise)."""
    batch, heads, sequence, dim = q.shape
    text_len = maps.text.shape[0]
    dtype, device = q.dtype, q.device

    def tensor(array):
        return torch.as_tensor(array, dtype=dtype, device=device)

    m_img, r_img = tensor(maps.image), tensor(maps.image_sizes)
    m_txt, r_txt = tensor(maps.text), tensor(maps.text_sizes)
    m_i2t = tensor(maps.i2t(rule.i2t_map)) if rule.i2t_map else None
    r_i2t = tensor(maps.image_sizes if rule.i2t_size == "all" else maps.image_sizes_instance)
    rows = max(1, config.max_chunk_elements // max(1, batch * heads * sequence))
    outputs, all_probs = [], []
    scale = dim ** -0.5
    for start in range(0, sequence, rows):
        stop = min(sequence, start + rows)
        probs = torch.softmax(q[:, :, start:stop] @ k.transpose(-1, -2) * scale, dim=-1)
        updated = probs.clone()
        text_rows = slice(start, min(stop, text_len))
        image_rows = slice(max(start, text_len), stop)
        if text_rows.start < text_rows.stop and rule.i2i_t2t:  # text → text
            local = slice(text_rows.start - start, text_rows.stop - start)
            block = probs[:, :, local, :text_len]
            gain = r_txt[text_rows][:, None] * config.w_t2t * tau
            updated[:, :, local, :text_len] = block * torch.exp(gain * (m_txt[text_rows] - block))
        if image_rows.start < image_rows.stop:
            local = slice(image_rows.start - start, image_rows.stop - start)
            image_index = slice(image_rows.start - text_len, image_rows.stop - text_len)
            if rule.i2i_t2t:  # image → image
                block = probs[:, :, local, text_len:]
                gain = r_img[image_index][:, None] * config.w_i2i * tau
                updated[:, :, local, text_len:] = block * torch.exp(gain * (m_img[image_index] - block))
            if m_i2t is not None:  # image → text
                block = probs[:, :, local, :text_len]
                gain = r_i2t[image_index][:, None] * config.w_i2t * tau
                updated[:, :, local, :text_len] = block * torch.exp(gain * (m_i2t[image_index] - block))
        updated = updated / (updated.sum(-1, keepdim=True) + 1e-12)
        outputs.append(updated @ v)
        if return_probs:
            all_probs.append(updated)
    out = torch.cat(outputs, 2)
    return (out, torch.cat(all_probs, 2)) if return_probs else out


class ASTState:
    """What the processors of one pipeline call share: maps, timesteps, and the current step."""

    def __init__(self, config: ASTConfig, maps: ASTMaps, timesteps):
        self.config = config
        self.maps = maps
        self.timesteps = [float(t) for t in timesteps]  # the scheduler's (0–1000), by step
        self.step = 0
        self.current_t: float | None = None  # set per call by a pipeline hook; else timesteps[step]

    def tau(self) -> float:
        t = self.current_t if self.current_t is not None else self.timesteps[self.step]
        return (t / 1000.0) ** self.config.decay

    def rule(self, call: int) -> LayerRule | None:
        if self.step >= self.config.num_mod_steps:
            return None
        return layer_rule(call)


class ASTFluxAttnProcessor:
    """diffusers' FLUX attention with AST's reweighting on the calls and steps it applies to (the
    plain fused attention elsewhere)."""

    def __init__(self, state: ASTState, call: int):
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        self.state = state
        self.call = call
        self.base = FluxAttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        rule = self.state.rule(self.call)
        if rule is None:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        if attn.added_kv_proj_dim is not None:
            encoder_query = attn.norm_added_q(encoder_query.unflatten(-1, (-1, attn.head_dim)))
            encoder_key = attn.norm_added_k(encoder_key.unflatten(-1, (-1, attn.head_dim)))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        core = reweighted_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                    self.state.maps, rule, self.state.tau(), self.state.config)
        hidden = core.transpose(1, 2).flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is not None:
            text, image = hidden.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden.shape[1] - encoder_hidden_states.shape[1]], dim=1)
            image = attn.to_out[1](attn.to_out[0](image.contiguous()))
            return image, attn.to_add_out(text.contiguous())
        return hidden


def substitute_segments(master_embeds: torch.Tensor, segment_embeds: list[torch.Tensor],
                        spans: list[tuple[int, int] | None]) -> torch.Tensor:
    """AST's prompt: the master prompt's T5 embeddings ``[1, L, D]`` with each segment's span
    replaced by the separately encoded segment's first tokens."""
    out = master_embeds.clone()
    for embeds, span in zip(segment_embeds, spans):
        if span is not None:
            out[0, span[0]:span[1]] = embeds[0, :span[1] - span[0]]
    return out
