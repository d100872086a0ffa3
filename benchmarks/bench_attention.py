"""Multi-instance attention: memory-efficient form vs the official key/value-repeating form.

One attention at the released model's width, heads and token count (W=2048, H=16, T+1=2049
tokens) for N instances of one scene. Each variant runs in its own process; peak memory is
the growth of resident memory over the inputs. Prints memory and time ratios.

    .venv/bin/python benchmarks/bench_attention.py [--instances 2 4 8 16] [--tokens 2049]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def setup(method: str, scope: str, instances: int, tokens: int, width: int, heads: int):
    """Inputs for one scene of ``instances`` rows; returns the timed callable.

    ``scope="op"``: the attention on projected heads (q/k/v laid out as the processor produces
    them); ``scope="layer"``: the whole self-attention layer (projections, heads-first split,
    QK norm, attention, output projection) with either processor.
    """
    import torch

    from midi3d.models.attention import (
        MultiInstanceAttnProcessor,
        RepeatingMultiInstanceAttnProcessor,
        multi_instance_attention,
        repeated_multi_instance_attention,
    )
    from midi3d.models.transformers.midi_transformer import _attention

    torch.manual_seed(0)
    head_dim = width // heads
    if scope == "op":
        qkv = torch.randn(instances, tokens, heads, 3 * head_dim)
        q, k, v = qkv.split(head_dim, dim=-1)

        def run():
            with torch.no_grad():
                if method == "ours":
                    out = multi_instance_attention(q, k, v, [instances])
                else:
                    out = repeated_multi_instance_attention(q, k, v, instances)
            return float(out.abs().mean())

        return run
    layer = _attention(width, heads, None).eval()
    layer.set_processor(MultiInstanceAttnProcessor() if method == "ours" else RepeatingMultiInstanceAttnProcessor())
    hidden = torch.randn(instances, tokens, width)

    def run_layer():
        with torch.no_grad():
            out = layer(hidden, num_instances=instances)
        return float(out.abs().mean())

    return run_layer


def main() -> None:
    from _measure import measure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--tokens", type=int, default=2049)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--scopes", nargs="+", default=["op", "layer"], choices=["op", "layer"])
    args = parser.parse_args()
    print(f"multi-instance attention, W={args.width} H={args.heads} tokens={args.tokens}; peak = growth of "
          "resident memory over the inputs and weights")
    print(f"{'scope':>6} {'N':>3} {'ours MiB':>9} {'repeat MiB':>10} {'mem ratio':>9} {'target':>6} "
          f"{'ours s':>8} {'repeat s':>8} {'time ratio':>10} {'same out':>8}")
    for scope in args.scopes:
        for n in args.instances:
            ours = measure("bench_attention", "setup", "ours", scope, n, args.tokens, args.width, args.heads)
            rep = measure("bench_attention", "setup", "repeat", scope, n, args.tokens, args.width, args.heads)
            mem_ratio = rep["peak_mib"] / max(ours["peak_mib"], 1e-3)
            same = abs(ours["extra"] - rep["extra"]) <= 1e-5 * max(1.0, abs(rep["extra"]))
            print(f"{scope:>6} {n:>3} {ours['peak_mib']:>9.1f} {rep['peak_mib']:>10.1f} {mem_ratio:>9.1f} "
                  f"{n / 2:>6.1f} {ours['seconds']:>8.2f} {rep['seconds']:>8.2f} "
                  f"{rep['seconds'] / ours['seconds']:>10.2f} {same!s:>8}", flush=True)


if __name__ == "__main__":
    main()
