"""Samplers."""

from .rectified_flow import RectifiedFlowScheduler

__all__ = ["RectifiedFlowScheduler"]
