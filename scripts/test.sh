#!/usr/bin/env bash
# Set up with the dev extra, build the wheel, install it (non-editable) and run the test
# suite against the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
rm -rf dist
.venv/bin/python -m pip wheel . --no-deps --no-build-isolation -q -w dist 2>&1 | grep -v "^WARNING: Location" || true
wheel=$(ls dist/midi3d-*.whl)
.venv/bin/python -m pip install -q --no-deps --force-reinstall "$wheel" 2>&1 | grep -v "^WARNING: Location" || true
MIDI3D_WHEEL="$PWD/$wheel" .venv/bin/pytest -q "$@"
