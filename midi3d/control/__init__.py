"""Training-free instance control for the multi-instance transformer.

Three mechanisms from multi-instance image diffusion transformers, moved to the two places of
our transformer where instances meet: the self-attention of the multi-instance (MI) layers
(own-instance keys vs other instances' keys) and the DINOv2 cross-attention (the condition's
patch tokens inside the instance's mask, plus the class token, vs the rest):

* grounding schedule (InstanceAssemble): MI attention only in the first ``ratio`` of the steps;
* specialty tuning (AST): attention probabilities pulled towards a target map,
  ``P <- rownorm(P * exp(s * w * tau(t) * (M - P)))``;
* isolation masks (3DIS): hard masks until a step threshold.

:class:`ControlConfig` holds the settings (YAML, presets in ``configs/control``);
:class:`StepControl` is what one denoising step hands to the attention processors.
"""

from .config import ControlConfig, IsolationRule, ReweightRule, control_presets, load_control
from .schedule import StepControl, active_steps

__all__ = ["ControlConfig", "IsolationRule", "ReweightRule", "StepControl", "active_steps", "control_presets",
           "load_control"]
