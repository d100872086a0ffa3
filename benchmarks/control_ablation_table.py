"""The control ablation's table rows (docs/results.md) from the eval summaries of
``benchmarks/control_ablation.sh``:

    .venv/bin/python benchmarks/control_ablation_table.py OUT_ROOT [--buckets]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _buckets(summary: dict) -> list[tuple[str, dict]]:
    """The object-count buckets in numeric order (summary.json stores them sorted as text)."""
    return sorted(summary.get("buckets", {}).items(), key=lambda item: int(item[0].split("-")[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--buckets", action="store_true", help="Also the IoU-B per object-count bucket.")
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


if __name__ == "__main__":
    main()
