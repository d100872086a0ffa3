"""Which denoising step a transformer call belongs to, read from its ``timestep`` argument."""

from __future__ import annotations


class StepCounter:
    """A new ``timestep`` value is a new step, so several calls within one step (classifier-free
    guidance, true CFG) count once; ``step`` starts at 0 with the first call."""

    def __init__(self):
        self.step, self.last = -1, None

    def update(self, kwargs: dict) -> float | None:
        """Advance from a forward pre-hook's ``kwargs``; returns the timestep value (or ``None``)."""
        timestep = kwargs.get("timestep")
        value = float(timestep.flatten()[0]) if timestep is not None else None
        if value != self.last:
            self.last, self.step = value, self.step + 1
        return value
