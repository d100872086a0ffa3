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
