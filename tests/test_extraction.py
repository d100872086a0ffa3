"""Mesh extraction: hierarchical equals dense on analytic SDFs with far fewer queries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from midi3d.geometry import PostprocessConfig, extract_dense, extract_hierarchical, postprocess_mesh
from midi3d.geometry.extraction import dense_grids
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
