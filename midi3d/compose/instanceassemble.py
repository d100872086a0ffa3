"""InstanceAssemble on diffusers' own ``FluxTransformer2DModel``: the layout encoder, the released
LoRA (off everywhere but in the layout branch) and a layout branch after the layout blocks
(double blocks with index % 3 == 0 and single block 0), attached with forward hooks, so the base
model's code and weights stay untouched and ``layout_scale`` 0 (or no layout) is the base model.

The branch, per instance *k* (batched over instances here; the official code loops):

* double block: recompute ``norm1`` on the updated image stream and ``norm1_context`` on the layout
  tokens (LoRA on); joint attention over [layout token *k*; image tokens in box *k*] (LoRA on q/k/v,
  the added projections and the outputs; RoPE ids [the box centre; the tokens' own]);
  ``layout_scale · layout_forward(image part)`` scatter-added, averaged over overlapping boxes,
  times the recomputed gate, added; the image FF again on all image tokens (LoRA on ``ff.net.2``);
  the layout tokens get their attention output and FF (LoRA on ``ff_context.net.2``);
* single block: [layout token; box tokens] through ``norm``, ``proj_mlp``, attention and
  ``proj_out`` (LoRA on), the image part through ``layout_forward``, scaled, averaged, added.

As in the official code, any non-zero ``layout_scale`` runs the branch (its extra FF pass does not
depend on the scale), and a box becomes tokens by truncation (``int()``) on every edge.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io.errors import InputError
from ..models.layout_tokens import dense_box_points, fourier_features
from .steps import StepCounter

ADAPTER = "instanceassemble"
MAX_OBJECTS = 50


class _MLP(nn.Module):
    def __init__(self, inputs: int, hidden: int, outputs: int):
        super().__init__()
        self.linear_1 = nn.Linear(inputs, hidden)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class LayoutEncoder(nn.Module):
    """InstanceAssemble's layout net: ``linears(cat[text_embedder(e) · m, fourier(box points) · m])``."""

    def __init__(self, text_dim: int, text_hidden: int, fourier_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.text_embedder = _MLP(text_dim, text_hidden, text_hidden)
        self.linears = _MLP(text_hidden + fourier_dim, hidden, out_dim)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> LayoutEncoder:
        text = state["text_embedder.linear_1.weight"]
        first = state["linears.linear_1.weight"]
        out = state["linears.linear_2.weight"]
        encoder = cls(text.shape[1], text.shape[0], first.shape[1] - text.shape[0], first.shape[0], out.shape[0])
        encoder.load_state_dict(state, strict=True)
        return encoder

    def forward(self, boxes: torch.Tensor, masks: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        mask = masks.to(boxes.dtype)[..., None]
        fourier = fourier_features(boxes)
        return self.linears(torch.cat([self.text_embedder(text_embeddings) * mask, fourier * mask], -1))


@dataclass
class IALayout:
    """One layout for the branch: ``boxes [1, K, 72]`` (6×6 dense points), ``masks [1, K]``,
    ``text_embeddings [1, K, P]`` (pooled CLIP), ``text_ids [K, 3]`` and the image tokens of each box."""

    boxes: torch.Tensor
    masks: torch.Tensor
    text_embeddings: torch.Tensor
    text_ids: torch.Tensor
    image_indices: list[torch.Tensor]


def box_indices(box, latent_h: int, latent_w: int) -> torch.Tensor:
    """Row-major image-token indices of a normalised box: ``int()`` on every edge, end exclusive,
    a zero-width span made one token wide."""
    x1, y1, x2, y2 = (float(v) for v in box)
    c1, c2 = int(x1 * latent_w), int(x2 * latent_w)
    r1, r2 = int(y1 * latent_h), int(y2 * latent_h)
    c2, r2 = max(c2, c1 + 1), max(r2, r1 + 1)
    rows, cols = np.meshgrid(np.arange(r1, r2), np.arange(c1, c2), indexing="ij")
    return torch.from_numpy((rows * latent_w + cols).reshape(-1)).long()


def ia_layout(boxes: np.ndarray, text_embeddings: torch.Tensor, latent_h: int, latent_w: int,
              max_objects: int | None = None) -> IALayout:
    """The branch's inputs from ``[N, 4]`` normalised boxes and ``[N, P]`` pooled text embeddings
    (padded with empty slots to ``max_objects``)."""
    count = len(boxes)
    slots = max_objects or count
    if count > slots or count > MAX_OBJECTS:
        raise InputError(f"instanceassemble: {count} instances exceed its {min(slots, MAX_OBJECTS)} slots")
    box_tensor = torch.zeros(1, slots, 4)
    box_tensor[0, :count] = torch.as_tensor(np.asarray(boxes, np.float32))
    points = dense_box_points(box_tensor)
    masks = torch.zeros(1, slots)
    masks[0, :count] = 1
    points = points * masks[..., None]
    embeddings = torch.zeros(1, slots, text_embeddings.shape[-1], dtype=text_embeddings.dtype)
    embeddings[0, :count] = text_embeddings[:count]
    text_ids = torch.zeros(slots, 3)
    indices = []
    for k in range(slots):
        if k >= count:
            indices.append(torch.zeros(0, dtype=torch.long))
            continue
        x1, y1, x2, y2 = (float(v) for v in boxes[k])
        text_ids[k, 1] = (int(y1 * latent_h) + int(y2 * latent_h)) / 2
        text_ids[k, 2] = (int(x1 * latent_w) + int(x2 * latent_w)) / 2
        indices.append(box_indices(boxes[k], latent_h, latent_w))
    return IALayout(points, masks, embeddings, text_ids, indices)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """FLUX's rotary embedding with a per-sample table: ``x [B, S, H, D]``, ``cos/sin [B, S, D]``."""
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos[:, :, None] + rotated.float() * sin[:, :, None]).to(x.dtype)


def _joint_attention(attn, image: torch.Tensor, context: torch.Tensor | None, cos, sin, valid: torch.Tensor):
    """One attention module over a padded batch: ``[context; image]`` per sample, padded keys
    masked; returns ``(image_out, context_out)`` (projected as the module's processor would)."""
    from diffusers.models.transformers.transformer_flux import _get_qkv_projections

    query, key, value, c_query, c_key, c_value = _get_qkv_projections(attn, image, context)
    query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
    key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
    value = value.unflatten(-1, (-1, attn.head_dim))
    if context is not None:
        query = torch.cat([attn.norm_added_q(c_query.unflatten(-1, (-1, attn.head_dim))), query], 1)
        key = torch.cat([attn.norm_added_k(c_key.unflatten(-1, (-1, attn.head_dim))), key], 1)
        value = torch.cat([c_value.unflatten(-1, (-1, attn.head_dim)), value], 1)
    query, key = _rotate(query, cos, sin), _rotate(key, cos, sin)
    mask = valid[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2),
                                                           value.transpose(1, 2), attn_mask=mask)
    out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
    if context is None:
        return out, None
    context_out, image_out = out[:, :context.shape[1]], out[:, context.shape[1]:]
    return attn.to_out[1](attn.to_out[0](image_out)), attn.to_add_out(context_out)


