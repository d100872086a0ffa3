"""Multi-instance attention: memory-efficient form vs the official key/value-repeating form.

One attention at the released model's width, heads and token count (W=2048, H=16, T+1=2049
tokens) for N instances of one scene. Each variant runs in its own process; peak memory is
the growth of resident memory over the inputs. Prints memory and time ratios.

    .venv/bin/python benchmarks/bench_attention.py [--instances 2 4 8 16] [--tokens 2049]

``--controls`` measures the instance controls instead (midi3d.control), on the layer:
the grounding schedule's and the isolation masks' per-instance steps and the soft reweighting
(query-chunked) against the key/value-repeating form and the fused kernel, and the MI
attention time of whole generations with the grounding schedule against MI on every step.
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


def setup_control(variant: str, instances: int, tokens: int, width: int, heads: int):
    """One MI self-attention layer call at a step where ``variant`` acts: ``joint`` (no control),
    ``grounding`` (r = 0.3, a step after the first 30 %), ``isolation`` (a step before its
    threshold), ``reweight`` (AST, own-instance keys, w = 3.5) or ``repeat`` (the official form)."""
    import torch

    from midi3d.control import load_control
    from midi3d.control.schedule import ControlPlan
    from midi3d.models.attention import MultiInstanceAttnProcessor, RepeatingMultiInstanceAttnProcessor
    from midi3d.models.transformers.midi_transformer import _attention

    torch.manual_seed(0)
    layer = _attention(width, heads, None).eval()
    layer.set_processor(RepeatingMultiInstanceAttnProcessor() if variant == "repeat" else MultiInstanceAttnProcessor(0))
    settings = {"joint": None, "repeat": None, "grounding": {"grounding_ratio": 0.3},
                "isolation": {"isolation": [{"place": "instances", "until": 0.2}]},
                "reweight": {"reweight": [{"place": "instances", "weight": 3.5, "until": 0.5}]}}[variant]
    kwargs = {"num_instances": instances}
    if settings is not None:
        plan = ControlPlan.resolve(load_control(settings), num_layers=1, mi_layers=(0,))
        kwargs["control"] = plan.step(5 if variant == "grounding" else 0, 10, 1000.0, None)
    hidden = torch.randn(instances, tokens, width)

    def run():
        with torch.no_grad():
            out = layer(hidden, **kwargs)
        return float(out.abs().mean())

    return run


def setup_generation(ratio: float, steps: int, instances: int, tokens: int, width: int, heads: int):
    """The MI attention of one layer over a whole ``steps``-step generation with grounding ratio ``ratio``
    (the processor's own choice per step: joint groups or one group per instance)."""
    import torch

    from midi3d.control import ControlConfig
    from midi3d.control.schedule import ControlPlan
    from midi3d.models.attention import multi_instance_attention

    torch.manual_seed(0)
    head_dim = width // heads
    q, k, v = torch.randn(instances, tokens, heads, 3 * head_dim).split(head_dim, dim=-1)
    plan = ControlPlan.resolve(ControlConfig(grounding_ratio=ratio), num_layers=1, mi_layers=(0,))

    def run():
        total = 0.0
        with torch.no_grad():
            for step in range(steps):
                joint = plan.step(step, steps, 1000.0 * (1 - step / steps), None).instances_joint(0)
                total += float(multi_instance_attention(q, k, v, [instances] if joint else [1] * instances).abs().mean())
        return total

    return run


def controls(args) -> None:
    from _measure import measure

    print(f"instance controls on one MI self-attention layer, W={args.width} H={args.heads} tokens={args.tokens}")
    print(f"{'N':>3} {'variant':>10} {'MiB':>8} {'repeat MiB':>10} {'mem ratio':>9} {'target':>6} {'s':>7} "
          f"{'fused s':>7} {'time ratio':>10}")
    for n in args.instances:
        common = (n, args.tokens, args.width, args.heads)
        rep = measure("bench_attention", "setup_control", "repeat", *common)
        fused = measure("bench_attention", "setup_control", "joint", *common)
        for variant in ("joint", "grounding", "isolation", "reweight"):
            if variant == "reweight" and n > args.reweight_max_instances:
                continue
            got = fused if variant == "joint" else measure("bench_attention", "setup_control", variant, *common)
            target = f"{n / 2:.1f}" if variant != "reweight" else "-"
            print(f"{n:>3} {variant:>10} {got['peak_mib']:>8.1f} {rep['peak_mib']:>10.1f} "
                  f"{rep['peak_mib'] / max(got['peak_mib'], 1e-3):>9.1f} {target:>6} {got['seconds']:>7.2f} "
                  f"{fused['seconds']:>7.2f} {got['seconds'] / fused['seconds']:>10.2f}", flush=True)
    if args.skip_generation:
        return
    n, steps = args.generation_instances, args.generation_steps
    full = measure("bench_attention", "setup_generation", 1.0, steps, n, args.tokens, args.width, args.heads)
    print(f"\nMI attention time of a {steps}-step generation, N={n} (one layer; every MI layer is the same):")
    for ratio in (0.1, 0.3, 0.5):
        got = measure("bench_attention", "setup_generation", ratio, steps, n, args.tokens, args.width, args.heads)
        print(f"  grounding r={ratio}: {got['seconds']:.2f} s against {full['seconds']:.2f} s with MI on every step: "
              f"{full['seconds'] / got['seconds']:.2f}x less" + ("  (target >= 2x)" if ratio == 0.3 else ""),
              flush=True)


def main() -> None:
    from _measure import measure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--tokens", type=int, default=2049)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--scopes", nargs="+", default=["op", "layer"], choices=["op", "layer"])
    parser.add_argument("--controls", action="store_true", help="Measure the instance controls (see above).")
    parser.add_argument("--reweight-max-instances", type=int, default=8,
                        help="--controls: largest N for the soft reweighting (its time grows with N^2).")
    parser.add_argument("--generation-instances", type=int, default=5)
    parser.add_argument("--generation-steps", type=int, default=10)
    parser.add_argument("--skip-generation", action="store_true",
                        help="--controls: only the per-layer table (not the whole-generation timing).")
    args = parser.parse_args()
    if args.controls:
        controls(args)
        return
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
