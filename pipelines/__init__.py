"""Pipelines: the MIDI diffusion pipeline and the image-to-scene front end.

``MIDIPipeline``, ``MIDIPipelineOutput`` and ``ExtractionOptions`` are imported on first use
(PEP 562), so that light modules such as :mod:`.sampling` load without torch and diffusers.
"""

__all__ = ["ExtractionOptions", "MIDIPipeline", "MIDIPipelineOutput"]


def __getattr__(name: str):
    if name in __all__:
        from . import pipeline_midi

        return getattr(pipeline_midi, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
