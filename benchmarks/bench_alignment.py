"""What camera estimation and projected textures add to a generation, side by side in one run.

Generates the bundled 5-object example with the embedded model at its defaults, then runs the
alignment step (camera, then texture) on the same result, ``--repeats`` times, and prints the
breakdown (median seconds) and the added time against plain generation.

Usage: python benchmarks/bench_alignment.py [--repeats 3] [--texture project|vertex] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from midi3d.embedded import load_embedded_pipeline
from midi3d.pipelines.alignment import align_scene
from midi3d.pipelines.scene import export_scene, generate_scene, load_scene

EXAMPLE = Path(__file__).resolve().parents[1] / "midi3d" / "assets" / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--texture", default="project", choices=["project", "vertex"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-alignment.glb"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_embedded_pipeline()
    pipe.set_progress_bar_config(disable=True)
    scene = load_scene(EXAMPLE / "room-5_rgb.png", EXAMPLE / "room-5_seg.png")
    rows = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = generate_scene(pipe, scene)
        plain = time.perf_counter() - start
        start = time.perf_counter()
        alignment = align_scene(scene, result, args.texture)
        aligned = time.perf_counter() - start
        start = time.perf_counter()
        export_scene(result, args.out, alignment)
        export = time.perf_counter() - start
        rows.append({"generate": plain, "camera": alignment.seconds["camera"],
                     "texture": alignment.seconds["texture"], "alignment": aligned, "export": export,
                     "iou": alignment.mean_iou})
    median = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    print(f"bundled example (5 objects), embedded model defaults, {args.repeats} runs, torch threads "
          f"{torch.get_num_threads()}, texture {args.texture}")
    print(f"  plain generation        {median['generate']:6.2f} s")
    print(f"  + camera estimation     {median['camera']:6.2f} s")
    print(f"  + texture               {median['texture']:6.2f} s")
    print(f"  = added by alignment    {median['alignment']:6.2f} s  ({median['alignment'] / median['generate']:.2f}× "
          f"of generation; GLB export {median['export']:.2f} s)")
    print(f"  mean reprojection IoU   {median['iou']:.3f}")


if __name__ == "__main__":
    main()
