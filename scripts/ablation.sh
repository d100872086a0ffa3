#!/usr/bin/env bash
# MIDI's ablation at midi3d-tiny scale (docs/results.md): multi-instance attention on 0 layers,
# the default layers, all layers; with and without mixed training. Same data, VAE, seed and
# step budget for every variant, one single-threaded process each, side by side.
#   bash scripts/ablation.sh [WORK_DIR]        v1 (after scripts/train-embedded.sh steps 1-2); its
#                                              mi-default run is v1's stage 1
#   bash scripts/ablation.sh --v2 [WORK_DIR]   the shipped v2 (after train-embedded.sh steps 7-8 and
#                                              10): configs/train/embedded-v2-ablation.yaml from
#                                              v2's warm start; every variant gets the layout model of
#                                              WORK/v2-object-layout and is scored on the first 50
#                                              test rooms with those boxes and with generated ones
set -euo pipefail
cd "$(dirname "$0")/.."
V2=0
if [ "${1:-}" = "--v2" ]; then V2=1; shift; fi
WORK="${1:-work}"
MIDI3D=".venv/bin/midi3d"
declare -A VARIANTS=(
  [mi-default]=""
  [mi-none]="--set mi_layers=none"
  [mi-all]="--set mi_layers=all"
  [mi-default-nomix]="--set mixed_probability=0"
)
if [ "$V2" = 1 ]; then
  CONFIG=configs/train/embedded-v2-ablation.yaml INIT="$WORK/v2-object-init" PREFIX="$WORK/v2-ablation"
else
  CONFIG=dit-tiny INIT="$WORK/vae/final/pipeline" PREFIX="$WORK"
fi
for name in "${!VARIANTS[@]}"; do   # one single-threaded process per variant, in parallel
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 $MIDI3D train "$CONFIG" --data "$WORK/synth-train" --out "$PREFIX/dit-$name" \
    --init "$INIT" --cache-dir "$WORK/cache" --threads 1 -q ${VARIANTS[$name]} &
done
wait
if [ "$V2" = 1 ]; then
  for name in "${!VARIANTS[@]}"; do
    [ -d "$PREFIX/final-$name" ] || .venv/bin/python scripts/attach_layout_model.py "$PREFIX/final-$name" \
      --pipeline "$PREFIX/dit-$name/final/pipeline" --layout-from "$WORK/v2-object-layout/final/pipeline"
  done
  for boxes in layout generated; do
    flag=""; [ "$boxes" = generated ] && flag="--generated-boxes"
    for pair in "mi-default mi-none" "mi-all mi-default-nomix"; do   # two single-threaded evals at a time
      for name in $pair; do
        # shellcheck disable=SC2086
        OMP_NUM_THREADS=1 $MIDI3D eval --dataset 3dfront --root "$WORK/synth-test" --test-size 200 --limit 50 \
          --model "$PREFIX/final-$name" --out "$PREFIX/eval-$boxes/$name" --icp none --steps 25 $flag -q &
      done
      wait
    done
  done
  exit 0
fi
# v1: every variant gets the same fine-tuned decoder (train-embedded.sh step 4), then is evaluated.
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
