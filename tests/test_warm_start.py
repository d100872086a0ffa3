"""Warm starts across latent sizes (midi3d.models.warm_start) and the v2 model spec."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import torch

from conftest import TEST_SPEC
from midi3d.models.factory import PipelineSpec, build_pipeline
from midi3d.models.warm_start import warm_start_pipeline

ROOT = Path(__file__).resolve().parents[1]


def _spec(channels: int, seed: int) -> PipelineSpec:
    data = copy.deepcopy(TEST_SPEC)
    data["transformer"]["in_channels"] = channels
    data["vae"]["latent_channels"] = channels
    data["seed"] = seed
    return PipelineSpec(**data)


def test_warm_start_copies_what_fits_and_leaves_the_rest_fresh():
    donor, target = build_pipeline(_spec(4, seed=1)), build_pipeline(_spec(8, seed=2))
    fresh = {k: v.clone() for k, v in target.transformer.state_dict().items()}
    vae_before = {k: v.clone() for k, v in target.vae.state_dict().items()}
    report = warm_start_pipeline(target, donor)
    donor_state, state = donor.transformer.state_dict(), target.transformer.state_dict()
    assert report.reshaped and all(name.startswith("transformer.") for name in report.reshaped)
    for name, tensor in state.items():
        if f"transformer.{name}" in report.reshaped:  # the latent-size projections stay as built
            assert torch.equal(tensor, fresh[name]) and tensor.shape != donor_state[name].shape
        else:
            assert torch.equal(tensor, donor_state[name]), name
    assert any("proj_in" in name for name in report.reshaped)
    for encoder in ("image_encoder_1", "image_encoder_2"):
        for name, tensor in getattr(target, encoder).state_dict().items():
            assert torch.equal(tensor, getattr(donor, encoder).state_dict()[name])
    assert all(torch.equal(v, vae_before[k]) for k, v in target.vae.state_dict().items())  # never touched
    assert "copied" in report.summary()


def test_warm_start_script_writes_a_loadable_folder(tmp_path):
    build_pipeline(_spec(4, seed=1)).save_pretrained(tmp_path / "donor")
    build_pipeline(_spec(8, seed=2)).save_pretrained(tmp_path / "vae-run")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "warm_start.py"), str(tmp_path / "out"),
                             "--vae", str(tmp_path / "vae-run"), "--donor", str(tmp_path / "donor")],
                            capture_output=True, text=True, check=True)
    assert "tensors copied" in result.stdout
    from midi3d.pipelines import MIDIPipeline

    out = MIDIPipeline.from_pretrained(tmp_path / "out")
    assert out.transformer.config.in_channels == 8 and out.vae.config.latent_channels == 8


def test_v2_specs_are_valid_and_match_the_latent_size():
    spec = PipelineSpec.builtin("midi3d-tiny-v2")
    assert spec.vae["latent_channels"] == spec.transformer["in_channels"] == 16
    assert spec.vae["embed_include_pi"] is False
