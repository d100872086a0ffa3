"""The MIDI diffusion transformer (checkpoint-compatible with the official ``TripoSGDiTModel``).

A stack of pre-norm blocks over ``[time token, latent tokens]`` with U-Net-like long skips,
a self-attention, two parallel cross-attentions (CLIP embedding and DINOv2 tokens) and an
MLP. Multi-instance attention replaces the self-attention of chosen blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.utils import BaseOutput
from torch import Tensor, nn

from ..attention import ConditionAttnProcessor, MIDIAttnProcessor, MultiInstanceAttnProcessor
from ..layer_spec import LayerSpec, parse_layer_list
from ..layout_tokens import LayoutTokenEncoder

LAYOUT_TOKENS_KEY = "_midi3d_layout_tokens"  # in the transformer's config.json; official loaders skip "_" keys


def default_mi_layers(num_layers: int) -> list[int]:
    """The released model's multi-instance layers: the middle block and two on each side.

    For the released 21-layer model this is ``[8, 9, 10, 11, 12]``.
    """
    middle = num_layers // 2
    return [i for i in range(middle - 2, middle + 3) if 0 <= i < num_layers]


def _attention(width: int, heads: int, kv_dim: int | None) -> Attention:
    return Attention(
        query_dim=width,
        cross_attention_dim=kv_dim,
        heads=heads,
        dim_head=width // heads,
        bias=False,
        out_bias=True,
        qk_norm="rms_norm",
        eps=1e-6,
        processor=MIDIAttnProcessor(),
    )


class MIDIDiTBlock(nn.Module):
    """One transformer block: [skip fusion] → self-attn → 2 parallel cross-attns → MLP."""

    def __init__(self, width: int, heads: int, cross_dim_1: int, cross_dim_2: int, use_skip: bool):
        super().__init__()
        if use_skip:
            # Official order: linear on [skip, h] first, then the norm; the result replaces h.
            self.skip_linear = nn.Linear(2 * width, width)
            self.skip_norm = FP32LayerNorm(width, eps=1e-5)
        self.use_skip = use_skip
        self.norm1 = FP32LayerNorm(width, eps=1e-5)
        self.attn1 = _attention(width, heads, None)
        self.norm2 = FP32LayerNorm(width, eps=1e-5)
        self.attn2 = _attention(width, heads, cross_dim_1)
        self.norm2_2 = FP32LayerNorm(width, eps=1e-5)
        self.attn2_2 = _attention(width, heads, cross_dim_2)
        self.norm3 = FP32LayerNorm(width, eps=1e-5)
        self.ff = FeedForward(width, mult=4, activation_fn="gelu", bias=True)

    def forward(
        self,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor,
        encoder_hidden_states_2: Tensor,
        skip: Tensor | None = None,
        attention_kwargs: dict | None = None,
    ) -> Tensor:
        if self.use_skip:
            if skip is None:
                raise ValueError("skip-consuming block called without a skip tensor")
            hidden_states = self.skip_norm(self.skip_linear(torch.cat([skip, hidden_states], dim=-1)))
        kwargs = attention_kwargs or {}
        hidden_states = hidden_states + self.attn1(self.norm1(hidden_states), **kwargs)
        cross_1 = self.attn2(self.norm2(hidden_states), encoder_hidden_states=encoder_hidden_states)
        control = {"control": kwargs["control"]} if kwargs.get("control") is not None else {}
        cross_2 = self.attn2_2(self.norm2_2(hidden_states), encoder_hidden_states=encoder_hidden_states_2, **control)
        hidden_states = hidden_states + cross_1 + cross_2
        return hidden_states + self.ff(self.norm3(hidden_states))


@dataclass
class MIDITransformerOutput(BaseOutput):
    """``sample``: predicted velocity ``[B, T, C]`` (data minus noise)."""

    sample: Tensor


class MIDITransformer(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Multi-instance diffusion transformer; loads the official ``TripoSGDiTModel`` weights.

    The config holds exactly the official constructor arguments, so the official
    ``config.json`` loads unchanged. Multi-instance attention is not part of the config (as
    in the release): call :meth:`set_multi_instance_layers` after loading.
    """

    official_class_name = "TripoSGDiTModel"
    official_module = "midi.models.transformers.triposg_transformer"
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 16,
        width: int = 2048,
        in_channels: int = 64,
        num_layers: int = 21,
        cross_attention_dim: int = 768,
        cross_attention_2_dim: int = 1024,
    ):
        super().__init__()
        if width % num_attention_heads:
            raise ValueError(f"width {width} is not divisible by num_attention_heads {num_attention_heads}")
        self.time_embed = Timesteps(width, flip_sin_to_cos=False, downscale_freq_shift=0)
        self.time_proj = TimestepEmbedding(width, 4 * width, act_fn="gelu", out_dim=width)
        self.proj_in = nn.Linear(in_channels, width)
        middle = num_layers // 2
        self.blocks = nn.ModuleList(
            MIDIDiTBlock(width, num_attention_heads, cross_attention_dim, cross_attention_2_dim, use_skip=i > middle)
            for i in range(num_layers)
        )
        for index, block in enumerate(self.blocks):  # the DINOv2 cross-attention takes image controls
            block.attn2_2.set_processor(ConditionAttnProcessor(index))
        self.norm_out = nn.LayerNorm(width, eps=1e-5)
        self.proj_out = nn.Linear(width, in_channels)
        self.gradient_checkpointing = False
        self._mi_layers: tuple[int, ...] = ()
        self.layout_encoder: LayoutTokenEncoder | None = None

    # -- layout tokens -----------------------------------------------------------------------

    @property
    def has_layout_tokens(self) -> bool:
        return self.layout_encoder is not None

    def enable_layout_tokens(self) -> None:
        """Add the layout-token encoder (:mod:`midi3d.models.layout_tokens`), zero-initialised: the
        model's outputs are unchanged until it is trained. Recorded in the folder when saved."""
        if self.layout_encoder is None:
            width = self.config.width
            self.layout_encoder = LayoutTokenEncoder(width).to(device=self.proj_in.weight.device,
                                                             dtype=self.proj_in.weight.dtype)

    # -- multi-instance configuration -------------------------------------------------------

    @property
    def mi_layers(self) -> tuple[int, ...]:
        """Indices of the blocks whose self-attention is multi-instance."""
        return self._mi_layers

    def set_multi_instance_layers(self, layers: LayerSpec = None) -> None:
        """Install multi-instance self-attention on exactly these blocks.

        ``layers`` follows :mod:`midi3d.models.layer_spec` (``"8-12"``, ``"all"``, ``[1, 3]``…);
        ``None``/``"default"`` selects the released model's layers (:func:`default_mi_layers`);
        ``"none"``/``[]`` turns multi-instance attention off. Indices are matched exactly.
        """
        chosen = parse_layer_list(layers, self.config.num_layers)
        if chosen is None:
            chosen = default_mi_layers(self.config.num_layers)
        for index, block in enumerate(self.blocks):
            block.attn1.set_processor(MultiInstanceAttnProcessor(index) if index in chosen else MIDIAttnProcessor())
        self._mi_layers = tuple(chosen)

    # -- forward ----------------------------------------------------------------------------

    def forward(
        self,
        hidden_states: Tensor,
        timestep: Tensor | float,
        encoder_hidden_states: Tensor,
        encoder_hidden_states_2: Tensor,
        attention_kwargs: dict | None = None,
        return_dict: bool = True,
        layout: Tensor | None = None,
    ) -> MIDITransformerOutput | tuple[Tensor]:
        """Predict the velocity.

        Args:
            hidden_states: latents ``[B, T, C]``.
            timestep: ``[B]`` or scalar, on the 0–1000 scale.
            encoder_hidden_states: CLIP embeddings ``[B, S1, D1]``.
            encoder_hidden_states_2: DINOv2 tokens ``[B, S2, D2]``.
            attention_kwargs: ``{"num_instances": N or [n_s, ...], "num_instances_per_batch": P}``;
                required when multi-instance layers are set; ``"control"``: the step's
                :class:`midi3d.control.StepControl` (optional).
            layout: ``[B, 5]`` instance boxes and areas (:func:`~midi3d.models.layout_tokens.mask_boxes`);
                required with layout tokens, refused without.
        """
        if self._mi_layers and not (attention_kwargs and attention_kwargs.get("num_instances") is not None):
            raise ValueError("multi-instance layers are set: pass attention_kwargs={'num_instances': N}")
        batch = hidden_states.shape[0]
        timestep = torch.as_tensor(timestep, device=hidden_states.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        time_emb = self.time_embed(timestep).to(hidden_states.dtype)
        time_token = self.time_proj(time_emb).unsqueeze(1)
        if self.layout_encoder is not None:
            if layout is None:
                raise ValueError("this transformer has layout tokens: pass layout=[B, 5] boxes (mask_boxes)")
            time_token = time_token + self.layout_encoder(layout.to(time_token.device))[:, None].to(time_token.dtype)
        elif layout is not None:
            raise ValueError("layout given but this transformer has no layout tokens (enable_layout_tokens)")
        hidden = torch.cat([time_token, self.proj_in(hidden_states)], dim=1)

        middle = self.config.num_layers // 2
        skips: list[Tensor] = []
        for index, block in enumerate(self.blocks):
            skip = skips.pop() if index > middle else None
            args = (hidden, encoder_hidden_states, encoder_hidden_states_2, skip, attention_kwargs)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                hidden = torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
            else:
                hidden = block(*args)
            if index < middle:
                skips.append(hidden)

        out = self.proj_out(self.norm_out(hidden[:, 1:]))
        if not return_dict:
            return (out,)
        return MIDITransformerOutput(sample=out)
