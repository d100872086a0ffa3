"""How well a pipeline's shape VAE reconstructs objects: the ceiling of any model built on it.

Encodes the first N objects of a dataset (surface samples), decodes them (optionally with noise
on the latents, or with the decoder's iso-level moved), extracts meshes and compares their boxes
with the ground truth surfaces.

    python scripts/probe_vae.py PIPELINE --data DATASET_ROOT [--objects 24] [--resolution 64]
        [--noise 0 0.3] [--iso-shift 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="Dataset root (3D-Front/MIDI layout).")
    parser.add_argument("--objects", type=int, default=24)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3],
                        help="Latent noise, as a fraction of the latents' spread.")
    parser.add_argument("--iso-shift", type=float, default=0.0,
                        help="Added to the decoded field before meshing (> 0 shrinks the shapes).")
    args = parser.parse_args()

    from midi3d.data.layout import SURFACE, read_surface
    from midi3d.eval.metrics import bbox_iou
    from midi3d.pipelines import MIDIPipeline
    from midi3d.pipelines.pipeline_midi import ExtractionOptions

    pipe = MIDIPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():  # the decoder returns -proj_out(h): lowering the bias raises the field
        pipe.vae.decoder.proj_out.bias -= args.iso_shift
    rooms = json.loads((args.data / "midi_room_ids.json").read_text())
    names = json.loads((args.data / "midi_furniture_ids.json").read_text())
    objects = [(room, name) for room, listed in zip(rooms, names) for name in listed][: args.objects]
    rng = np.random.default_rng(0)
    inputs, truth = [], []
    for room, name in objects:
        data = read_surface(args.data / SURFACE / room / f"{name}.npy")
        points = np.concatenate([data["surface_points"], data["surface_normals"]], axis=1).astype(np.float32)
        inputs.append(points[rng.choice(len(points), 2048, replace=len(points) < 2048)])
        truth.append(data["surface_points"])
    with torch.no_grad():
        posterior = pipe.vae.encode(torch.from_numpy(np.stack(inputs)), num_tokens=64).latent_dist
        spread = float(posterior.mean.std())
        print(f"{args.pipeline}: {len(objects)} objects, posterior std / latent spread "
              f"{float(posterior.std.mean()) / spread:.3f}, iso shift {args.iso_shift:+g}")
        options = ExtractionOptions(resolution=args.resolution)
        for noise in args.noise:
            generator = torch.Generator().manual_seed(0)
            latents = posterior.mean + noise * spread * torch.randn(posterior.mean.shape, generator=generator)
            meshes, _ = pipe.extract(latents, options, None)
            ious, ratios = [], []
            for mesh, points in zip(meshes, truth):
                if mesh is None or len(mesh.faces) == 0:
                    ious.append(0.0)
                    ratios.append(0.0)
                    continue
                ious.append(bbox_iou(np.asarray(mesh.vertices), points))
                ratios.append(np.prod(np.ptp(mesh.vertices, axis=0)) / np.prod(np.ptp(points, axis=0)))
            print(f"  noise {noise:g}: box IoU {np.mean(ious):.3f}, median box-volume ratio {np.median(ratios):.2f}, "
                  f"empty {sum(r == 0 for r in ratios)}")


if __name__ == "__main__":
    main()
