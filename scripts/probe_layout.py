"""Box IoU of each instance's 3D box: the folder's layout model, or the boxes the transformer generates.

For the rooms of a 3D-Front/MIDI dataset root (its test split's last N rooms, the label maps from
the dataset), compares each kept instance's box with the box of its ground-truth surface, in the
scene frame, with no meshing: the layout model's prediction from the masks, or (``--generated``)
the box channels of latents sampled without it. Also prints the per-axis centre error and
|log| size error, and the IoU with the true centre or the true size put in (which of the two
costs more).

    python scripts/probe_layout.py PIPELINE --data synth-val [--rooms 40] [--generated --steps 25]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def box_iou(centre_a: np.ndarray, half_a: np.ndarray, centre_b: np.ndarray, half_b: np.ndarray) -> np.ndarray:
    """IoU of axis-aligned boxes given as centres and half-sizes ``[..., 3]``."""
    low, high = np.maximum(centre_a - half_a, centre_b - half_b), np.minimum(centre_a + half_a, centre_b + half_b)
    overlap = np.clip(high - low, 0.0, None).prod(-1)
    return overlap / ((2 * half_a).prod(-1) + (2 * half_b).prod(-1) - overlap + 1e-8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="Dataset root (3D-Front/MIDI layout).")
    parser.add_argument("--rooms", type=int, default=40, help="The last N rooms (the test split of that size).")
    parser.add_argument("--generated", action="store_true", help="Score the transformer's own boxes instead.")
    parser.add_argument("--steps", type=int, default=25, help="--generated: denoising steps.")
    parser.add_argument("--json", type=Path, help="Also write the numbers here.")
    args = parser.parse_args()

    import torch

    from midi3d.data.datasets import ThreeDFrontDataset
    from midi3d.models.image_encoders import resized_instances
    from midi3d.pipelines import MIDIPipeline
    from midi3d.pipelines.preprocess import scene_instances

    pipe = MIDIPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    if not pipe.vae.config.get("object_frame"):
        parser.error(f"{args.pipeline}: a scene-frame VAE; its latents hold no box")
    if not args.generated and pipe.layout_model is None:
        parser.error(f"{args.pipeline}: no layout_model in this folder (use --generated)")
    data = ThreeDFrontDataset(args.data, test_size=args.rooms)
    rows = []
    for index in range(len(data)):
        scene = data.load(index)
        inputs = scene_instances(scene.rgb, scene.labels)
        if args.generated:
            out = pipe(scene.rgb, scene.labels, num_inference_steps=args.steps, output_type="latent",
                       generator=torch.Generator().manual_seed(0), use_layout_model=False)
            boxes = pipe.vae.latent_box(out.latents).numpy()
        else:
            _, _, masks = resized_instances(pipe.feature_extractor_1, pipe.feature_extractor_2, inputs.images,
                                            inputs.masks)
            with torch.no_grad():
                boxes = pipe.layout_model(masks).numpy()
        for position, instance in enumerate(scene.ids):
            points = scene.gt_points[position][:, :3]
            low, high = points.min(0), points.max(0)
            centre, half = (low + high) / 2, np.maximum((high - low) / 2, pipe.vae.config.box_min_half_size)
            box = boxes[inputs.ids.index(instance)]
            rows.append({"iou": box_iou(box[:3], box[3:], centre, half),
                         "iou_true_centre": box_iou(centre, box[3:], centre, half),
                         "iou_true_size": box_iou(box[:3], half, centre, half),
                         "centre_error": np.abs(box[:3] - centre), "log_size_error": np.abs(np.log(box[3:] / half))})
    summary = {"instances": len(rows), "source": "generated" if args.generated else "layout_model",
               **{key: float(np.mean([r[key] for r in rows])) for key in ("iou", "iou_true_centre", "iou_true_size")},
               **{key: np.mean([r[key] for r in rows], axis=0).round(4).tolist()
                  for key in ("centre_error", "log_size_error")}}
    print(json.dumps(summary, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
