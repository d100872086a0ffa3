"""How well a pipeline's shape VAE reconstructs objects: the ceiling of any model built on it.

Encodes the first N objects of a dataset (surface samples), decodes them (optionally with noise
on the latents, or with the decoder's iso-level moved), extracts meshes and compares their boxes
with the ground truth surfaces, and scores them as the evaluation's object level does with
``--icp none`` (F-Score-O, CD-O: per-axis normalised, no alignment). With ``--sign-queries N`` it also draws N held-out near-surface
queries per object (Gaussian offsets of σ = 0.005 and 0.03 around surface samples, half each,
from a seed no training cache uses) plus N/2 uniform in the scene box and N/2 uniform in the
object's box grown by 0.1 (the embedded VAE's training mixture), computes their exact signed
distance to the object's mesh and reports how often the decoded sign (``value <= 0`` = inside)
matches the true surface's: on the whole mixture, on the near-surface queries alone (and on
each half of them, σ = 0.005 and σ = 0.03), and on the
queries within 0.01 of the surface; and, on N more queries uniform in the scene box outside the
object's box grown by 0.05 (``far_0.05``), how often the decoder says "outside": what is left
there meshes as floaters. ``--sign-offset D`` scores against the surface dilated by D
instead (a VAE trained with ``sdf_offset: D`` learns that surface). The near-surface accuracy is
also reported per kind of object (the name's prefix: sofa, lamp, ...). ``--turn-to-footprint``
first turns each object (its samples, normals and mesh) about the vertical axis through its box
centre to its tightest footprint: the synthetic rooms are turned to the camera, so an object's
box is rarely aligned with it, and this measures what that costs.

    python scripts/probe_vae.py PIPELINE --data DATASET_ROOT [--objects 24] [--resolution 64]
        [--noise 0 0.3] [--iso-shift 0] [--sign-queries 4096] [--sign-offset 0]
        [--tokens T] [--method hierarchical|dense] [--turn-to-footprint]
        [--json OUT.json] [--meshes DIR]
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
    parser.add_argument("--noise", type=float, nargs="*", default=[0.0, 0.3],
                        help="Latent noise, as a fraction of the latents' spread (none given: no meshes, only the sign accuracy).")
    parser.add_argument("--iso-shift", type=float, default=0.0,
                        help="Added to the decoded field before meshing (> 0 shrinks the shapes).")
    parser.add_argument("--sign-queries", type=int, default=0,
                        help="Held-out near-surface queries per object for the sign accuracy (0 = off).")
    parser.add_argument("--sign-offset", type=float, default=0.0,
                        help="Score the sign against the surface dilated by this (the VAE's sdf_offset).")
    parser.add_argument("--tokens", type=int, help="Latent tokens per object (default: the transformer width).")
    parser.add_argument("--method", choices=["hierarchical", "dense"], default="hierarchical")
    parser.add_argument("--turn-to-footprint", action="store_true",
                        help="Turn each object about the vertical axis to its tightest footprint first.")
    parser.add_argument("--json", type=Path, help="Also write the numbers to this JSON file.")
    parser.add_argument("--meshes", type=Path, help="Write the noise-free reconstructions here (GLB per object).")
    args = parser.parse_args()

    import trimesh

    from midi3d.data.layout import SCENE, encoder_inputs, listed_objects
    from midi3d.eval.metrics import bbox_iou, chamfer_distance, fscore, normalize_per_axis
    from midi3d.eval.runner import EvalOptions, sample_points
    from midi3d.pipelines import MIDIPipeline
    from midi3d.pipelines.pipeline_midi import ExtractionOptions
    from midi3d.training.sdf import query_points, signed_distance
    from midi3d.training.vae import far_queries

    pipe = MIDIPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():  # the decoder returns -proj_out(h): lowering the bias raises the field
        pipe.vae.decoder.proj_out.bias -= args.iso_shift
    objects = listed_objects(args.data)[: args.objects]
    inputs, truth = encoder_inputs(args.data, objects)
    turns = [(0.0, np.zeros(3))] * len(objects)  # (angle, centre) per object
    if args.turn_to_footprint:
        from midi3d.geometry.footprint import footprint_turn, turned, turned_mesh, turned_samples

        turns = [footprint_turn(points) for points in truth]
        for index, (angle, centre) in enumerate(turns):
            inputs[index] = turned_samples(inputs[index], angle, centre)
            truth[index] = turned(truth[index], angle, centre)
    tokens = args.tokens or pipe.transformer.config.width  # the official rule: latent tokens = transformer width
    report: dict = {"pipeline": str(args.pipeline), "objects": len(objects), "resolution": args.resolution,
                    "method": args.method, "tokens": tokens, "turn_to_footprint": args.turn_to_footprint,
                    "footprint_turn_degrees": [float(np.degrees(-angle)) for angle, _ in turns],
                    "iso_shift": args.iso_shift, "sign_offset": args.sign_offset, "noise": {}}
    with torch.no_grad():
        posterior = pipe.vae.encode(torch.from_numpy(inputs), num_tokens=tokens).latent_dist
        spread = float(posterior.mean.std())
        report["posterior_std_over_spread"] = float(posterior.std.mean()) / spread
        print(f"{args.pipeline}: {len(objects)} objects, posterior std / latent spread "
              f"{report['posterior_std_over_spread']:.3f}, iso shift {args.iso_shift:+g}")
        if args.sign_queries:
            sign_rng = np.random.default_rng(12345)
            far_rng = np.random.default_rng(54321)  # its own stream: the other queries stay as before
            near = args.sign_queries
            right_all, right_near, right_close, right_far = [], [], [], []
            right_fine, right_coarse = [], []  # the near queries of sigma 0.005 and of sigma 0.03
            for index, ((room, name), points) in enumerate(zip(objects, truth)):
                mesh = trimesh.load(args.data / SCENE / room / f"{name}.glb", force="mesh")
                if args.turn_to_footprint:
                    mesh = turned_mesh(mesh, *turns[index])
                queries = query_points(points, sign_rng, near, near // 2, around=near // 2, margin=0.1)
                sdf = signed_distance(mesh, queries) - args.sign_offset
                far, _ = far_queries(points[None], near, 0.05, far_rng)  # the empty room: floaters
                both = torch.from_numpy(np.concatenate([queries, far[0]]))[None]  # one decoder pass
                decoded = pipe.vae.decode(posterior.mean[index : index + 1], both).sample[0, :, 0].numpy()
                values, far_values = decoded[: len(queries)], decoded[len(queries) :]
                right = (values + args.iso_shift <= 0) == (sdf <= 0)
                right_all.append(right)
                right_near.append(right[:near])
                right_fine.append(right[: near - near // 2])
                right_coarse.append(right[near - near // 2 : near])
                right_close.append(right[np.abs(sdf) < 0.01])  # within about half a 128³ voxel
                right_far.append(far_values + args.iso_shift > 0)
            report["sign_accuracy"] = {"mixture": float(np.concatenate(right_all).mean()),
                                       "near_surface": float(np.concatenate(right_near).mean()),
                                       "near_sigma_0.005": float(np.concatenate(right_fine).mean()),
                                       "near_sigma_0.03": float(np.concatenate(right_coarse).mean()),
                                       "within_0.01": float(np.concatenate(right_close).mean()),
                                       "far_0.05": float(np.concatenate(right_far).mean())}
            kinds = [name.split("-")[0] for _, name in objects]
            report["near_surface_by_kind"] = {
                kind: float(np.concatenate([r for r, k in zip(right_near, kinds) if k == kind]).mean())
                for kind in sorted(set(kinds))}
            scores = ", ".join(f"{key} {value:.4f}" for key, value in report["sign_accuracy"].items())
            print(f"  held-out sign accuracy (surface dilated by {args.sign_offset:g}): {scores}")
            print("  near-surface, per kind: " + ", ".join(
                f"{kind} {value:.3f} ({kinds.count(kind)})" for kind, value in report["near_surface_by_kind"].items()))
        options = ExtractionOptions(method=args.method, resolution=args.resolution)
        for noise in args.noise:
            generator = torch.Generator().manual_seed(0)
            latents = posterior.mean + noise * spread * torch.randn(posterior.mean.shape, generator=generator)
            meshes, _ = pipe.extract(latents, options, None)
            ious, ratios, fscores, cds = [], [], [], []
            for index, (mesh, points) in enumerate(zip(meshes, truth)):
                if mesh is None or len(mesh.faces) == 0:
                    ious.append(0.0)
                    ratios.append(0.0)
                    continue
                ious.append(bbox_iou(np.asarray(mesh.vertices), points))
                ratios.append(np.prod(np.ptp(mesh.vertices, axis=0)) / np.prod(np.ptp(points, axis=0)))
                # the evaluation's object level (--icp none): per-axis normalised samples, no alignment
                pred = normalize_per_axis(sample_points(mesh, EvalOptions.points, EvalOptions.seed + index))
                gt = normalize_per_axis(np.asarray(points, np.float32))
                fscores.append(fscore(pred, gt))
                cds.append(chamfer_distance(pred, gt)[0])
            if args.meshes and noise == 0:
                args.meshes.mkdir(parents=True, exist_ok=True)
                for (room, name), mesh in zip(objects, meshes):
                    if mesh is not None:
                        mesh.export(args.meshes / f"{room.replace('/', '__')}--{name}.glb")
            report["noise"][str(noise)] = {"box_iou": float(np.mean(ious)),
                                           "median_box_volume_ratio": float(np.median(ratios)),
                                           "empty": int(sum(r == 0 for r in ratios)),
                                           "object_fscore": float(np.mean(fscores)) if fscores else 0.0,
                                           "object_cd": float(np.mean(cds)) if cds else float("nan"),
                                           "per_object": {"objects": ["/".join(o) for o in objects],
                                                          "box_iou": [float(v) for v in ious],
                                                          "box_volume_ratio": [float(v) for v in ratios]}}
            print(f"  noise {noise:g}: box IoU {np.mean(ious):.3f}, median box-volume ratio {np.median(ratios):.2f}, "
                  f"empty {sum(r == 0 for r in ratios)}, F-Score-O {100 * report['noise'][str(noise)]['object_fscore']:.2f} "
                  f"(CD-O {report['noise'][str(noise)]['object_cd']:.4f}; over the non-empty ones, --icp none)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
