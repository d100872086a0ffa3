"""The wheel installs a single top-level import name, ``midi3d``."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import midi3d

from conftest import REPO


def built_wheel(tmp_path: Path) -> Path:
    given = os.environ.get("MIDI3D_WHEEL")
    if given:
        return Path(given)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True)
    return next(tmp_path.glob("midi3d-*.whl"))


def test_wheel_has_only_midi3d_top_level(tmp_path):
    with zipfile.ZipFile(built_wheel(tmp_path)) as wheel:
        names = wheel.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"midi3d"}
    for mapped in ("pipelines", "eval", "demo", "configs"):
        assert f"midi3d/{mapped}/__init__.py" in names
    assert "midi3d/configs/models/midi3d-tiny.yaml" in names
    assert "midi3d/assets/examples/blocks-5_rgb.png" in names
    assert "midi3d/configs/train/dit-tiny.yaml" in names
    assert "midi3d/control/__init__.py" in names and "midi3d/models/layout_tokens.py" in names
    packages = {str(p.relative_to(REPO)) for p in (REPO / "midi3d").rglob("__init__.py")}
    assert packages <= set(names), sorted(packages - set(names))  # no subpackage left out of the wheel
    assert {f"midi3d/configs/control/{p.name}" for p in (REPO / "configs" / "control").glob("*.yaml")} <= set(names)
    embedded = [n for n in names if n.startswith("midi3d/assets/midi3d-tiny/")]
    for part in ("model_index.json", "transformer/diffusion_pytorch_model.safetensors",
                 "vae/diffusion_pytorch_model.safetensors", "image_encoder_1/model.safetensors",
                 "image_encoder_2/model.safetensors", "scheduler/scheduler_config.json",
                 "feature_extractor_2/preprocessor_config.json", "layout_model/config.json",
                 "layout_model/diffusion_pytorch_model.safetensors"):
        assert f"midi3d/assets/midi3d-tiny/{part}" in embedded, part
    size = sum(info.file_size for info in zipfile.ZipFile(built_wheel(tmp_path)).infolist()
               if info.filename.startswith("midi3d/assets/midi3d-tiny/"))
    assert size <= 50 * 2**20  # the budget for the shipped model


def test_suite_runs_against_the_installed_wheel():
    if not os.environ.get("MIDI3D_WHEEL"):
        pytest.skip("only meaningful when scripts/test.sh installed the wheel (MIDI3D_WHEEL set)")
    location = Path(midi3d.__file__).resolve()
    assert "site-packages" in location.parts
    assert REPO / "midi3d" not in location.parents  # not the source tree (the venv may live inside the repo)
