#!/usr/bin/env bash
# MIDI's ablation at midi3d-tiny scale (docs/results.md): multi-instance attention on 0 layers,
# the default layers, all layers; with and without mixed training. Same data, VAE, seed and
# step budget for every variant; the mi-default run is the shipped embedded model.
# Usage: bash scripts/ablation.sh [WORK_DIR]   (after scripts/train-embedded.sh steps 1-2)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-work}"
MIDI3D=".venv/bin/midi3d"
declare -A VARIANTS=(
  [mi-default]=""
  [mi-none]="--set mi_layers=none"
  [mi-all]="--set mi_layers=all"
  [mi-default-nomix]="--set mixed_probability=0"
)
for name in "${!VARIANTS[@]}"; do   # one single-threaded process per variant, in parallel
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 $MIDI3D train dit-tiny --data "$WORK/synth-train" --out "$WORK/dit-$name" \
    --init "$WORK/vae/final/pipeline" --cache-dir "$WORK/cache" --threads 1 -q ${VARIANTS[$name]} &
done
wait
# Every variant gets the same fine-tuned decoder (train-embedded.sh step 4), then is evaluated.
for name in "${!VARIANTS[@]}"; do
  rm -rf "$WORK/final-$name" && cp -r "$WORK/dit-$name/final/pipeline" "$WORK/final-$name"
  rm -rf "$WORK/final-$name/vae" && cp -r "$WORK/vae-robust/final/pipeline/vae" "$WORK/final-$name/vae"
done
OMP_NUM_THREADS=1 $MIDI3D eval --dataset 3dfront --root "$WORK/synth-test" --test-size 200 \
  --model "$WORK/final-mi-default" --out "$WORK/eval-mi-default" --icp none --steps 25 --resolution 128 -q &
for name in mi-none mi-all mi-default-nomix; do
  OMP_NUM_THREADS=1 $MIDI3D eval --dataset 3dfront --root "$WORK/synth-test" --test-size 200 --limit 50 \
    --model "$WORK/final-$name" --out "$WORK/eval-$name" --icp none --steps 25 --resolution 128 -q
done
wait
