#!/usr/bin/env bash
# Set up, then turn the bundled example into a GLB scene with the embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p outputs
.venv/bin/midi3d generate midi3d/assets/examples/room-5_rgb.png \
  --seg midi3d/assets/examples/room-5_seg.png -o outputs/room-5.glb "$@"
