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


def test_widened_pipeline_computes_what_the_donor_does(tmp_path):
    from midi3d.models.warm_start import widened_pipeline

    donor = build_pipeline(_spec(4, seed=1)).to(torch.float32)
    donor.transformer.set_multi_instance_layers("all")
    wide, report = widened_pipeline(donor, 8, seed=3)
    assert wide.vae.config.latent_channels == 8 and wide.transformer.config.in_channels == 8
    assert wide.transformer.mi_layers == donor.transformer.mi_layers
    assert not report.reshaped and "vae.quant.weight" in report.copied
    generator = torch.Generator().manual_seed(0)
    surface = torch.randn(2, 256, 6, generator=generator)
    surface[..., 3:] = torch.nn.functional.normalize(surface[..., 3:], dim=-1)
    tokens = donor.transformer.config.width
    with torch.no_grad():
        old = donor.vae.encode(surface, num_tokens=tokens).latent_dist
        new = wide.vae.encode(surface, num_tokens=tokens).latent_dist
        torch.testing.assert_close(new.mean[..., :4], old.mean)
        torch.testing.assert_close(new.logvar[..., :4], old.logvar)
        # whatever the new channels hold, the decoder and the transformer ignore them
        latents = torch.cat([old.mean, torch.randn(*old.mean.shape[:2], 4, generator=generator)], dim=-1)
        queries = torch.rand(2, 100, 3, generator=generator) * 2 - 1
        torch.testing.assert_close(wide.vae.decode(latents, queries).sample, donor.vae.decode(old.mean, queries).sample)
        scene = {"num_instances": 2}  # the two objects form one scene (multi-instance attention on)
        context = torch.randn(2, 5, donor.transformer.config.cross_attention_dim, generator=generator)
        context_2 = torch.randn(2, 5, donor.transformer.config.cross_attention_2_dim, generator=generator)
        velocity_old = donor.transformer(old.mean, 0.5, context, context_2, attention_kwargs=scene).sample
        velocity_new = wide.transformer(latents, 0.5, context, context_2, attention_kwargs=scene).sample
        torch.testing.assert_close(velocity_new[..., :4], velocity_old)
    assert not torch.equal(wide.vae.quant.weight[4:8], torch.zeros_like(wide.vae.quant.weight[4:8]))
    wide.save_pretrained(tmp_path / "wide")  # a normal folder: it loads back with the new size
    from midi3d.pipelines import MIDIPipeline

    assert MIDIPipeline.from_pretrained(tmp_path / "wide").vae.config.latent_channels == 8


def test_widening_refuses_fewer_channels():
    from midi3d.models.warm_start import widened_pipeline

    try:
        widened_pipeline(build_pipeline(_spec(8, seed=1)), 4)
    except ValueError as error:
        assert "cannot widen 8 latent channels to 4" in str(error)
    else:
        raise AssertionError("narrowing was accepted")
