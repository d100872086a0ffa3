#!/usr/bin/env bash
# The instance-control ablation (docs/results.md): one `midi3d eval` per control file, the
# embedded model with its shipped evaluation settings (25 steps, guidance and meshing from the
# folder, --icp none). Usage:
#   bash benchmarks/control_ablation.sh ROOT TEST_SIZE OUT_ROOT [EXTRA_EVAL_ARGS...] -- CONTROL.yaml...
# e.g. validation: bash benchmarks/control_ablation.sh synth-val 40 ablation-val -- benchmarks/control-ablation/*.yaml
# A finished run is skipped when its summary exists (rerun to continue an interrupted sweep).
set -euo pipefail
root=$1 test_size=$2 out_root=$3
shift 3
extra=()
while [[ $# -gt 0 && $1 != -- ]]; do extra+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
midi3d=${MIDI3D:-midi3d}
mkdir -p "$out_root"
for control in "$@"; do
    name=$(basename "$control" .yaml)
    if [[ -f $out_root/$name/summary.json ]]; then echo "$name: done already"; continue; fi
    start=$(date +%s)
    status=0
    "$midi3d" eval --dataset 3dfront --root "$root" --test-size "$test_size" --out "$out_root/$name" --icp none \
        --steps 25 --control "$control" -q "${extra[@]}" || status=$?
    if (( status > 1 )); then echo "$name: eval failed (exit $status)" >&2; exit "$status"; fi  # 1 = some scenes failed
    echo "$name: $(( $(date +%s) - start )) s"
done
