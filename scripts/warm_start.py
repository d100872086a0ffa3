"""Assemble a pipeline folder from a trained VAE run and a donor pipeline of another latent size.

The VAE run's folder (its VAE, and a fresh transformer and encoders of the new sizes) receives
every transformer and image-encoder tensor of the donor whose name and shape match; the rest
(the transformer's input and output projections when the latent channels differ) stays fresh.
The result is the ``--init`` of the transformer stage (configs/train/embedded-v2-dit.yaml).

With ``--widen-channels C`` the whole donor (VAE included) is widened to C latent channels,
function-preserving (``midi3d.models.warm_start.widened_pipeline``): the result decodes and
denoises exactly as the donor does until training uses the new channels.

    python scripts/warm_start.py OUT --vae RUN/final/pipeline --donor training/midi3d-tiny-v1
    python scripts/warm_start.py OUT --widen-channels 16 --donor training/midi3d-tiny-v1
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--vae", type=Path, help="Pipeline folder holding the new VAE.")
    source.add_argument("--widen-channels", type=int, help="Latent channels (more than the donor's) to widen to.")
    parser.add_argument("--donor", type=Path, required=True, help="Trained pipeline folder to copy from.")
    args = parser.parse_args()

    from midi3d.models.warm_start import warm_start_pipeline, widened_pipeline
    from midi3d.pipelines import MIDIPipeline

    donor = MIDIPipeline.from_pretrained(args.donor)
    if args.widen_channels is not None:
        target, report = widened_pipeline(donor, args.widen_channels)
    else:
        target = MIDIPipeline.from_pretrained(args.vae)
        report = warm_start_pipeline(target, donor)
    target.save_pretrained(args.out)
    print(f"{args.out}: {report.summary()}")


if __name__ == "__main__":
    main()