class InstanceAssembleFlux:
    """The released InstanceAssemble weights attached to a diffusers FLUX transformer."""

    def __init__(self, transformer, layout_state: dict[str, torch.Tensor], lora_state: dict | None = None,
                 batched: bool = True):
        self.transformer = transformer
        self.batched = batched
        self._layout_blocks(transformer.config)
        encoder_state = {k[len("layout_net."):]: v for k, v in layout_state.items() if k.startswith("layout_net.")}
        if not encoder_state:
            raise InputError("instanceassemble layout weights: no layout_net.* keys (not an InstanceAssemble "
                             "layout file?)")
        self.encoder = LayoutEncoder.from_state_dict(encoder_state).to(transformer.dtype)
        self.layout_forward = nn.ModuleDict()
        for name in self._block_names():
            weight = layout_state.get(f"{name}.layout_forward.weight")
            if weight is None:
                raise InputError(f"instanceassemble layout weights: {name}.layout_forward missing")
            linear = nn.Linear(weight.shape[1], weight.shape[0])
            linear.load_state_dict({"weight": weight, "bias": layout_state[f"{name}.layout_forward.bias"]})
            self.layout_forward[name.replace(".", "_")] = linear.to(transformer.dtype)
        self.lora_layers: list = []
        if lora_state:
            transformer.load_lora_adapter(lora_state, prefix="transformer", adapter_name=ADAPTER)
            from peft.tuners.lora import LoraLayer

            self.lora_layers = {name: m for name, m in transformer.named_modules() if isinstance(m, LoraLayer)}
            self.lora_scales = {name: dict(m.scaling) for name, m in self.lora_layers.items()}
            self._set_lora(self.lora_layers.values(), on=False)
        else:
            self.lora_layers, self.lora_scales = {}, {}
        self._hooks: list = []
        self._state: dict = {}

    def _block_names(self) -> list[str]:
        return ([f"transformer_blocks.{i}" for i in self.double_blocks]
                + [f"single_transformer_blocks.{i}" for i in self.single_blocks])

    def _block_hooks(self):
        return ([(f"transformer_blocks.{i}", self._double_hook) for i in self.double_blocks]
                + [(f"single_transformer_blocks.{i}", self._single_hook) for i in self.single_blocks])

    def _layout_blocks(self, config) -> None:
        self.double_blocks = [i for i in range(config.num_layers) if i % 3 == 0]
        self.single_blocks = [0] if config.num_single_layers else []

    # -- LoRA switching ----------------------------------------------------------------------------

    def _set_lora(self, modules, on: bool) -> None:
        names = {id(m): n for n, m in self.lora_layers.items()}
        for module in modules:
            name = names.get(id(module))
            if name is None:
                continue
            for adapter, scale in self.lora_scales[name].items():
                module.scaling[adapter] = scale if on else 0.0

    @contextlib.contextmanager
    def _lora_on(self, *modules):
        self._set_lora(modules, on=True)
        try:
            yield
        finally:
            self._set_lora(modules, on=False)

    # -- activation --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def layout(self, layout: IALayout, img_ids: torch.Tensor | None, scale: float | None = 1.0):
        """Within this context every transformer call runs the layout branch with ``scale``
        (``self.scale`` may be changed between calls, e.g. by the grounding schedule)."""
        self.scale = scale
        transformer = self.transformer
        device, dtype = transformer.device, transformer.dtype
        valid = [k for k in range(layout.masks.shape[1]) if layout.masks[0, k] == 1]
        ropes = [] if img_ids is None else [
            transformer.pos_embed(torch.cat([layout.text_ids[k:k + 1].to(device),
                                             img_ids[layout.image_indices[k].to(device)]], 0)) for k in valid]
        self._state = {"layout": layout, "valid": valid, "ropes": ropes, "tokens": None}

        def start(module, args, kwargs):
            with torch.no_grad() if not torch.is_grad_enabled() else contextlib.nullcontext():
                self._state["tokens"] = self.encoder(layout.boxes.to(device, dtype), layout.masks.to(device),
                                                     layout.text_embeddings.to(device, dtype))

        self._hooks = [transformer.register_forward_pre_hook(start, with_kwargs=True)]
        for name, hook in self._block_hooks():
            block = transformer.get_submodule(name)
            self._hooks.append(block.register_forward_hook(hook(name.replace(".", "_")), with_kwargs=True))
        try:
            yield self
        finally:
            for hook in self._hooks:
                hook.remove()
            self._hooks, self._state = [], {}

    def _padded(self, hidden: torch.Tensor, tokens: torch.Tensor):
        """Per valid instance: its box tokens of ``hidden [1, L, D]`` padded to one length, the
        layout tokens ``[K, 1, D]``, RoPE tables and key masks for ``[layout; image]``."""
        layout, valid, ropes = self._state["layout"], self._state["valid"], self._state["ropes"]
        lengths = [len(layout.image_indices[k]) for k in valid]
        longest = max(lengths)
        image = hidden.new_zeros(len(valid), longest, hidden.shape[-1])
        cos = sin = None
        if ropes:
            cos = hidden.new_zeros(len(valid), longest + 1, ropes[0][0].shape[-1], dtype=torch.float32)
            sin = torch.zeros_like(cos)
        mask = torch.zeros(len(valid), longest + 1, dtype=torch.bool, device=hidden.device)
        for row, (k, n) in enumerate(zip(valid, lengths)):
            image[row, :n] = hidden[0, layout.image_indices[k].to(hidden.device)]
            if ropes:
                cos[row, :n + 1], sin[row, :n + 1] = ropes[row][0].float(), ropes[row][1].float()
            mask[row, :n + 1] = True  # [layout token; box tokens] valid, the rest padding
        return image, tokens[0, valid][:, None], cos, sin, mask, lengths

    def _scatter_mean(self, hidden: torch.Tensor, outputs: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        layout, valid = self._state["layout"], self._state["valid"]
        total = torch.zeros_like(hidden[0])
        count = torch.zeros(hidden.shape[1], device=hidden.device, dtype=hidden.dtype)
        for row, (k, n) in enumerate(zip(valid, lengths)):
            index = layout.image_indices[k].to(hidden.device)
            total.index_add_(0, index, outputs[row, :n])
            count.index_add_(0, index, torch.ones(n, device=hidden.device, dtype=hidden.dtype))
        return (total / (count + (count == 0))[:, None])[None]

    def _attention(self, attn, image, context, cos, sin, mask, single: bool):
        """The batched form, or the official per-instance loop through the module's own processor."""
        if self.batched:
            if single:
                out, _ = _joint_attention(attn, torch.cat([context, image], 1), None, cos, sin, mask)
                return out
            return _joint_attention(attn, image, context, cos, sin, mask)
        outs, context_outs = [], []
        for row in range(len(image)):
            n = int(mask[row].sum()) - 1
            rope = (cos[row, :n + 1], sin[row, :n + 1])
            if single:
                out = attn(hidden_states=torch.cat([context[row:row + 1], image[row:row + 1, :n]], 1),
                           image_rotary_emb=rope)
                outs.append(torch.nn.functional.pad(out, (0, 0, 0, image.shape[1] - n)))
            else:
                img_out, ctx_out = attn(hidden_states=image[row:row + 1, :n], encoder_hidden_states=context[row:row + 1],
                                        image_rotary_emb=rope)
                outs.append(torch.nn.functional.pad(img_out, (0, 0, 0, image.shape[1] - n)))
                context_outs.append(ctx_out)
        if single:
            return torch.cat(outs, 0)
        return torch.cat(outs, 0), torch.cat(context_outs, 0)

    def _per_row(self, row):
        """A forward hook running ``row(block, hidden [1, L, D], temb [1, D], tokens [1, K, D])`` for
        each batch row (classifier-free guidance batches the prompts; the layout is the same)."""
        def hook(block, args, kwargs, output):
            if not self.scale or not self._state["valid"]:
                return output
            encoder_hidden, hidden = output
            temb = kwargs.get("temb", args[2] if len(args) > 2 else None)
            tokens = self._state["tokens"]
            if tokens.shape[0] != hidden.shape[0]:
                tokens = tokens.expand(hidden.shape[0], -1, -1)
            rows = [row(block, hidden[b:b + 1], temb[b:b + 1], tokens[b:b + 1]) for b in range(hidden.shape[0])]
            self._state["tokens"] = torch.cat([r[1] for r in rows], 0)
            return encoder_hidden, torch.cat([r[0] for r in rows], 0)

        return hook

    def _image_update(self, block, name, hidden, image_out, lengths, gate_msa, shift_mlp, scale_mlp, gate_mlp):
        """Scaled ``layout_forward`` of the branch, averaged over overlapping boxes and gated, then the
        image FF once more over every image token (LoRA on ``ff.net.2``)."""
        added = self._scatter_mean(hidden, self.scale * self.layout_forward[name](image_out), lengths)
        hidden = hidden + gate_msa.unsqueeze(1) * added
        with self._lora_on(block.ff.net[2]):
            normed = block.norm2(hidden) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            return hidden + gate_mlp.unsqueeze(1) * block.ff(normed)

    def _token_update(self, block, tokens, context_out, gate_msa, shift_mlp, scale_mlp, gate_mlp):
        """The layout tokens take their attention output and their FF (LoRA on ``ff_context.net.2``)."""
        attended = torch.zeros_like(tokens)
        attended[0, self._state["valid"]] = context_out[:, 0]
        tokens = tokens + gate_msa.unsqueeze(1) * attended
        with self._lora_on(block.ff_context.net[2]):
            normed = block.norm2_context(tokens) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            return tokens + gate_mlp.unsqueeze(1) * block.ff_context(normed)

    def _double_hook(self, name: str):
        def row(block, hidden, temb, tokens):
            with self._lora_on(block.norm1.linear, block.norm1_context.linear):
                norm_hidden, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(hidden, emb=temb)
                norm_tokens, l_gate_msa, l_shift_mlp, l_scale_mlp, l_gate_mlp = block.norm1_context(tokens, emb=temb)
            image, context, cos, sin, mask, lengths = self._padded(norm_hidden, norm_tokens)
            attn = block.attn
            with self._lora_on(attn.to_q, attn.to_k, attn.to_v, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj,
                               attn.to_out[0], attn.to_add_out):
                image_out, context_out = self._attention(attn, image, context, cos, sin, mask, single=False)
            hidden = self._image_update(block, name, hidden, image_out, lengths, gate_msa, shift_mlp, scale_mlp,
                                        gate_mlp)
            tokens = self._token_update(block, tokens, context_out, l_gate_msa, l_shift_mlp, l_scale_mlp, l_gate_mlp)
            return hidden, tokens

        return self._per_row(row)

    def _single_hook(self, name: str):
        def row(block, hidden, temb, tokens):
            image, context, cos, sin, mask, lengths = self._padded(hidden, tokens)
            sequence = torch.cat([context, image], 1)
            with self._lora_on(block.norm.linear, block.proj_mlp):
                normed, gate = block.norm(sequence, emb=temb.expand(len(sequence), -1))
                mlp = block.act_mlp(block.proj_mlp(normed))
            attn = block.attn
            with self._lora_on(attn.to_q, attn.to_k, attn.to_v):
                attended = self._attention(attn, normed[:, 1:], normed[:, :1], cos, sin, mask, single=True)
            with self._lora_on(block.proj_out):
                out = gate.unsqueeze(1) * block.proj_out(torch.cat([attended, mlp], 2))
            added = self._scatter_mean(hidden, self.scale * self.layout_forward[name](out[:, 1:]), lengths)
            hidden = hidden + added
            layout_add = torch.zeros_like(tokens)
            layout_add[0, self._state["valid"]] = out[:, 0]
            return hidden, tokens + layout_add

        return self._per_row(row)


def _sd3_attention(attn, image: torch.Tensor, context: torch.Tensor, valid: torch.Tensor):
    """SD3's joint attention (``[image; context]``, diffusers' ``JointAttnProcessor2_0`` order) over
    a padded batch with padded keys masked."""
    batch, heads = image.shape[0], attn.heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

    query, key, value = split(attn.to_q(image)), split(attn.to_k(image)), split(attn.to_v(image))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    c_query, c_key, c_value = split(attn.add_q_proj(context)), split(attn.add_k_proj(context)), split(
        attn.add_v_proj(context))
    if attn.norm_added_q is not None:
        c_query = attn.norm_added_q(c_query)
    if attn.norm_added_k is not None:
        c_key = attn.norm_added_k(c_key)
    query, key, value = (torch.cat(pair, 2) for pair in ((query, c_query), (key, c_key), (value, c_value)))
    keys = torch.cat([valid[:, 1:], valid[:, :1]], 1)  # the mask is [layout; image]: reorder to [image; layout]
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=keys[:, None, None, :])
    out = out.transpose(1, 2).reshape(batch, -1, heads * out.shape[-1]).to(query.dtype)
    image_out, context_out = out[:, :image.shape[1]], out[:, image.shape[1]:]
    if not attn.context_pre_only:
        context_out = attn.to_add_out(context_out)
    return attn.to_out[1](attn.to_out[0](image_out)), context_out


