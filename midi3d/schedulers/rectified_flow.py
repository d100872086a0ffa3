"""Euler sampler for rectified flow, compatible with the official ``RectifiedFlowScheduler`` config.

diffusers' ``FlowMatchEulerDiscreteScheduler`` is not reused: its default sigma grid ends at
``1/num_train_timesteps`` instead of ``1 - (n-1)/n``, and its update subtracts the velocity,
whereas the MIDI velocity is *data minus noise* and is added:
``x_{i+1} = x_i + (sigma_i - sigma_{i+1}) * v_i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from torch import Tensor


@dataclass
class RectifiedFlowSchedulerOutput(BaseOutput):
    prev_sample: Tensor


class RectifiedFlowScheduler(SchedulerMixin, ConfigMixin):
    """sigma_i = shift(1 - i/n) for i < n, sigma_n = 0; timesteps = 1000 * sigma (float32)."""

    official_class_name = "RectifiedFlowScheduler"
    official_module = "midi.schedulers.scheduling_rectified_flow"
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0, use_dynamic_shifting: bool = False):
        self.timesteps: Tensor | None = None
        self.sigmas: Tensor | None = None
        self._step_index: int | None = None

    def _shift(self, sigmas: np.ndarray, mu: float | None) -> np.ndarray:
        if self.config.use_dynamic_shifting:
            if mu is None:
                raise ValueError("use_dynamic_shifting is set: pass mu to set_timesteps")
            return np.exp(mu) / (np.exp(mu) + 1.0 / sigmas - 1.0)
        shift = self.config.shift
        return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None,
                      mu: float | None = None) -> None:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        sigmas = 1.0 - np.arange(num_inference_steps, dtype=np.float64) / num_inference_steps
        sigmas = torch.from_numpy(self._shift(sigmas, mu)).to(torch.float32)
        self.timesteps = (sigmas * self.config.num_train_timesteps).to(device)
        self.sigmas = torch.cat([sigmas, torch.zeros(1)]).to(device)
        self._step_index = None

    @property
    def step_index(self) -> int | None:
        return self._step_index

    def _index_for(self, timestep: Tensor | float) -> int:
        matches = (self.timesteps == torch.as_tensor(timestep, device=self.timesteps.device)).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {float(timestep)} is not in the schedule")
        return int(matches[0])

    def step(self, model_output: Tensor, timestep: Tensor | float, sample: Tensor,
             return_dict: bool = True) -> RectifiedFlowSchedulerOutput | tuple[Tensor]:
        """One Euler step; ``model_output`` estimates ``x_0 - noise``."""
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps before step")
        if self._step_index is None:
            self._step_index = self._index_for(timestep)
        sigma = self.sigmas[self._step_index]
        sigma_next = self.sigmas[self._step_index + 1]
        prev = sample.to(torch.float32) + (sigma - sigma_next) * model_output
        prev = prev.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev,)
        return RectifiedFlowSchedulerOutput(prev_sample=prev)

    def scale_noise(self, sample: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
        """Forward process ``x_sigma = (1 - sigma) * x_0 + sigma * noise`` (``sigma`` broadcast)."""
        while sigma.ndim < sample.ndim:
            sigma = sigma[..., None]
        return (1.0 - sigma) * sample + sigma * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps
