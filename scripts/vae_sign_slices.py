"""Where a shape VAE's decoded sign is wrong: three axis slices through each object's box centre.

For each validation object (the name of one of the first ``--objects`` of the dataset), the
decoder's inside/outside (posterior mean, no noise) is compared with the true surface dilated by
``--sign-offset`` on a grid over the object's box grown by 0.03: grey where both say inside, red
where only the decoder does (the shape is too fat there), blue where only the truth does. The
columns are the slices across x, y and z; ``--with-turned`` adds three more, of the same object
turned about the vertical axis to its tightest footprint before encoding (as
``scripts/probe_vae.py --turn-to-footprint`` does).

    python scripts/vae_sign_slices.py OUT.png PIPELINE --data synth-val --names shelf-00 cabinet-02
        [--objects 48] [--sign-offset 0.008] [--cells 160] [--with-turned]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch

BOTH, DECODER_ONLY, TRUTH_ONLY = (200, 200, 200), (230, 60, 60), (60, 60, 230)


def slices(pipe, latents: torch.Tensor, mesh, points: np.ndarray, offset: float, cells: int) -> np.ndarray:
    """Three ``cells``² slice images side by side, ``[cells, 3 * cells, 3]`` uint8."""
    from midi3d.training.sdf import signed_distance

    low, high = points.min(0) - 0.03, points.max(0) + 0.03
    centre = (low + high) / 2
    images = []
    for axis in range(3):
        first, second = [k for k in range(3) if k != axis]
        grid_u, grid_v = np.meshgrid(np.linspace(low[first], high[first], cells),
                                     np.linspace(low[second], high[second], cells))
        queries = np.empty((cells * cells, 3), np.float32)
        queries[:, first], queries[:, second], queries[:, axis] = grid_u.ravel(), grid_v.ravel(), centre[axis]
        truth = (signed_distance(mesh, queries) - offset <= 0).reshape(cells, cells)
        with torch.no_grad():
            decoded = pipe.vae.decode(latents, torch.from_numpy(queries)[None]).sample[0, :, 0].numpy()
        decoded = (decoded <= 0).reshape(cells, cells)
        image = np.zeros((cells, cells, 3), np.uint8)
        image[truth & decoded], image[decoded & ~truth], image[truth & ~decoded] = BOTH, DECODER_ONLY, TRUTH_ONLY
        images.append(image[::-1])  # the second axis up
    return np.concatenate(images, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("pipeline", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--names", nargs="+", required=True, help="object names, e.g. shelf-00")
    parser.add_argument("--objects", type=int, default=48, help="look for the names among the first N objects")
    parser.add_argument("--sign-offset", type=float, default=0.008)
    parser.add_argument("--cells", type=int, default=160)
    parser.add_argument("--with-turned", action="store_true", help="add the slices of each object turned to its footprint")
    args = parser.parse_args()

    import trimesh
    from PIL import Image

    from midi3d.data.layout import SCENE, encoder_inputs, listed_objects
    from midi3d.geometry.footprint import footprint_turn, turned, turned_mesh, turned_samples
    from midi3d.io.files import write_atomic
    from midi3d.pipelines import MIDIPipeline

    pipe = MIDIPipeline.from_pretrained(args.pipeline)
    candidates = listed_objects(args.data)[: args.objects]
    chosen = [next((o for o in candidates if o[1] == name), None) for name in args.names]
    if None in chosen:
        raise SystemExit(f"{args.data}: no object named {args.names[chosen.index(None)]} among the first {args.objects}")
    inputs, truth = encoder_inputs(args.data, chosen)
    def row(samples: np.ndarray, points: np.ndarray, mesh) -> np.ndarray:
        with torch.no_grad():
            latents = pipe.vae.encode(torch.from_numpy(samples[None]), num_tokens=pipe.transformer.config.width
                                      ).latent_dist.mean
        return slices(pipe, latents, mesh, points, args.sign_offset, args.cells)

    rows = []
    for index, (room, name) in enumerate(chosen):
        mesh = trimesh.load(args.data / SCENE / room / f"{name}.glb", force="mesh")
        columns = [row(inputs[index], truth[index], mesh)]
        if args.with_turned:
            angle, centre = footprint_turn(truth[index])
            gap = np.full((args.cells, 8, 3), 255, np.uint8)
            columns += [gap, row(turned_samples(inputs[index], angle, centre), turned(truth[index], angle, centre),
                                 turned_mesh(mesh, angle, centre))]
            print(f"{room}/{name}: turned by {np.degrees(-angle):.1f} degrees to its footprint")
        rows.append(np.concatenate(columns, 1))
        rows.append(np.full((8, rows[-1].shape[1], 3), 255, np.uint8))
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(rows[:-1], 0)).save(buffer, format="PNG")
    write_atomic(args.out, buffer.getvalue())


if __name__ == "__main__":
    main()
