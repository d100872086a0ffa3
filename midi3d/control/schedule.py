"""Which control acts at which (step, layer): what one denoising step hands to the processors."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from ..models.layer_spec import parse_layer_list
from .config import MI_LAYERS, ControlConfig, IsolationRule, ReweightRule


def active_steps(fraction: float, num_steps: int, start: float = 0.0) -> range:
    """The step indices of ``[start, fraction)`` of an ``num_steps``-step run: from
    ``ceil(start * n)`` up to ``ceil(fraction * n)`` (exclusive), so ``fraction=0.3`` of 25 steps
    is steps 0-7 and ``1.0`` is every step."""
    def edge(value: float) -> int:
        return min(num_steps, math.ceil(round(value * num_steps, 9)))
    return range(edge(start), edge(fraction))


@dataclass(frozen=True)
class ControlPlan:
    """A config resolved against one transformer: rule layers as index sets, checked once per call."""

    config: ControlConfig
    grounding_layers: frozenset[int]
    reweight: tuple[tuple[ReweightRule, frozenset[int]], ...]
    isolation: tuple[tuple[IsolationRule, frozenset[int]], ...]

    @classmethod
    def resolve(cls, config: ControlConfig, num_layers: int, mi_layers: tuple[int, ...]) -> ControlPlan:
        def layers(spec, place: str, what: str) -> frozenset[int]:
            if isinstance(spec, str) and spec == MI_LAYERS:
                return frozenset(mi_layers)
            chosen = parse_layer_list(spec, num_layers)
            chosen = set(mi_layers) if chosen is None else set(chosen)
            if place == "instances" and not chosen <= set(mi_layers):
                raise ValueError(f"control {what}: layers {sorted(chosen - set(mi_layers))} are not multi-instance "
                                 f"(this model's MI layers: {list(mi_layers) or 'none'})")
            return frozenset(chosen)

        return cls(config, layers(config.grounding_layers, "instances", "grounding_layers"),
                   tuple((r, layers(r.layers, r.place, f"reweight[{i}]")) for i, r in enumerate(config.reweight)),
                   tuple((r, layers(r.layers, r.place, f"isolation[{i}]")) for i, r in enumerate(config.isolation)))

    def needs_image_regions(self) -> bool:
        """Whether a rule acts on the DINOv2 cross-attention (the pipeline then computes regions)."""
        return any(rule.place == "image" for rule, _ in (*self.reweight, *self.isolation))

    def step(self, step: int, num_steps: int, timestep: float, image_regions: Tensor | None) -> StepControl:
        return StepControl(self, step, num_steps, float(timestep), image_regions)


@dataclass(frozen=True)
class StepControl:
    """The controls of one denoising step, asked for by each processor with its layer index.

    ``image_regions``: ``[B, S2]`` bool, the condition tokens (class token first) that belong to
    each batch row's instance; needed by rules on the ``image`` place.
    """

    plan: ControlPlan
    step: int
    num_steps: int
    timestep: float  # 0-1000
    image_regions: Tensor | None = None

    def _active(self, until: float, start: float = 0.0) -> bool:
        return self.step in active_steps(until, self.num_steps, start)

    def instances_joint(self, layer: int) -> bool:
        """Whether the MI layer ``layer`` attends across instances at this step."""
        if layer in self.plan.grounding_layers and not self._active(self.plan.config.grounding_ratio):
            return False
        return not any(rule.place == "instances" and layer in layers and self._active(rule.until)
                       for rule, layers in self.plan.isolation)

    def image_isolated(self, layer: int) -> bool:
        """Whether layer ``layer``'s DINOv2 cross-attention is masked to each instance's own region."""
        return any(rule.place == "image" and layer in layers and self._active(rule.until)
                   for rule, layers in self.plan.isolation)

    def reweights(self, place: str, layer: int) -> list[tuple[ReweightRule, float]]:
        """The reweighting rules on ``place`` at ``layer`` now, each with its ``tau = (t/1000)^decay``
        (a rule of weight 0 changes nothing and is left out: the plain kernel runs)."""
        return [(rule, (self.timestep / 1000.0) ** rule.decay) for rule, layers in self.plan.reweight
                if rule.weight != 0.0 and rule.place == place and layer in layers
                and self._active(rule.until, rule.start)]
