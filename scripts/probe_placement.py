"""Where a pipeline puts each object: box IoU, centre error and size of generated objects.

Generates the first N rooms of a dataset (label maps from the dataset, so segmentation plays no
part) and compares each instance's mesh box with its ground-truth surface box, in the scene
frame. An instance without a surface counts as IoU 0. Cheaper than ``midi3d eval`` and it
separates the two ways a model misses: a wrong place (centre error) or a wrong size (volume
ratio).

    python scripts/probe_placement.py PIPELINE --data DATASET_ROOT [--scenes 16] [--guidance 2]
        [--steps 25] [--resolution 64]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="Dataset root (3D-Front/MIDI layout, with pairs/).")
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--resolution", type=int, default=64)
    args = parser.parse_args()

    from midi3d.data.layout import SURFACE, read_surface
    from midi3d.eval.metrics import bbox_iou
    from midi3d.pipelines import MIDIPipeline
    from midi3d.pipelines.pipeline_midi import ExtractionOptions
    from midi3d.pipelines.scene import GenerateOptions, generate_scene, load_scene

    pipe = MIDIPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    options = GenerateOptions(steps=args.steps, guidance=args.guidance, postprocess=None,
                              extraction=ExtractionOptions(resolution=args.resolution))
    rooms = json.loads((args.data / "midi_room_ids.json").read_text())
    names = json.loads((args.data / "midi_furniture_ids.json").read_text())
    ious, centre_errors, volume_ratios, empty = [], [], [], 0
    for room, listed in list(zip(rooms, names))[: args.scenes]:
        pair = args.data / "pairs" / room.replace("/", "__")
        result = generate_scene(pipe, load_scene(f"{pair}_rgb.png", f"{pair}_seg.png"), options)
        meshes = dict(zip(result.ids, result.meshes))
        for index, name in enumerate(listed):  # object k has label k + 1
            if index + 1 not in meshes:
                continue  # not visible in the image
            truth = read_surface(args.data / SURFACE / room / f"{name}.npy")["surface_points"]
            mesh = meshes[index + 1]
            if mesh is None or len(mesh.faces) == 0:
                ious.append(0.0)
                empty += 1
                continue
            vertices = np.asarray(mesh.vertices)
            ious.append(bbox_iou(vertices, truth))
            low, high, true_low, true_high = vertices.min(0), vertices.max(0), truth.min(0), truth.max(0)
            centre_errors.append(np.abs((low + high) / 2 - (true_low + true_high) / 2))
            volume_ratios.append(np.prod(high - low) / np.prod(true_high - true_low))
    centre = np.array(centre_errors)
    print(f"{args.pipeline} on {args.scenes} rooms of {args.data}, guidance {args.guidance:g}: "
          f"{len(ious)} objects, {empty} without surface")
    print(f"  box IoU {np.mean(ious):.3f}; centre error median {np.median(np.linalg.norm(centre, axis=1)):.3f} "
          f"(x {np.median(centre[:, 0]):.3f}, y {np.median(centre[:, 1]):.3f}, z {np.median(centre[:, 2]):.3f}); "
          f"median box-volume ratio {np.median(volume_ratios):.2f}")


if __name__ == "__main__":
    main()
