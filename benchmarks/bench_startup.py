"""Where the time of ``midi3d generate`` on the bundled example goes, measured side by side in one run.

1. the real command, end to end (a fresh process, wall clock), ``--runs`` times;
2. the same steps in a fresh process with timers: interpreter start, imports, loading the model,
   the pipeline call (its own ``timings``), writing the GLB.

Prints the breakdown and the ratio end-to-end / inside-the-pipeline (target: <= 2).

    .venv/bin/python benchmarks/bench_startup.py [--runs 3] [--steps 50] [--compare-with DIR]

``--compare-with DIR``: also time ``python -m midi3d generate`` with another install of the
package on ``PYTHONPATH`` (e.g. ``pip install --no-deps --target DIR <older checkout>``), side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "midi3d" / "assets" / "examples"

STAGES = r"""
import json, sys, time
start = time.perf_counter()
from midi3d.cli import app  # noqa: F401  (what the console script imports first)
from midi3d.pipelines.batch import ReadLimits, generate_file, read_single_scene
from midi3d.pipelines.loading import load_pipeline
from midi3d.pipelines.scene import GenerateOptions
imported = time.perf_counter()
pipe = load_pipeline(None, quiet=True)
loaded = time.perf_counter()
scene = read_single_scene(*map(__import__("pathlib").Path, sys.argv[1:3]), ReadLimits())
read = time.perf_counter()
from midi3d.pipelines.scene import export_scene, generate_scene
result = generate_scene(pipe, scene, GenerateOptions(steps=int(sys.argv[4])))  # the CLI's defaults
called = time.perf_counter()
export_scene(result, sys.argv[3])
written = time.perf_counter()
print(json.dumps({"imports": imported - start, "loading": loaded - imported, "reading": read - loaded,
                  "pipeline": called - read, "inside": result.timings, "writing": written - called,
                  "since_interpreter_start": written - start}))
import gc; gc.freeze()  # as midi3d.cli.main does before the interpreter exits
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--compare-with", type=Path, default=None, help="another install (a --target folder)")
    args = parser.parse_args()
    image, seg = EXAMPLES / "room-5_rgb.png", EXAMPLES / "room-5_seg.png"
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "room-5.glb"
        generate = [sys.executable, "-m", "midi3d", "generate", str(image), "--seg", str(seg), "-o", str(out),
                    "--steps", str(args.steps), "-q"]
        ends, others = [], []
        for _ in range(args.runs):  # interleaved, so that both see the same machine load
            start = time.perf_counter()
            subprocess.run(generate, check=True, cwd=work)
            ends.append(time.perf_counter() - start)
            if args.compare_with is not None:
                start = time.perf_counter()
                subprocess.run(generate, check=True, cwd=work,
                               env={**os.environ, "PYTHONPATH": str(args.compare_with)})
                others.append(time.perf_counter() - start)
        stages = []
        for _ in range(args.runs):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", STAGES, str(image), str(seg), str(out), str(args.steps)],
                                  check=True, capture_output=True, text=True, cwd=work)
            total = time.perf_counter() - start
            record = json.loads(done.stdout.strip().splitlines()[-1])
            record["interpreter_and_exit"] = total - record["since_interpreter_start"]
            stages.append(record)
    best = min(stages, key=lambda r: r["since_interpreter_start"])
    end_to_end = min(ends)
    print(f"midi3d generate (bundled room-5, {args.steps} steps), best of {args.runs}: {end_to_end:.2f} s end to end")
    print("| stage | seconds |\n|---|---|")
    for key in ("interpreter_and_exit", "imports", "loading", "reading", "pipeline", "writing"):
        print(f"| {key} | {best[key]:.2f} |")
    inside = ", ".join(f"{k} {v:.2f}" for k, v in best["inside"].items())
    print(f"inside the pipeline: {inside}")
    print(f"ratio end to end / pipeline: {end_to_end / best['pipeline']:.2f} (target <= 2)")
    if others:
        print(f"{args.compare_with}: {min(others):.2f} s end to end, best of {args.runs} "
              f"(this install: {end_to_end:.2f} s, ratio {min(others) / end_to_end:.2f})")


if __name__ == "__main__":
    main()
