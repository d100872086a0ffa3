"""Warm starts across model sizes: copy what fits from one trained network into another.

A model whose latent size changed (e.g. the embedded model v2's 16 latent channels) keeps most
of its trained parts' shapes: every transformer block, the image encoders. Those tensors are
copied by name; tensors whose shape differs (the transformer's ``proj_in`` / ``proj_out``) keep
the target's fresh initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

PIPELINE_COMPONENTS = ("transformer", "image_encoder_1", "image_encoder_2")


@dataclass
class WarmStartReport:
    """What a warm start copied and what it left as initialised (tensor names)."""

    copied: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)   # present in both, shapes differ: left fresh
    missing: list[str] = field(default_factory=list)    # in the target only: left fresh

    def summary(self) -> str:
        return (f"{len(self.copied)} tensors copied, {len(self.reshaped)} of another shape left fresh "
                f"({', '.join(self.reshaped) or 'none'}), {len(self.missing)} absent from the donor")


def copy_matching(target: nn.Module, donor: nn.Module, prefix: str = "") -> WarmStartReport:
    """Copy every tensor of ``donor``'s state dict whose name and shape ``target`` shares."""
    donor_state = donor.state_dict()
    report = WarmStartReport()
    with torch.no_grad():
        for name, tensor in target.state_dict().items():
            label = f"{prefix}{name}"
            source = donor_state.get(name)
            if source is None:
                report.missing.append(label)
            elif source.shape != tensor.shape:
                report.reshaped.append(label)
            else:
                tensor.copy_(source.to(tensor.dtype))
                report.copied.append(label)
    return report


def warm_start_pipeline(target, donor, components: tuple[str, ...] = PIPELINE_COMPONENTS) -> WarmStartReport:
    """Copy ``components`` of the ``donor`` pipeline into ``target`` where names and shapes match."""
    report = WarmStartReport()
    for component in components:
        part = copy_matching(getattr(target, component), getattr(donor, component), f"{component}.")
        report.copied += part.copied
        report.reshaped += part.reshaped
        report.missing += part.missing
    return report


def _widen_columns(target: torch.Tensor, source: torch.Tensor) -> None:
    """Copy ``source`` [out, c] into the first ``c`` columns of ``target`` [out, C]; zero the rest."""
    target.zero_()
    target[:, : source.shape[1]] = source


def widen_latent_channels(target, donor) -> WarmStartReport:
    """Warm-start ``target`` (a pipeline with more latent channels) from ``donor``, function-preserving.

    Every tensor whose name and shape match is copied (all VAE and transformer blocks, the
    encoders). The latent-size tensors are widened so that the target computes what the donor
    does: the new latent channels enter the VAE decoder (``post_quant``) and the transformer
    (``proj_in``) through zero columns, the encoder's posterior (``quant``: mean rows, then
    log-variance rows) keeps the donor's rows for the old channels and fresh ones for the new (a
    log-variance bias of -6, as a fresh build has),
    and the transformer's ``proj_out`` keeps the donor's rows for the old channels. The extra
    channels start unused; training decides what they carry.
    """
    if donor.vae.config.get("object_frame") or target.vae.config.get("object_frame"):
        raise ValueError("widening is for scene-frame VAEs: an object-frame latent's last channels are its box")
    old = donor.vae.config.latent_channels
    new = target.vae.config.latent_channels
    if new < old:
        raise ValueError(f"cannot widen {old} latent channels to {new}")
    if target.transformer.config.in_channels != new or donor.transformer.config.in_channels != old:
        raise ValueError("the transformer's in_channels must equal the VAE's latent_channels in both pipelines")
    report = WarmStartReport()
    widened = {"vae.quant.weight", "vae.quant.bias", "vae.post_quant.weight",
               "transformer.proj_in.weight", "transformer.proj_out.weight", "transformer.proj_out.bias"}
    for component in ("vae", *PIPELINE_COMPONENTS):
        part = copy_matching(getattr(target, component), getattr(donor, component), f"{component}.")
        report.copied += part.copied
        report.missing += part.missing
        report.reshaped += [name for name in part.reshaped if name not in widened]
    with torch.no_grad():
        quant, donor_quant = target.vae.quant, donor.vae.quant
        for target_rows, donor_rows in ((slice(0, old), slice(0, old)), (slice(new, new + old), slice(old, 2 * old))):
            quant.weight[target_rows] = donor_quant.weight[donor_rows]
            quant.bias[target_rows] = donor_quant.bias[donor_rows]
        quant.bias[new + old :] = -6.0  # the new channels' posterior starts nearly deterministic, as a fresh build's
        _widen_columns(target.vae.post_quant.weight, donor.vae.post_quant.weight)
        _widen_columns(target.transformer.proj_in.weight, donor.transformer.proj_in.weight)
        target.transformer.proj_out.weight[:old] = donor.transformer.proj_out.weight
        target.transformer.proj_out.bias[:old] = donor.transformer.proj_out.bias
    report.copied += sorted(widened)
    return report


def widened_pipeline(donor, latent_channels: int, seed: int = 0):
    """A copy of the ``donor`` pipeline with ``latent_channels`` latent channels, function-preserving.

    The VAE and transformer are rebuilt from the donor's own configs with the new channel count
    (fresh weights from ``seed``) and filled by :func:`widen_latent_channels`; the image encoders,
    processors, scheduler and the defaults the folder records are the donor's.
    """
    import copy

    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        vae = type(donor.vae).from_config({**donor.vae.config, "latent_channels": latent_channels})
        transformer = type(donor.transformer).from_config({**donor.transformer.config,
                                                           "in_channels": latent_channels})
        if donor.transformer.has_layout_tokens:
            transformer.enable_layout_tokens()
    target = copy.deepcopy(donor)
    vae.train(donor.vae.training)  # the VAE's query points depend on the mode (FPS start)
    transformer.train(donor.transformer.training)
    target.register_modules(vae=vae, transformer=transformer)
    target.transformer.set_multi_instance_layers(donor.transformer.mi_layers)
    return target, widen_latent_channels(target, donor)
