"""Assemble a pipeline folder from a trained VAE run and a donor pipeline of another latent size.

The VAE run's folder (its VAE, and a fresh transformer and encoders of the new sizes) receives
every transformer and image-encoder tensor of the donor whose name and shape match; the rest
(the transformer's input and output projections when the latent channels differ) stays fresh.
The result is the ``--init`` of the transformer stage (configs/train/embedded-v2-dit.yaml).

    python scripts/warm_start.py OUT --vae RUN/final/pipeline --donor midi3d/assets/midi3d-tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--vae", type=Path, required=True, help="Pipeline folder holding the new VAE.")
    parser.add_argument("--donor", type=Path, required=True, help="Trained pipeline folder to copy from.")
    args = parser.parse_args()

    from midi3d.models.warm_start import warm_start_pipeline
    from midi3d.pipelines import MIDIPipeline

    target = MIDIPipeline.from_pretrained(args.vae)
    report = warm_start_pipeline(target, MIDIPipeline.from_pretrained(args.donor))
    target.save_pretrained(args.out)
    print(f"{args.out}: {report.summary()}")


if __name__ == "__main__":
    main()
