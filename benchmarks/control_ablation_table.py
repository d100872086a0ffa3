"""The control ablation's table rows (docs/results.md) from the eval summaries of
``benchmarks/control_ablation.sh``:

    .venv/bin/python benchmarks/control_ablation_table.py OUT_ROOT [--buckets] [--paired-with NAME]

``--paired-with NAME`` adds, for every other run, its per-scene difference from run ``NAME`` on the
scenes both scored (mean ± standard error): a difference within about two standard errors is
within the noise of the scenes drawn. (Also used for the ablation of ``scripts/ablation.sh --v2``.)
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

PAIRED = (("scene_fscore", "F-Score-S", 100.0), ("object_fscore", "F-Score-O", 100.0), ("iou_bbox", "IoU-B", 1.0))


def _scored(folder: Path) -> dict[str, dict]:
    """The scenes a run scored, by key (every results-*.jsonl shard)."""
    rows = [json.loads(line) for path in sorted(folder.glob("results-*.jsonl")) for line in path.open() if line.strip()]
    return {row["key"]: row for row in rows if row.get("status") == "ok"}


def paired_difference(run: dict[str, dict], reference: dict[str, dict], metric: str) -> tuple[float, float, int]:
    """Mean and standard error of ``run - reference`` over the scenes both scored, and their count."""
    diffs = [run[key][metric] - reference[key][metric] for key in sorted(run.keys() & reference.keys())]
    if len(diffs) < 2:
        return float("nan"), float("nan"), len(diffs)
    mean = sum(diffs) / len(diffs)
    variance = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, math.sqrt(variance / len(diffs)), len(diffs)


def _buckets(summary: dict) -> list[tuple[str, dict]]:
    """The object-count buckets in numeric order (summary.json stores them sorted as text)."""
    return sorted(summary.get("buckets", {}).items(), key=lambda item: int(item[0].split("-")[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--buckets", action="store_true", help="Also the IoU-B per object-count bucket.")
    parser.add_argument("--paired-with", help="Run folder name to report per-scene differences against.")
    args = parser.parse_args()
    summaries = sorted(args.root.glob("*/summary.json"))
    header = ["control", "CD-S ↓", "F-Score-S ↑", "CD-O ↓", "F-Score-O ↑", "IoU-B ↑", "failed", "s/scene"]
    if args.buckets and summaries:
        header += [f"IoU-B {name}" for name, _ in _buckets(json.loads(summaries[0].read_text()))]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for path in summaries:
        s = json.loads(path.read_text())
        row = [path.parent.name, f"{s['scene_cd']:.4f}", f"{100 * s['scene_fscore']:.2f}", f"{s['object_cd']:.4f}",
               f"{100 * s['object_fscore']:.2f}", f"{s['iou_bbox']:.3f}", f"{s['failed']}/{s['scenes']}",
               f"{s['seconds_per_scene']:.2f}"]
        if args.buckets:
            row += [f"{b['iou_bbox']:.3f} ({b['scored']})" for _, b in _buckets(s)]
        print("| " + " | ".join(row) + " |")
    if args.paired_with:
        reference = _scored(args.root / args.paired_with)
        print(f"\nper-scene differences from {args.paired_with} (mean ± standard error, scenes both scored)\n")
        print("| run | " + " | ".join(f"Δ {label}" for _, label, _ in PAIRED) + " | scenes |\n|" + "---|" * (len(PAIRED) + 2))
        for path in summaries:
            if path.parent.name == args.paired_with:
                continue
            run, cells, count = _scored(path.parent), [], 0
            for metric, _, scale in PAIRED:
                mean, error, count = paired_difference(run, reference, metric)
                digits = 2 if scale > 1 else 3
                cells.append(f"{scale * mean:+.{digits}f} ± {scale * error:.{digits}f}")
            print(f"| {path.parent.name} | " + " | ".join(cells) + f" | {count} |")


if __name__ == "__main__":
    main()