class InstanceAssembleSD3(InstanceAssembleFlux):
    """The SD3 form: the layout branch after every joint block (no RoPE: SD3's positions are in its
    patch embedding); the last block, whose context is pre-only, does not update the layout tokens."""

    def _layout_blocks(self, config) -> None:
        self.double_blocks = list(range(config.num_layers))
        self.single_blocks = []

    def _block_hooks(self):
        return [(f"transformer_blocks.{i}", self._joint_hook) for i in self.double_blocks]

    def _joint_hook(self, name: str):
        def row(block, hidden, temb, tokens):
            pre_only = block.context_pre_only
            with self._lora_on(block.norm1.linear, block.norm1_context.linear):
                norm_hidden, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(hidden, emb=temb)[:5]
                if pre_only:
                    norm_tokens = block.norm1_context(tokens, temb)
                else:
                    norm_tokens, l_gate_msa, l_shift_mlp, l_scale_mlp, l_gate_mlp = block.norm1_context(tokens, emb=temb)
            image, context, _, _, mask, lengths = self._padded(norm_hidden, norm_tokens)
            attn = block.attn
            with self._lora_on(attn.to_q, attn.to_k, attn.to_v, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj,
                               attn.to_out[0], getattr(attn, "to_add_out", None)):
                if self.batched:
                    image_out, context_out = _sd3_attention(attn, image, context, mask)
                else:
                    outs, context_outs = [], []
                    for index, n in enumerate(lengths):
                        img_out, ctx_out = attn(hidden_states=image[index:index + 1, :n],
                                                encoder_hidden_states=context[index:index + 1])
                        outs.append(torch.nn.functional.pad(img_out, (0, 0, 0, image.shape[1] - n)))
                        context_outs.append(ctx_out)
                    image_out, context_out = torch.cat(outs, 0), torch.cat(context_outs, 0)
            hidden = self._image_update(block, name, hidden, image_out, lengths, gate_msa, shift_mlp, scale_mlp,
                                        gate_mlp)
            if not pre_only:
                tokens = self._token_update(block, tokens, context_out, l_gate_msa, l_shift_mlp, l_scale_mlp,
                                            l_gate_mlp)
            return hidden, tokens

        return self._per_row(row)


