"""Scene-level metric computation: KD-tree neighbours vs the brute-force dense-distance formulation.

One 7-object scene with 20,480 points per object (the official protocol's sizes): ICP (official
mode) + Chamfer + F-score at scene level, in one run with each backend (KD-tree; float32 dense distances). Prints both times and
their ratio (target >= 100x). Both backends run the same number of ICP iterations (``--icp-iterations``,
default 2 to keep the float32 brute-force side to minutes; every iteration is one neighbour query, so the
ratio does not depend on it).

    .venv/bin/python benchmarks/bench_metrics.py [--objects 7] [--points 20480] [--icp-iterations 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from midi3d.eval import metrics as M


def make_scene(objects: int, points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for _ in range(objects):
        centre, size = rng.uniform(-0.7, 0.7, 3), rng.uniform(0.1, 0.3, 3)
        gt = centre + size * rng.uniform(-1, 1, (points, 3))
        gts.append(gt.astype(np.float32))
        preds.append((gt * 1.03 + rng.normal(0, 0.01, gt.shape)).astype(np.float32))
    return np.concatenate(preds), np.concatenate(gts)


def scene_level(pred: np.ndarray, gt: np.ndarray, backend: str, iterations: int) -> dict[str, float]:
    aligned = M.icp(pred, gt, "official", max_iterations=iterations, backend=backend)
    cd, _, _ = M.chamfer_distance(aligned.points, gt, backend)
    return {"cd": cd, "fscore": M.fscore(aligned.points, gt, backend=backend), "iterations": aligned.iterations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=7)
    parser.add_argument("--points", type=int, default=20480)
    parser.add_argument("--icp-iterations", type=int, default=2)
    args = parser.parse_args()
    pred, gt = make_scene(args.objects, args.points)
    timings, results = {}, {}
    for backend in ("kdtree", "brute32"):
        start = time.perf_counter()
        results[backend] = scene_level(pred, gt, backend, args.icp_iterations)
        timings[backend] = time.perf_counter() - start
        print(f"{backend:>7}: {timings[backend]:8.2f} s  {results[backend]}", flush=True)
    differences = {k: abs(results["kdtree"][k] - results["brute32"][k]) / max(abs(results["kdtree"][k]), 1e-12)
                   for k in ("cd", "fscore")}
    print(f"scene of {args.objects} x {args.points} points: speed-up {timings['brute32'] / timings['kdtree']:.0f}x "
          f"(target >= 100x); relative metric differences (float32 brute force): {differences}")


if __name__ == "__main__":
    main()
