"""Whole ``generate`` with a small model as the number of instances in one scene grows.

Each N runs in its own process; prints wall time, peak memory growth and their ratios to the
smallest N (linear growth in N means memory ratio <= N / N_min).

    .venv/bin/python benchmarks/bench_scaling.py [--instances 2 4 8 16 32] [--steps 10] [--resolution 64]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def setup(instances: int, steps: int, resolution: int):
    import numpy as np

    from midi3d.models.factory import PipelineSpec, build_pipeline
    from midi3d.pipelines import ExtractionOptions
    from midi3d.pipelines.scene import GenerateOptions, SceneInputs, generate_scene

    pipe = build_pipeline(PipelineSpec.builtin("midi3d-tiny"))
    pipe.set_progress_bar_config(disable=True)
    side = int(np.ceil(np.sqrt(instances)))
    size = 32 * side
    labels = np.zeros((size, size), np.int64)
    rgb = np.full((size, size, 3), 255, np.uint8)
    for i in range(instances):
        r, c = divmod(i, side)
        labels[r * 32 + 4 : r * 32 + 28, c * 32 + 4 : c * 32 + 28] = i + 1
        rgb[labels == i + 1] = ((37 * i) % 256, (91 * i) % 256, 160)
    scene = SceneInputs(rgb, labels)
    options = GenerateOptions(steps=steps, extraction=ExtractionOptions(resolution=resolution), postprocess=None)

    def run():
        result = generate_scene(pipe, scene, options)
        return {"instances": len(result.ids), "meshes": len(result.ids) - len(result.empty_ids)}

    return run


def main() -> None:
    from _measure import measure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=64)
    args = parser.parse_args()
    print(f"generate with midi3d-tiny, {args.steps} steps, resolution {args.resolution}")
    print(f"{'N':>3} {'seconds':>8} {'peak MiB':>9} {'time/N0':>8} {'mem/N0':>7} {'N/N0':>5} {'meshes':>6}")
    first = None
    for n in args.instances:
        res = measure("bench_scaling", "setup", n, args.steps, args.resolution)
        first = first or res
        print(f"{n:>3} {res['seconds']:>8.2f} {res['peak_mib']:>9.1f} {res['seconds'] / first['seconds']:>8.2f} "
              f"{res['peak_mib'] / max(first['peak_mib'], 1e-3):>7.2f} {n / args.instances[0]:>5.1f} "
              f"{res['extra']['meshes']:>6}")


if __name__ == "__main__":
    main()
