"""midi3d: one photo of a scene → a set of 3D object meshes in a shared scene frame."""

__version__ = "0.1.0"
