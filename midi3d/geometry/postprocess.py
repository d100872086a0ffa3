"""Mesh clean-up with pymeshlab; every step is optional and configured by :class:`PostprocessConfig`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh


@dataclass
class PostprocessConfig:
    """Clean-up steps, applied in this order.

    Attributes:
        remove_floaters: drop connected components whose bounding-box diagonal is below
            ``min_component_ratio`` of the whole mesh's diagonal.
        repair_manifold: remove faces on non-manifold edges, split non-manifold vertices.
        max_hole_edges: close holes bounded by at most this many edges (0 = off).
        target_faces: quadric decimation to this face count (0 = off).
        orient_outward: flip all faces when the mesh encloses negative volume.
    """

    remove_floaters: bool = True
    min_component_ratio: float = 0.05
    repair_manifold: bool = True
    max_hole_edges: int = 30
    target_faces: int = 0
    orient_outward: bool = True


def postprocess_mesh(mesh: trimesh.Trimesh, config: PostprocessConfig) -> trimesh.Trimesh:
    """Apply the configured clean-up; returns a new mesh with the input's metadata (the input is
    not modified)."""
    import pymeshlab

    if len(mesh.faces) == 0:
        return mesh.copy()
    meshset = pymeshlab.MeshSet()
    meshset.add_mesh(pymeshlab.Mesh(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int32)))
    meshset.meshing_remove_duplicate_vertices()
    meshset.meshing_remove_duplicate_faces()
    if config.remove_floaters:
        meshset.meshing_remove_connected_component_by_diameter(
            mincomponentdiag=pymeshlab.PercentageValue(100.0 * config.min_component_ratio))
    if config.repair_manifold:
        meshset.meshing_repair_non_manifold_edges()
        meshset.meshing_repair_non_manifold_vertices()
    if config.max_hole_edges > 0:
        try:
            meshset.meshing_close_holes(maxholesize=config.max_hole_edges)
        except pymeshlab.PyMeshLabException:
            # Hole closing refuses meshes that are still non-manifold; keep the mesh as is.
            pass
    if config.target_faces > 0 and meshset.current_mesh().face_number() > config.target_faces:
        meshset.meshing_decimation_quadric_edge_collapse(targetfacenum=config.target_faces, preservenormal=True)
    meshset.meshing_remove_unreferenced_vertices()
    current = meshset.current_mesh()
    result = trimesh.Trimesh(current.vertex_matrix(), current.face_matrix(), process=False,
                             metadata=dict(mesh.metadata))
    if config.orient_outward and result.is_watertight and result.volume < 0:
        result.invert()
    return result
