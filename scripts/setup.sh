#!/usr/bin/env bash
# Set up midi3d on a fresh Debian machine: system packages, a virtual environment in .venv,
# and the package (with the `dev` extra when called as `setup.sh dev`). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(libusb-1.0-0 libgl1)   # Open3D's runtime libraries
# The browser test drives Debian's chromium through Playwright (no browser download).
[ "${1:-}" = "dev" ] && SYSTEM_PACKAGES+=(chromium)
missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
extra=""; [ "${1:-}" = "dev" ] && extra="[dev]"
# A rerun skips pip when this checkout is already installed in editable mode from the same
# pyproject.toml with at least these extras (the stamp is written after a successful install;
# scripts/test.sh installs the wheel instead, which the editable check below notices).
stamp=.venv/.midi3d-setup
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
editable() (  # run from / so that the checkout's own midi3d/ folder is not what gets imported
  here="$PWD"; cd / && "$here/.venv/bin/python" -c "import sys, midi3d, pathlib
sys.exit(pathlib.Path(midi3d.__file__).resolve().parent != pathlib.Path('$here/midi3d').resolve())" 2>/dev/null
)
if [ -f "$stamp" ] && { [ "$(cat "$stamp")" = "$want [dev]" ] || [ "$(cat "$stamp")" = "$want $extra" ]; } && editable; then
  exit 0
fi
rm -f "$stamp"
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# (a failed install stops here, before the stamp: only pip's own status counts, not grep's)
.venv/bin/python -m pip install -q -e ".${extra}" 2>&1 | { grep -v "^WARNING: Location" || true; }
.venv/bin/python -c "import midi3d" # fail loudly if the install did not work
echo "$want $extra" > "$stamp"