def load_instanceassemble(transformer, folder: str | Path, allow_pickle: bool = False,
                          batched: bool = True) -> InstanceAssembleFlux:
    """The released checkpoint folder: ``pytorch_lora_weights.safetensors`` and the layout file
    (``layout.safetensors``, or the released ``layout.pth`` — a pickle: ``allow_pickle`` loads it
    with ``weights_only=True``)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: InstanceAssemble checkpoint folder not found (get the released "
                         "FireRedTeam/InstanceAssemble weights: pytorch_lora_weights.safetensors + layout.pth)")
    lora_path = folder / "pytorch_lora_weights.safetensors"
    if not lora_path.is_file():
        raise InputError(f"{lora_path}: missing (the InstanceAssemble LoRA)")
    if (folder / "layout.safetensors").is_file():
        layout_state = load_file(folder / "layout.safetensors")
    elif (folder / "layout.pth").is_file():
        if not allow_pickle:
            raise InputError(f"{folder / 'layout.pth'}: a pickle; pass --trust-pickle to load it (weights_only=True), "
                             "or convert it to layout.safetensors")
        layout_state = torch.load(folder / "layout.pth", map_location="cpu", weights_only=True)
    else:
        raise InputError(f"{folder}: no layout.safetensors or layout.pth (the InstanceAssemble layout weights)")
    kind = InstanceAssembleSD3 if type(transformer).__name__.startswith("SD3") else InstanceAssembleFlux
    return kind(transformer, layout_state, load_file(lora_path), batched=batched)


def layout_texts(descriptions: list[str], categories: list[str | None]) -> list[str]:
    """The text of each instance for the layout encoder, as InstanceAssemble builds it:
    ``"category, description"`` (the category alone when the description is empty)."""
    texts = []
    for description, category in zip(descriptions, categories):
        if category and description:
            texts.append(f"{category}, {description}")
        else:
            texts.append(category or description)
    return texts


class GroundingSchedule:
    """A transformer pre-hook: ``layout_scale`` for the first ``int(ratio · steps)`` denoising
    steps, 0 after (steps counted by new ``timestep`` values); records the scale of every call."""

    def __init__(self, adapter: InstanceAssembleFlux, steps: int, ratio: float = 0.3, scale: float = 1.0):
        self.adapter, self.limit, self.scale = adapter, int(ratio * steps), scale
        self.counter, self.scales = StepCounter(), []

    def __call__(self, module, args, kwargs):
        self.counter.update(kwargs)
        self.adapter.scale = self.scale if self.counter.step < self.limit else 0.0
        self.scales.append(self.adapter.scale)


def image_ids(latent_h: int, latent_w: int) -> torch.Tensor:
    """FLUX's image position ids ``[h·w, 3]``: ``(0, row, col)``, row-major."""
    rows, cols = torch.meshgrid(torch.arange(latent_h), torch.arange(latent_w), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()
