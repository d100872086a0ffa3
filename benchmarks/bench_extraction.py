"""Mesh extraction: hierarchical vs dense at the same effective resolution on an analytic SDF.

The field is a scene of several boxes and spheres in [-1, 1]^3. Prints SDF queries, wall time
and the symmetric Chamfer distance between the two meshes' vertex sets (mean squared
nearest-neighbour distance, both directions).

    .venv/bin/python benchmarks/bench_extraction.py [--resolution 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy.spatial import cKDTree

from midi3d.geometry import extract_dense, extract_hierarchical

SPHERES = torch.tensor([[0.45, 0.35, 0.1, 0.25], [-0.5, 0.55, -0.4, 0.18], [0.1, -0.6, 0.5, 0.22]])
BOXES = torch.tensor([  # centre xyz, half extents xyz
    [-0.4, -0.3, 0.0, 0.3, 0.2, 0.25],
    [0.5, -0.4, -0.5, 0.2, 0.35, 0.15],
    [-0.1, 0.2, 0.6, 0.35, 0.08, 0.2],
    [0.0, -0.85, -0.2, 0.6, 0.05, 0.6],
])


def scene_sdf(points: torch.Tensor) -> torch.Tensor:
    d = (points[:, None, :] - SPHERES[None, :, :3]).norm(dim=-1) - SPHERES[None, :, 3]
    q = (points[:, None, :] - BOXES[None, :, :3]).abs() - BOXES[None, :, 3:]
    box = q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)
    return torch.cat([d, box], dim=1).min(dim=1).values


def vertex_chamfer(a, b) -> float:
    a, b = np.asarray(a.vertices), np.asarray(b.vertices)
    return float((cKDTree(b).query(a, workers=-1)[0] ** 2).mean() + (cKDTree(a).query(b, workers=-1)[0] ** 2).mean())


def best_time(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--coarse", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    t_dense, (dense, s_dense) = best_time(lambda: extract_dense(scene_sdf, resolution=args.resolution), args.repeats)
    t_hier, (hier, s_hier) = best_time(
        lambda: extract_hierarchical(scene_sdf, resolution=args.resolution, coarse_resolution=args.coarse),
        args.repeats)
    chamfer = vertex_chamfer(dense, hier)
    print(f"extraction at {args.resolution}^3 effective resolution (best of {args.repeats})")
    print(f"{'':14}{'queries':>12}{'seconds':>10}{'faces':>10}")
    print(f"{'dense':14}{s_dense.num_queries:>12,}{t_dense:>10.3f}{len(dense.faces):>10,}")
    print(f"{'hierarchical':14}{s_hier.num_queries:>12,}{t_hier:>10.3f}{len(hier.faces):>10,}")
    print(f"query ratio {s_dense.num_queries / s_hier.num_queries:.1f}x (target >= 10), "
          f"time ratio {t_dense / t_hier:.1f}x (target >= 5), chamfer {chamfer:.2e} (target <= 1e-5)")


if __name__ == "__main__":
    main()
