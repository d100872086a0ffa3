"""Write a pipeline folder with the instance layout model of another folder added (or replaced).

The layout model sees only the instances' 2D masks, so any transformer trained on the same VAE
can use it: the v2 ablation (``scripts/ablation.sh --v2``) gives every transformer variant the
shipped one, so that the held boxes are the same for all and only the shapes differ.

    python scripts/attach_layout_model.py OUT --pipeline RUN/final/pipeline --layout-from midi3d/assets/midi3d-tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="Pipeline folder to write (replaced atomically).")
    parser.add_argument("--pipeline", type=Path, required=True, help="Pipeline folder to copy.")
    parser.add_argument("--layout-from", type=Path, required=True, help="Pipeline folder with a layout_model.")
    args = parser.parse_args()

    from midi3d.pipelines import MIDIPipeline

    donor = MIDIPipeline.from_pretrained(args.layout_from)
    if donor.layout_model is None:
        raise SystemExit(f"{args.layout_from}: the folder has no layout_model")
    pipe = MIDIPipeline.from_pretrained(args.pipeline)
    if not pipe.vae.config.get("object_frame"):
        raise SystemExit(f"{args.pipeline}: a layout model needs an object-frame VAE (its boxes are held "
                         "in the latent's box channels)")
    pipe.register_modules(layout_model=donor.layout_model)
    pipe.save_pretrained(args.out)
    print(f"{args.out}: {args.pipeline} with the layout model of {args.layout_from}")


if __name__ == "__main__":
    main()
