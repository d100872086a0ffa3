#!/usr/bin/env bash
# The recipe of the embedded model midi3d-tiny (v2; v1 is its first stages), end to end
# (see docs/training.md).
# Every step resumes where it stopped when rerun.
# Usage: bash scripts/train-embedded.sh [--device auto|cpu|cuda] [WORK_DIR]
# (--device cuda runs the same commands on a GPU; auto, the default, uses one when there is one.)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=auto
if [ "${1:-}" = "--device" ]; then DEVICE="$2"; shift 2; fi
WORK="${1:-work}"
MIDI3D=".venv/bin/midi3d"
train() { "$MIDI3D" train "$@" --device "$DEVICE"; }
mkdir -p "$WORK"

# 1. Data: 2400 training rooms (seed 1); the held-out test split uses seed 7 (never trained on).
$MIDI3D synth --out "$WORK/synth-train" --scenes 2400 --seed 1 --image-size 256 --surface-points 4096 -q
$MIDI3D synth --out "$WORK/synth-test" --scenes 200 --seed 7 -q

# 2. Shape VAE: 2500 steps at a constant rate, then 2000 more with a cosine decay (the same run).
OMP_NUM_THREADS=2 train embedded-vae --data "$WORK/synth-train" --out "$WORK/vae" --cache-dir "$WORK/cache" -q
OMP_NUM_THREADS=2 train embedded-vae-decay --data "$WORK/synth-train" --out "$WORK/vae" --cache-dir "$WORK/cache" -q

# 3. Stage 1: diffusion transformer + encoders (multi-instance attention on the default layers, mixed training).
OMP_NUM_THREADS=1 train embedded-dit --data "$WORK/synth-train" --out "$WORK/dit-mi-default" \
  --init "$WORK/vae/final/pipeline" --cache-dir "$WORK/cache" --threads 1 -q
# (scripts/ablation.sh trains this run and its three variants together, in parallel.)

# 4. Decoder-only fine-tuning with noise on the latents (the encoder, hence the latent space, is frozen).
#    It starts from the step-1000 checkpoint: any pipeline of step 3 holds the same rescaled VAE.
OMP_NUM_THREADS=1 train embedded-decoder --data "$WORK/synth-train" --out "$WORK/vae-robust" \
  --init "$WORK/dit-mi-default/checkpoints/step-0001000/pipeline" --cache-dir "$WORK/cache" --threads 1 -q

# 5. Assemble: the transformer's EMA pipeline folder with the fine-tuned decoder.
if [ ! -d "$WORK/stage-1" ]; then
  rm -rf "$WORK/stage-1.tmp"
  cp -r "$WORK/dit-mi-default/final/pipeline" "$WORK/stage-1.tmp"
  rm -rf "$WORK/stage-1.tmp/vae"
  cp -r "$WORK/vae-robust/final/pipeline/vae" "$WORK/stage-1.tmp/vae"
  mv "$WORK/stage-1.tmp" "$WORK/stage-1"
fi

# 6. Stage 2: the layout loss, 14000 steps, then warm restarts to 18000 and 24000 (one run folder).
#    The last one records guidance 2 and 128³ meshing in the folder it writes.
for stage in embedded-layout-14k embedded-layout-18k embedded-layout-24k; do
  OMP_NUM_THREADS=2 train "$stage" --data "$WORK/synth-train" --out "$WORK/dit-layout" \
    --init "$WORK/stage-1" --cache-dir "$WORK/cache" --threads 2 -q
done

# v1 (steps 2-6) is done: WORK/dit-layout/final/pipeline is midi3d-tiny v1, the donor of v2's
# encoders and transformer blocks. Embedded model v2 (issue 18), the object frame, from here on.

# 7. Object-frame shape VAE (each object in its own box; the box in the latent's last 6 channels).
OMP_NUM_THREADS=2 train embedded-v2-object-vae --data "$WORK/synth-train" --out "$WORK/v2-object-vae" \
  --cache-dir "$WORK/cache" -q

# 8. Its transformer stage starts from v1's encoders and transformer blocks (warm start).
if [ ! -d "$WORK/v2-object-init" ]; then
  .venv/bin/python scripts/warm_start.py "$WORK/v2-object-init" --vae "$WORK/v2-object-vae/final/pipeline" \
    --donor "$WORK/dit-layout/final/pipeline"
fi

# 9. Transformer + encoders on the object-frame latents, then 2000 steps with the box channels weighted.
OMP_NUM_THREADS=2 train embedded-v2-object-dit --data "$WORK/synth-train" --out "$WORK/v2-object-dit" \
  --init "$WORK/v2-object-init" --cache-dir "$WORK/cache" --threads 2 -q
OMP_NUM_THREADS=2 train embedded-v2-object-dit-box --data "$WORK/synth-train" --out "$WORK/v2-object-dit-box" \
  --init "$WORK/v2-object-dit/final/pipeline" --cache-dir "$WORK/cache" --threads 2 -q

# 10. The instance layout model (3D boxes from the 2D masks), added to that folder.
OMP_NUM_THREADS=2 train embedded-v2-object-layout --data "$WORK/synth-train" --out "$WORK/v2-object-layout" \
  --init "$WORK/v2-object-dit-box/final/pipeline" --cache-dir "$WORK/cache" --threads 2 -q

# 11. The VAE's decoder alone, 6000 more steps (encoder and quant frozen: the latents, hence the
#     transformer and layout model of that folder, stay valid; only vae/ changes).
OMP_NUM_THREADS=2 train embedded-v2-object-decoder --data "$WORK/synth-train" --out "$WORK/v2-object-decoder" \
  --init "$WORK/v2-object-layout/final/pipeline" --cache-dir "$WORK/cache" --threads 2 -q

# 12. Ship it (the model card README.md stays).
cp midi3d/assets/midi3d-tiny/README.md "$WORK/model-card.md"
rm -rf midi3d/assets/midi3d-tiny
cp -r "$WORK/v2-object-decoder/final/pipeline" midi3d/assets/midi3d-tiny
cp "$WORK/model-card.md" midi3d/assets/midi3d-tiny/README.md
