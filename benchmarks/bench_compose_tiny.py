"""Time and peak memory of one `compose_image` call per layout control on the tiny random FLUX and
SD3 pipelines the tests build (this machine runs nothing bigger), each in its own process.

Usage: python benchmarks/bench_compose_tiny.py [--steps 8] [--size 256 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.append(str(HERE.parent / "tests"))  # the tiny pipelines the tests build


def setup(kind: str, folder: str, control: str, steps: int, width: int, height: int, weights: str):
    import torch

    from midi3d.compose import layout_from_data
    from midi3d.compose.flux import ComposeOptions, compose_image, load_image_model

    torch.set_num_threads(1)
    pipe = load_image_model(folder)
    pipe.set_progress_bar_config(disable=True)
    layout = layout_from_data({"size": [width, height], "prompt": "a living room with a sofa, a lamp and a rug",
                               "instances": [{"box": [0.05, 0.4, 0.55, 0.95], "description": "a red sofa"},
                                             {"box": [0.7, 0.05, 0.9, 0.8], "description": "a white lamp"},
                                             {"box": [0.3, 0.75, 0.95, 1.0], "description": "a green rug"}],
                               "units": "normalized"})
    options = ComposeOptions(control=control, steps=steps, max_sequence_length=32, instance_tokens=8,
                             instanceassemble=Path(weights) if control == "instanceassemble" else None)
    compose_image(pipe, layout, ComposeOptions(control=control, steps=1, max_sequence_length=32, instance_tokens=8,
                                               instanceassemble=options.instanceassemble))  # warm-up, weights

    def run():
        return float(compose_image(pipe, layout, options).image.mean())

    return run


def main() -> None:
    from _measure import measure
    from test_compose import random_ia_weights
    from tiny_flux import build_tiny_flux, build_tiny_sd3

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[256, 256])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        flux, sd3 = build_tiny_flux(root / "flux"), build_tiny_sd3(root / "sd3")
        ia_flux = random_ia_weights(root / "ia-flux", ["transformer_blocks.0", "single_transformer_blocks.0"], 32)
        ia_sd3 = random_ia_weights(root / "ia-sd3", ["transformer_blocks.0", "transformer_blocks.1"], 64)
        print(f"tiny random pipelines, {args.size[0]}x{args.size[1]}, {args.steps} steps, 3 instances, 1 thread")
        print(f"{'model':>5} {'control':>16} {'s':>7} {'peak MiB':>9}")
        for kind, folder, controls, weights in (("flux", flux, ("none", "3dis", "ast", "instanceassemble"), ia_flux),
                                                ("sd3", sd3, ("none", "instanceassemble"), ia_sd3)):
            for control in controls:
                got = measure("bench_compose_tiny", "setup", kind, str(folder), control, args.steps, *args.size,
                              str(weights))
                print(f"{kind:>5} {control:>16} {got['seconds']:>7.2f} {got['peak_mib']:>9.1f}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
