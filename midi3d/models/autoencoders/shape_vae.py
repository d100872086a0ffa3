"""The 3D shape VAE (checkpoint-compatible with the official ``TripoSGVAEModel``).

Encoder: surface points with normals → ``T`` query points picked by farthest point
sampling → a cross-attention block and self-attention blocks → diagonal Gaussian posterior
over a latent set ``[B, T, C]``. Decoder: latent set → self-attention stack (computed once
per latent and cached) → one cross-attention block per query point → signed value.

``object_frame=True`` (embedded models only; the official checkpoint is scene-frame) encodes
each object in its own box and carries the box in the latent (see ``surface_box``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.utils import BaseOutput
from torch import Tensor, nn

from ...geometry.sampling import farthest_point_sampling
from ..attention import MIDIAttnProcessor

DEFAULT_DECODE_CHUNK = 50_000
BOX_CHANNELS = 6       # object frame: centre xyz and half-size xyz, the last channels of every token
MIN_HALF_SIZE = 0.005  # scene units: a flat object still gets a box with volume
OUTSIDE_VALUE = 1.0    # the object frame's decoded value beyond the grown box ("outside")


@dataclass
class DecoderTokens:
    """Object-frame decoder tokens: the latent stack ``[B, T, W]`` and the boxes ``[B, 6]``."""

    stack: Tensor
    box: Tensor

    def __getitem__(self, index) -> DecoderTokens:
        return DecoderTokens(self.stack[index], self.box[index])

    @property
    def device(self) -> torch.device:
        return self.stack.device


class FrequencyEmbedder(nn.Module):
    """``p -> [p, sin(p * 2^k), cos(p * 2^k)]``, coordinate-major, k = 0 … F-1 (no π)."""

    def __init__(self, num_freqs: int = 8, include_pi: bool = False):
        super().__init__()
        self.num_freqs = num_freqs
        self.include_pi = include_pi
        self.out_dim = 3 + 3 * 2 * num_freqs

    def forward(self, points: Tensor) -> Tensor:
        freqs = 2.0 ** torch.arange(self.num_freqs, dtype=torch.float32, device=points.device)
        if self.include_pi:
            freqs = freqs * torch.pi
        angles = (points[..., None] * freqs.to(points.dtype)).flatten(-2)
        return torch.cat([points, angles.sin(), angles.cos()], dim=-1)


class ShapeVAEBlock(nn.Module):
    """A pre-norm block with either self-attention (norm1/attn1) or cross-attention (norm2/attn2)."""

    def __init__(self, width: int, heads: int, cross: bool):
        super().__init__()
        self.cross = cross
        attention = Attention(
            query_dim=width,
            cross_attention_dim=width if cross else None,
            heads=heads,
            dim_head=width // heads,
            bias=False,
            out_bias=True,
            cross_attention_norm="layer_norm" if cross else None,
            processor=MIDIAttnProcessor(),
        )
        if cross:
            self.norm2 = FP32LayerNorm(width, eps=1e-5)
            self.attn2 = attention
        else:
            self.norm1 = FP32LayerNorm(width, eps=1e-5)
            self.attn1 = attention
        self.norm3 = FP32LayerNorm(width, eps=1e-5)
        self.ff = FeedForward(width, mult=4, activation_fn="gelu", bias=True)

    def forward(self, hidden_states: Tensor, context: Tensor | None = None) -> Tensor:
        if self.cross:
            hidden_states = hidden_states + self.attn2(self.norm2(hidden_states), encoder_hidden_states=context)
        else:
            hidden_states = hidden_states + self.attn1(self.norm1(hidden_states))
        return hidden_states + self.ff(self.norm3(hidden_states))


class ShapeEncoder(nn.Module):
    def __init__(self, in_dim: int, width: int, heads: int, num_layers: int):
        super().__init__()
        self.proj_in = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList([ShapeVAEBlock(width, heads, cross=True)] + [
            ShapeVAEBlock(width, heads, cross=False) for _ in range(num_layers)
        ])
        self.norm_out = nn.LayerNorm(width, eps=1e-5)

    def forward(self, query_features: Tensor, point_features: Tensor) -> Tensor:
        hidden = self.proj_in(query_features)
        context = self.proj_in(point_features)
        hidden = self.blocks[0](hidden, context)
        for block in self.blocks[1:]:
            hidden = block(hidden)
        return self.norm_out(hidden)


class ShapeDecoder(nn.Module):
    def __init__(self, embed_dim: int, width: int, heads: int, num_layers: int):
        super().__init__()
        self.blocks = nn.ModuleList([ShapeVAEBlock(width, heads, cross=False) for _ in range(num_layers)] + [
            ShapeVAEBlock(width, heads, cross=True)
        ])
        self.proj_query = nn.Linear(embed_dim, width)
        self.norm_out = nn.LayerNorm(width, eps=1e-5)
        self.proj_out = nn.Linear(width, 1)

    def latent_stack(self, tokens: Tensor) -> Tensor:
        """Self-attention stack over the latent tokens (independent of the query points)."""
        for block in self.blocks[:-1]:
            tokens = block(tokens)
        return tokens

    def query(self, tokens: Tensor, query_features: Tensor) -> Tensor:
        """Signed values ``[B, P, 1]`` for embedded query points, given cached tokens."""
        hidden = self.blocks[-1](self.proj_query(query_features), tokens)
        return -self.proj_out(self.norm_out(hidden))


@dataclass
class DiagonalGaussian:
    """Posterior over latents; ``mean`` and ``logvar`` are ``[B, T, C]``."""

    mean: Tensor
    logvar: Tensor
    kl_channels: int | None = None  # the KL covers the first this many channels (None: all)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def mode(self) -> Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def kl(self) -> Tensor:
        """KL divergence to N(0, I), averaged over tokens and channels: ``[B]``."""
        mean, logvar = self.mean[..., : self.kl_channels], self.logvar[..., : self.kl_channels]
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean(dim=(1, 2))


@dataclass
class ShapeVAEEncodeOutput(BaseOutput):
    latent_dist: DiagonalGaussian
    query_indices: Tensor


@dataclass
class ShapeVAEDecodeOutput(BaseOutput):
    sample: Tensor


class ShapeVAE(ModelMixin, ConfigMixin):
    """3D shape VAE; loads the official ``TripoSGVAEModel`` weights."""

    official_class_name = "TripoSGVAEModel"
    official_module = "midi.models.autoencoders.autoencoder_kl_triposg"

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 64,
        num_attention_heads: int = 8,
        width_encoder: int = 512,
        width_decoder: int = 1024,
        num_layers_encoder: int = 8,
        num_layers_decoder: int = 16,
        embedding_type: str = "frequency",
        embed_frequency: int = 8,
        embed_include_pi: bool = False,
        object_frame: bool = False,
        object_margin: float = 0.1,
        box_scale: float = 1.0,
        box_min_half_size: float = MIN_HALF_SIZE,
    ):
        super().__init__()
        if embedding_type != "frequency":
            raise ValueError(f"unsupported embedding_type {embedding_type!r} (only 'frequency')")
        if in_channels != 3:
            raise ValueError(f"in_channels must be 3 (xyz), got {in_channels}")
        shape_channels = latent_channels - BOX_CHANNELS if object_frame else latent_channels
        if shape_channels < 1:
            raise ValueError(f"object_frame needs latent_channels > {BOX_CHANNELS} (the box), got {latent_channels}")
        self.embedder = FrequencyEmbedder(embed_frequency, embed_include_pi)
        embed_dim = self.embedder.out_dim
        self.encoder = ShapeEncoder(embed_dim + 3, width_encoder, num_attention_heads, num_layers_encoder)
        self.quant = nn.Linear(width_encoder, 2 * shape_channels)
        self.post_quant = nn.Linear(shape_channels, width_decoder)
        self.decoder = ShapeDecoder(embed_dim, width_decoder, num_attention_heads, num_layers_decoder)

    @property
    def shape_channels(self) -> int:
        """Latent channels that hold the shape (all of them, unless ``object_frame``)."""
        return self.config.latent_channels - (BOX_CHANNELS if self.config.object_frame else 0)

    # -- the object frame (``object_frame=True``; not in the official model) -----------------
    #
    # Each object is encoded in its own box, scaled per axis to [-1, 1]^3, and the box (centre and
    # half-size in scene units, times ``box_scale``) is appended to every latent token as its last
    # BOX_CHANNELS channels.
    # The decoder maps scene queries into that frame and answers "outside" beyond the box grown by
    # ``object_margin`` (in box units): no floaters far from the object, by construction, and the
    # decoder's capacity goes to shape rather than to where the object lies in the room.

    @staticmethod
    def surface_box(surface: Tensor) -> Tensor:
        """Box of surface samples ``[B, M, 3+]`` as ``[B, 6]``: centre xyz, half-size xyz."""
        low, high = surface[..., :3].amin(1), surface[..., :3].amax(1)
        return torch.cat([(low + high) / 2, ((high - low) / 2).clamp_min(MIN_HALF_SIZE)], dim=-1)

    def latent_box(self, latents: Tensor) -> Tensor:
        """The box ``[B, 6]`` read back from object-frame latents (mean over tokens; the latent
        holds it times ``box_scale``, a spread the diffusion model can resolve)."""
        box = latents[..., -BOX_CHANNELS:].float().mean(1) / self.config.box_scale
        # a generated half-size below the smallest the model was trained on (or negative) is
        # read as that smallest one: a small object rather than none
        return torch.cat([box[:, :3], box[:, 3:].clamp_min(self.config.box_min_half_size)], dim=-1)

    @staticmethod
    def to_box_frame(points: Tensor, box: Tensor) -> Tensor:
        """Scene points ``[B, P, 3]`` in the frame of boxes ``[B, 6]`` (the box is [-1, 1]^3)."""
        return (points - box[:, None, :3]) / box[:, None, 3:]

    # -- encoding ---------------------------------------------------------------------------

    def select_query_points(self, points: Tensor, num_tokens: int, seed: int | None = 0) -> Tensor:
        """Indices ``[B, T]`` of the query points: a random subset of ``4T`` then FPS to ``T``.

        The subset follows the official ``numpy.random.default_rng(seed).choice`` draw (same
        subset for every batch element); FPS starts at index 0 in eval mode and at a random
        index in training mode. ``seed=None`` draws a fresh subset (official default).
        """
        num_points = points.shape[1]
        subset_size = 4 * num_tokens
        subset = np.random.default_rng(seed).choice(num_points, subset_size, replace=subset_size > num_points)
        subset = torch.from_numpy(subset).to(points.device)
        local = farthest_point_sampling(points[:, subset, :3], num_tokens, random_start=self.training)
        return subset[local]

    def encode(
        self, surface: Tensor, num_tokens: int = 2048, seed: int | None = 0, return_dict: bool = True
    ) -> ShapeVAEEncodeOutput | tuple[DiagonalGaussian]:
        """Encode surface samples ``[B, M, 6]`` (xyz + unit normals) into a posterior over ``[B, T, C]``."""
        if surface.ndim != 3 or surface.shape[-1] != 6:
            raise ValueError(f"surface must be [B, M, 6] (xyz + normals), got {tuple(surface.shape)}")
        box = None
        if self.config.object_frame:  # normals map with the inverse transpose: scaled by the half-size
            box = self.surface_box(surface)
            normals = surface[..., 3:] * box[:, None, 3:]
            normals = normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            surface = torch.cat([self.to_box_frame(surface[..., :3], box), normals], dim=-1)
        indices = self.select_query_points(surface, num_tokens, seed)
        features = torch.cat([self.embedder(surface[..., :3]), surface[..., 3:]], dim=-1)
        query = torch.gather(features, 1, indices[..., None].expand(-1, -1, features.shape[-1]))
        moments = self.quant(self.encoder(query, features))
        mean, logvar = moments.chunk(2, dim=-1)
        logvar = logvar.clamp(-30.0, 20.0)
        if box is None:
            posterior = DiagonalGaussian(mean, logvar)
        else:  # the box is exact (std ~ 3e-7) and outside the KL term
            box_tokens = (box * self.config.box_scale)[:, None, :].to(mean.dtype).expand(-1, mean.shape[1], -1)
            posterior = DiagonalGaussian(torch.cat([mean, box_tokens], -1),
                                         torch.cat([logvar, torch.full_like(box_tokens, -30.0)], -1),
                                         kl_channels=mean.shape[-1])
        if not return_dict:
            return (posterior,)
        return ShapeVAEEncodeOutput(latent_dist=posterior, query_indices=indices)

    # -- decoding ---------------------------------------------------------------------------

    def decode_tokens(self, latents: Tensor) -> Tensor | DecoderTokens:
        """The cached decoder tokens ``[B, T, W_dec]`` for latents ``[B, T, C]`` (object frame:
        with the latents' boxes, as :class:`DecoderTokens`)."""
        if not self.config.object_frame:
            return self.decoder.latent_stack(self.post_quant(latents))
        stack = self.decoder.latent_stack(self.post_quant(latents[..., : self.shape_channels]))
        return DecoderTokens(stack, self.latent_box(latents))

    def query_tokens(self, tokens: Tensor | DecoderTokens, points: Tensor,
                     chunk_size: int = DEFAULT_DECODE_CHUNK) -> Tensor:
        """Signed values ``[B, P, 1]`` at ``points`` ``[B, P, 3]`` from cached tokens, in chunks."""
        box = None
        if isinstance(tokens, DecoderTokens):
            tokens, box = tokens.stack, tokens.box.to(points.device)
        outputs = []
        for start in range(0, points.shape[1], chunk_size):
            chunk = points[:, start : start + chunk_size].to(tokens.dtype)
            if box is None:
                outputs.append(self.decoder.query(tokens, self.embedder(chunk)))
                continue
            local = self.to_box_frame(chunk.float(), box).to(tokens.dtype)
            values = self.decoder.query(tokens, self.embedder(local))
            beyond = local.abs().amax(-1, keepdim=True) > 1.0 + self.config.object_margin
            outputs.append(torch.where(beyond, torch.full_like(values, OUTSIDE_VALUE), values))
        return torch.cat(outputs, dim=1)

    def decode(
        self,
        latents: Tensor,
        sampled_points: Tensor,
        chunk_size: int = DEFAULT_DECODE_CHUNK,
        return_dict: bool = True,
    ) -> ShapeVAEDecodeOutput | tuple[Tensor]:
        """Decode latents ``[B, T, C]`` at ``sampled_points`` ``[B, P, 3]`` → ``[B, P, 1]``."""
        values = self.query_tokens(self.decode_tokens(latents), sampled_points, chunk_size)
        if not return_dict:
            return (values,)
        return ShapeVAEDecodeOutput(sample=values)

    def sdf_functions(
        self, latents: Tensor, chunk_size: int = DEFAULT_DECODE_CHUNK
    ) -> list[Callable[[Tensor], Tensor]]:
        """One query function per latent: points ``[P, 3]`` → values ``[P]`` (float32).

        The decoder's latent stack is computed once here and reused by every call.
        """
        tokens = self.decode_tokens(latents)

        def make(index: int) -> Callable[[Tensor], Tensor]:
            cached = tokens[index : index + 1]  # (DecoderTokens slice too)

            @torch.no_grad()
            def sdf(points: Tensor) -> Tensor:
                points = points.to(device=cached.device)
                return self.query_tokens(cached, points[None], chunk_size)[0, :, 0].float()

            return sdf

        return [make(i) for i in range(latents.shape[0])]
