"""Projected textures: colour instance meshes from the photo through the estimated camera."""

from .texturing import TEXTURE_MODES, TexturedMeshes, TextureOptions, texture_meshes

__all__ = ["TEXTURE_MODES", "TextureOptions", "TexturedMeshes", "texture_meshes"]
