"""Mesh extraction: hierarchical equals dense on analytic SDFs with far fewer queries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from midi3d.geometry import PostprocessConfig, extract_dense, extract_hierarchical, postprocess_mesh
from midi3d.geometry.extraction import dense_grids, extract_meshes
from midi3d.geometry.sampling import farthest_point_sampling


def scene_sdf(points: torch.Tensor) -> torch.Tensor:
    sphere = (points - torch.tensor([0.3, 0.2, 0.1])).norm(dim=-1) - 0.35
    q = (points - torch.tensor([-0.4, -0.3, 0.0])).abs() - torch.tensor([0.3, 0.2, 0.25])
    box = q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)
    return torch.minimum(sphere, box)


def vertex_chamfer(a, b):
    a, b = np.asarray(a.vertices), np.asarray(b.vertices)
    return (cKDTree(b).query(a)[0] ** 2).mean() + (cKDTree(a).query(b)[0] ** 2).mean()


@pytest.mark.parametrize("resolution,coarse", [(64, 16), (128, 16)])
def test_hierarchical_matches_dense(resolution, coarse):
    dense, dense_stats = extract_dense(scene_sdf, resolution=resolution)
    hier, hier_stats = extract_hierarchical(scene_sdf, resolution=resolution, coarse_resolution=coarse)
    assert len(hier.faces) == len(dense.faces)
    assert vertex_chamfer(dense, hier) < 1e-10
    assert hier_stats.num_queries * 3 < dense_stats.num_queries
    assert hier.is_watertight


def test_empty_field_gives_no_mesh():
    mesh, _ = extract_hierarchical(lambda p: p.norm(dim=-1) + 1.0, resolution=32, coarse_resolution=8)
    assert mesh is None


def test_progressive_fallback_reuses_previous_box():
    inside = lambda p: p.norm(dim=-1) - 0.3  # noqa: E731  (values <= 0 inside)
    never = lambda p: p.norm(dim=-1) + 1.0  # noqa: E731
    grids = list(dense_grids([inside, never], resolution=16, progressive=True))
    np.testing.assert_allclose(grids[1].bbox_min, grids[0].bbox_min)
    assert grids[0].bbox_max[0] < 0.5  # cropped to the sphere plus padding


def test_postprocess_removes_floaters_and_decimates():
    main, _ = extract_dense(scene_sdf, resolution=64)
    speck, _ = extract_dense(lambda p: (p - 0.8).norm(dim=-1) - 0.03, resolution=64)
    import trimesh

    both = trimesh.util.concatenate([main, speck])
    cleaned = postprocess_mesh(both, PostprocessConfig(min_component_ratio=0.1, target_faces=2000))
    assert len(cleaned.split(only_watertight=False)) == 2  # the sphere and the box; the speck is gone
    assert len(cleaned.faces) <= 2000


def test_fps_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(2, 50, 3, generator=g)
    idx = farthest_point_sampling(pts, 10)
    for b in range(2):
        chosen = [0]
        d = ((pts[b] - pts[b, 0]) ** 2).sum(-1)
        for _ in range(9):
            nxt = int(torch.argmax(d))
            chosen.append(nxt)
            d = torch.minimum(d, ((pts[b] - pts[b, nxt]) ** 2).sum(-1))
        assert idx[b].tolist() == chosen


@pytest.mark.parametrize("method", ["hierarchical", "dense"])
def test_an_instance_without_surface_is_meshed_at_the_first_fallback_level_that_has_one(method):
    """A field that stays above zero (its minimum 0.03 at the origin) gives no mesh by default; with
    fallback levels the first one above its minimum meshes it, and the stats say which."""
    faint = lambda p: (p - torch.tensor([0.2, 0.0, 0.0])).norm(dim=-1) + 0.03  # noqa: E731
    solid = lambda p: p.norm(dim=-1) - 0.3  # noqa: E731
    meshes, stats = extract_meshes([solid, faint], method, resolution=32, coarse_resolution=8)
    assert meshes[0] is not None and meshes[1] is None and stats.fallback_levels == {}
    meshes, fallback = extract_meshes([solid, faint], method, resolution=32, coarse_resolution=8,
                                      fallback_levels=(0.01, 0.2, 0.5))
    assert stats.num_queries < fallback.num_queries
    assert fallback.fallback_levels == {1: 0.2}  # 0.01 is below the field's minimum: no surface there
    centre = meshes[1].bounds.mean(axis=0)
    np.testing.assert_allclose(centre, [0.2, 0.0, 0.0], atol=0.04)  # the level set around the minimum
    assert 0.1 < np.ptp(meshes[1].vertices[:, 1]) < 0.4  # radius 0.2 - 0.03 = 0.17
    assert len(meshes[0].faces) == len(extract_meshes([solid], method, resolution=32, coarse_resolution=8)[0][0].faces)
    meshes, stats = extract_meshes([lambda p: p.norm(dim=-1) + 1.0], method, resolution=16, coarse_resolution=8,
                                   fallback_levels=(0.1, 0.5))
    assert meshes == [None] and stats.fallback_levels == {}


@pytest.mark.parametrize("levels", [(0.2, 0.1), (0.0,), (float("nan"),), (-0.1,), tuple(range(1, 10))])
def test_bad_fallback_levels_are_refused(levels):
    with pytest.raises(ValueError, match="increasing finite numbers > 0"):
        extract_meshes([lambda p: p.norm(dim=-1)], resolution=8, coarse_resolution=8, fallback_levels=levels)


def test_postprocess_keeps_the_mesh_metadata():
    """The clean-up makes a new mesh; what the mesh records (e.g. its fallback level) survives it."""
    mesh, _ = extract_dense(scene_sdf, resolution=32)
    mesh.metadata["midi3d_fallback_level"] = 0.2
    cleaned = postprocess_mesh(mesh, PostprocessConfig())
    assert cleaned is not mesh and cleaned.metadata["midi3d_fallback_level"] == 0.2


@pytest.mark.parametrize("method", ["hierarchical", "dense"])
def test_instance_bounds_mesh_each_instance_in_its_own_box_at_full_resolution(method):
    """With one box per instance the grid spans that box (R cells per axis): a small sphere meshed
    at 16 cells across its own box is far closer to the true radius than at 16 across the scene,
    and a fallback level still applies inside its box."""
    small = lambda p: (p - torch.tensor([0.5, -0.4, 0.2])).norm(dim=-1) - 0.08  # noqa: E731
    faint = lambda p: (p + torch.tensor([0.5, 0.0, 0.0])).norm(dim=-1) + 0.02  # noqa: E731
    bounds = [(np.array([0.38, -0.52, 0.08]), np.array([0.62, -0.28, 0.32])),
              (np.array([-0.8, -0.3, -0.3]), np.array([-0.2, 0.3, 0.3]))]
    meshes, stats = extract_meshes([small, faint], method, resolution=16, coarse_resolution=8,
                                   instance_bounds=bounds, fallback_levels=(0.1,))
    scene, _ = extract_meshes([small], method, resolution=16, coarse_resolution=8, progressive=False)

    def radius_error(mesh) -> float:
        return float(np.abs(np.linalg.norm(mesh.vertices - [0.5, -0.4, 0.2], axis=1) - 0.08).mean())

    assert radius_error(meshes[0]) < 0.01  # cells of 0.015
    assert scene[0] is None or radius_error(scene[0]) > 0.01  # across the scene (cells of 0.125): missed or coarse
    assert (meshes[0].bounds[0] >= bounds[0][0]).all() and (meshes[0].bounds[1] <= bounds[0][1]).all()
    assert stats.fallback_levels == {1: 0.1} and meshes[1].metadata["midi3d_fallback_level"] == 0.1
    with pytest.raises(ValueError, match="2 boxes for 1 instances"):
        extract_meshes([small], method, resolution=16, instance_bounds=bounds)
    with pytest.raises(ValueError, match="empty box"):
        extract_meshes([small], method, resolution=16, instance_bounds=[(np.zeros(3), np.zeros(3))])
