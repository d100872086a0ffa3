"""Geometry: mesh extraction from SDF query functions, mesh clean-up, point sampling."""

from .extraction import ExtractionStats, extract_dense, extract_hierarchical, extract_meshes
from .postprocess import PostprocessConfig, postprocess_mesh

__all__ = ["ExtractionStats", "PostprocessConfig", "extract_dense", "extract_hierarchical", "extract_meshes",
           "postprocess_mesh"]
