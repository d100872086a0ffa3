"""3DIS-FLUX's training-free detail rendering: attention masks over the joint [text; image]
sequence of FLUX, with per-kind step thresholds, as a diffusers attention processor.

Rules (each instance *k* has a box of image tokens and its own text tokens):

* image tokens in box *k* attend only to box *k*'s image tokens and text *k* while I2I is on; then
  to all image tokens, the global text and text *k* while I2T is on; then to everything;
* text *k* attends only to box *k*'s image tokens while T2I is on, and only to text *k* while
  T2T is on;
* the global text and the background image tokens are never restricted; a token in several
  boxes takes the union of their rows.

``compat=True`` reproduces the official schedule exactly: the official processor infers the step
from a counter over attention calls, ``counter <= calls_per_step · X``, so a threshold ``X``
covers steps ``0 … X−1`` *and the first attention call of step X*. The default is the
documented rule (steps ``0 … X−1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ThreeDISConfig:
    """Thresholds in steps (the published FLUX demo's values as defaults: 20 steps)."""

    hard_control_steps: int = 20  # after these, one global prompt and no masks
    i2i: int = 4
    i2t: int = 20
    t2i: int = 20
    t2t: int = 20
    compat: bool = False  # the official off-by-one (see the module docstring)

    def __post_init__(self):
        for name in ("hard_control_steps", "i2i", "i2t", "t2i", "t2t"):
            if getattr(self, name) < 0:
                raise ValueError(f"3dis {name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class ActiveRules:
    i2i: bool
    i2t: bool
    t2i: bool
    t2t: bool

    @property
    def any(self) -> bool:
        return self.i2i or self.i2t or self.t2i or self.t2t


def active_rules(config: ThreeDISConfig, step: int, call: int = 0, calls_per_step: int = 57) -> ActiveRules:
    """Which rules hold at ``step`` (0-based) and attention call ``call`` of that step."""
    def on(threshold: int) -> bool:
        if step >= config.hard_control_steps:  # the pipeline lifts everything by step, in both modes
            return False
        if config.compat:
            return calls_per_step * step + call <= calls_per_step * threshold
        return step < threshold

    return ActiveRules(on(config.i2i), on(config.i2t), on(config.t2i), on(config.t2t))


def box_token_grid(boxes: np.ndarray, latent_h: int, latent_w: int) -> np.ndarray:
    """``[N, h, w]`` bool: the image tokens of each normalised box ``(x0, y0, x1, y1)``, rounded
    outwards (``floor`` of the start, ``ceil`` of the end, as 3DIS does)."""
    grid = np.zeros((len(boxes), latent_h, latent_w), bool)
    for index, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, np.float64)):
        rows = slice(int(np.floor(latent_h * y0)), int(np.ceil(latent_h * y1)))
        cols = slice(int(np.floor(latent_w * x0)), int(np.ceil(latent_w * x1)))
        grid[index, rows, cols] = True
    return grid


def attention_mask(rules: ActiveRules, image_regions: np.ndarray, instance_text: list[np.ndarray] | np.ndarray,
                   text_len: int) -> np.ndarray:
    """``[S, S]`` bool (True = may attend; rows = queries) over ``[text (text_len); image]``.

    ``image_regions`` ``[N, HW]`` bool: each instance's image tokens; ``instance_text[k]``: the
    text-token indices of instance *k* (the rest of the text is global)."""
    regions = np.asarray(image_regions, bool).reshape(len(image_regions), -1)
    image_len = regions.shape[1] if len(regions) else 0
    size = text_len + image_len
    mask = np.ones((size, size), bool)
    if not rules.any or not len(regions):
        return mask
    texts = np.zeros((len(regions), text_len), bool)
    for index, tokens in enumerate(instance_text):
        texts[index, np.asarray(tokens, np.int64)] = True
    global_text = ~texts.any(0)
    image_rows = np.zeros((image_len, size), bool)  # the union over the instances of each image token
    restricted = regions.any(0)
    text_rows: dict[int, np.ndarray] = {}
    for index in range(len(regions)):
        own_keys = np.zeros(size, bool)
        if rules.i2i:
            own_keys[:text_len] = texts[index]
            own_keys[text_len:] = regions[index]
        elif rules.i2t:
            own_keys[:text_len] = texts[index] | global_text
            own_keys[text_len:] = True
        else:
            own_keys[:] = True
        image_rows[regions[index]] |= own_keys
        keys = np.ones(size, bool)
        if rules.t2t:
            keys[:text_len] = texts[index]
        if rules.t2i:
            keys[text_len:] = regions[index]
        text_rows[index] = keys
    mask[text_len:][restricted] = image_rows[restricted]
    for index, keys in text_rows.items():  # instance text segments are disjoint
        mask[np.flatnonzero(texts[index])] = keys
    return mask


class ThreeDISState:
    """What the processors of one pipeline call share: the rules' inputs and the current step
    (set by the pipeline's step callback); each processor knows its call index within a step."""

    def __init__(self, config: ThreeDISConfig, image_regions: np.ndarray, instance_text, text_len: int,
                 calls_per_step: int, hide_instance_text_after: bool = False):
        self.config = config
        # after the hard steps the official pipeline keeps only the global prompt (its first 200
        # tokens); with the segments in one sequence, hiding the instance text keys is the same
        self.hide_instance_text_after = hide_instance_text_after
        self.image_regions = image_regions
        self.instance_text = instance_text
        self.text_len = text_len
        self.calls_per_step = calls_per_step
        self.step = 0
        self._cache: dict = {}

    def mask(self, call: int, device, sequence: int) -> torch.Tensor | None:
        """The boolean mask ``[1, 1, S, S]`` for this step and call, or ``None`` (no restriction)."""
        rules = active_rules(self.config, self.step, call, self.calls_per_step)
        if not rules.any:
            if not (self.hide_instance_text_after and self.step >= self.config.hard_control_steps):
                return None
            if "hidden" not in self._cache:
                array = np.ones((sequence, sequence), bool)
                instance_tokens = np.concatenate([np.asarray(t, np.int64) for t in self.instance_text])
                others = np.setdiff1d(np.arange(sequence), instance_tokens)
                array[np.ix_(others, instance_tokens)] = False
                self._cache["hidden"] = torch.from_numpy(array)[None, None]
            return self._cache["hidden"].to(device)
        if rules not in self._cache:
            array = attention_mask(rules, self.image_regions, self.instance_text, self.text_len)
            self._cache[rules] = torch.from_numpy(array)[None, None]
        mask = self._cache[rules].to(device)
        if mask.shape[-1] != sequence:
            raise ValueError(f"3dis: the attention sequence has {sequence} tokens, the layout's mask {mask.shape[-1]}")
        return mask


class ThreeDISFluxAttnProcessor:
    """diffusers' ``FluxAttnProcessor`` with the 3DIS mask of the current step (double- and
    single-stream blocks alike: both see ``[text; image]``)."""

    def __init__(self, state: ThreeDISState, call: int):
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        self.state = state
        self.call = call
        self.base = FluxAttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        sequence = hidden_states.shape[1] + (0 if encoder_hidden_states is None else encoder_hidden_states.shape[1])
        mask = self.state.mask(self.call, hidden_states.device, sequence)
        return self.base(attn, hidden_states, encoder_hidden_states, attention_mask=mask,
                         image_rotary_emb=image_rotary_emb)
