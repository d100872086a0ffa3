"""Pipelines: the MIDI diffusion pipeline and the image-to-scene front end."""

from .pipeline_midi import ExtractionOptions, MIDIPipeline, MIDIPipelineOutput

__all__ = ["ExtractionOptions", "MIDIPipeline", "MIDIPipelineOutput"]
