"""Peak memory and time of one FLUX joint attention under each layout control, measured at
reduced sequence lengths and extrapolated to FLUX's real size (1024² image: 4096 image + 512
text tokens, 24 heads of 128).

Variants (each in its own process; peak = growth of resident memory over the inputs):
* ``fused``: ``scaled_dot_product_attention`` without a mask (the base model);
* ``3dis``: the same kernel with 3DIS's boolean mask ``[1, 1, S, S]``;
* ``ast``: AST's reweighting, which needs the probabilities, in query chunks (2^25 at a time);
* ``instanceassemble``: the layout branch's attention, batched over 5 instances whose boxes
  cover a quarter of the image each: [1 layout token; box tokens] per instance, padding masked;
* ``dense``: the probabilities of all heads at once (what a naive reweighting would hold).

Usage: python benchmarks/bench_compose_attention.py [--sizes 1152 2304] [--heads 24] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

REAL = 4608  # 4096 image + 512 text tokens


def setup(variant: str, sequence: int, heads: int, head_dim: int, threads: int):
    import numpy as np
    import torch

    from midi3d.compose.ast import ASTConfig, ASTMaps, LayerRule, reweighted_attention
    from midi3d.compose.threedis import ActiveRules, attention_mask, box_token_grid

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    side = int(round(math.sqrt(sequence * 8 / 9)))  # FLUX's ratio: 512 text per 4096 image tokens
    image, text = side * side, side * side // 8
    sequence = image + text
    q, k, v = (torch.randn(1, heads, sequence, head_dim) for _ in range(3))
    boxes = np.array([[0.05, 0.1, 0.5, 0.7], [0.4, 0.3, 0.95, 0.9]])
    regions = box_token_grid(boxes, side, side).reshape(2, -1)
    segment = text // 3
    texts = [np.arange(segment, 2 * segment), np.arange(2 * segment, 3 * segment)]
    if variant == "3dis":
        mask = torch.from_numpy(attention_mask(ActiveRules(True, True, True, True), regions, texts, text))[None, None]
    if variant == "ast":
        rng = np.random.default_rng(0)
        maps = ASTMaps(np.zeros((image, image)), np.ones(image), np.ones(image), np.eye(text), np.ones(text),
                       rng.random((image, text)) > 0.5, np.zeros((image, text)), np.zeros((image, text)))
        rule = LayerRule(True, "instance", "instance")

    if variant == "instanceassemble":
        box = image // 4 + 1
        q, k, v = (torch.randn(5, heads, box, head_dim) for _ in range(3))
        mask = torch.ones(5, 1, 1, box, dtype=torch.bool)
        mask[1:, ..., box - box // 3:] = False  # unequal boxes: padded keys

    def run():
        with torch.no_grad():
            if variant == "instanceassemble":
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            elif variant == "fused":
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            elif variant == "3dis":
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            elif variant == "ast":
                out = reweighted_attention(q, k, v, maps, rule, 0.5, ASTConfig())
            else:
                out = torch.softmax(q @ k.transpose(-1, -2) / head_dim ** 0.5, -1) @ v
        return float(out.abs().mean())

    return run


def main() -> None:
    from _measure import measure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[1152, 2304], help="sequence lengths S measured")
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    small, large = args.sizes
    dense_real = args.heads * REAL ** 2 * 4 / 2 ** 20
    print(f"one joint attention, {args.heads} heads × {args.head_dim}, {args.threads} thread(s); measured at S = "
          f"{small} and {large}, extrapolated to S = {REAL} (a dense {args.heads} × {REAL}² float32 tensor is "
          f"{dense_real:.0f} MiB)")
    print(f"{'variant':>8} {'MiB@' + str(small):>10} {'MiB@' + str(large):>10} {'s@' + str(large):>8} "
          f"{'MiB@' + str(REAL) + ' (est.)':>16} {'s@' + str(REAL) + ' (est.)':>14}")
    for variant in ("fused", "3dis", "ast", "instanceassemble", "dense"):
        a = measure("bench_compose_attention", "setup", variant, small, args.heads, args.head_dim, args.threads)
        b = measure("bench_compose_attention", "setup", variant, large, args.heads, args.head_dim, args.threads)
        ratio = large / small
        memory_power = math.log(max(b["peak_mib"], 1e-3) / max(a["peak_mib"], 1e-3)) / math.log(ratio)
        time_power = math.log(max(b["seconds"], 1e-6) / max(a["seconds"], 1e-6)) / math.log(ratio)
        memory = b["peak_mib"] * (REAL / large) ** min(max(memory_power, 0.0), 2.0)
        seconds = b["seconds"] * (REAL / large) ** min(max(time_power, 1.0), 2.0)
        print(f"{variant:>8} {a['peak_mib']:>10.1f} {b['peak_mib']:>10.1f} {b['seconds']:>8.2f} {memory:>16.0f} "
              f"{seconds:>14.1f}", flush=True)


if __name__ == "__main__":
    main()
