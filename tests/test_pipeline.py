"""Pipeline behaviour on a tiny random model: batching, determinism, dtypes, folders."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from midi3d.models.checkpoint import CheckpointError
from midi3d.pipelines import ExtractionOptions, MIDIPipeline
from midi3d.pipelines.preprocess import pad_scene, split_instances
from midi3d.pipelines.scene import GenerateOptions, SceneInputs, generate_scene

FAST = ExtractionOptions(resolution=32, coarse_resolution=16)


def scene(ids=(1, 2, 3), size=48) -> SceneInputs:
    labels = np.zeros((size, size), np.int64)
    rgb = np.full((size, size, 3), 255, np.uint8)
    for k, i in enumerate(ids):
        labels[4 + 14 * k : 14 + 14 * k, 6 : 6 + 10 * (k + 1)] = i
        rgb[labels == i] = (60 * k, 200 - 50 * k, 120)
    return SceneInputs(rgb, labels, name="synthetic")


def inputs(s: SceneInputs):
    images, masks = split_instances(s.rgb, s.labels, s.ids)
    return images, masks, [s.rgb] * len(images)


def test_mixed_instance_counts_in_one_batch_match_separate_calls(tiny_pipe):
    a, b = scene((1, 2)), scene((4, 5, 6))
    ia, ib = inputs(a), inputs(b)
    g = torch.Generator().manual_seed(0)
    la, lb = torch.randn(2, 32, 4, generator=g), torch.randn(3, 32, 4, generator=g)
    kwargs = dict(num_inference_steps=2, guidance_scale=3.0, output_type="latent")
    sep_a = tiny_pipe(*ia, latents=la, **kwargs).latents
    sep_b = tiny_pipe(*ib, latents=lb, **kwargs).latents
    joint = tiny_pipe(ia[0] + ib[0], ia[1] + ib[1], ia[2] + ib[2], latents=torch.cat([la, lb]),
                      num_instances=[2, 3], **kwargs).latents
    torch.testing.assert_close(joint, torch.cat([sep_a, sep_b]), atol=1e-5, rtol=1e-5)
    # and multi-instance attention matters: scene b alone differs from b's instances run one by one
    single = torch.cat([tiny_pipe(*[[x[i]] for x in ib], latents=lb[i : i + 1], **kwargs).latents for i in range(3)])
    assert (single - sep_b).abs().max() > 1e-4


def test_num_latent_tokens_is_configurable(tiny_pipe):
    out = tiny_pipe(*inputs(scene()), num_inference_steps=1, num_latent_tokens=16, output_type="latent")
    assert out.latents.shape == (3, 16, 4)


def test_same_seed_same_meshes(tiny_pipe):
    options = GenerateOptions(steps=2, seed=7, extraction=FAST, postprocess=None)
    first = generate_scene(tiny_pipe, scene(), options)
    second = generate_scene(tiny_pipe, scene(), options)
    assert [m is None for m in first.meshes] == [m is None for m in second.meshes]
    for a, b in zip(first.meshes, second.meshes):
        if a is not None:
            np.testing.assert_array_equal(a.vertices, b.vertices)
            np.testing.assert_array_equal(a.faces, b.faces)


def test_empty_instance_is_named_in_a_warning(tiny_pipe, caplog):
    with torch.no_grad():
        tiny_pipe.vae.decoder.proj_out.bias.fill_(1e4)  # value = -(...) -> far below zero everywhere
    with caplog.at_level(logging.WARNING, logger="midi3d"):  # a quiet CLI run in this process may have raised it
        result = generate_scene(tiny_pipe, scene(), GenerateOptions(steps=1, extraction=FAST, postprocess=None))
    assert result.empty_ids == [1, 2, 3]
    assert "instance(s) 1, 2, 3" in caplog.text


def test_instances_without_surface_use_the_folder_or_callers_fallback_levels(tiny_pipe, monkeypatch, tmp_path):
    """The decoded fields of instances 2 and 3 stay above zero (minimum 0.03): without fallback
    levels they have no mesh; with the folder's (saved and reloaded) or the caller's levels they
    are meshed at the first level that has a surface, and the result names them."""
    from midi3d.pipelines.batch import summary_line
    from midi3d.pipelines.sampling import SamplingDefaults

    solid = lambda p: p.norm(dim=-1) - 0.3  # noqa: E731
    faint = lambda p: p.norm(dim=-1) + 0.03  # noqa: E731
    options = GenerateOptions(steps=1, extraction=ExtractionOptions(resolution=32, coarse_resolution=8),
                              postprocess=None)
    tiny_pipe.sampling_defaults = SamplingDefaults(fallback_levels=(0.1, 0.4))
    tiny_pipe.save_pretrained(tmp_path / "pipe")
    pipe = MIDIPipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.sampling_defaults.fallback_levels == (0.1, 0.4)
    pipe.set_progress_bar_config(disable=True)
    monkeypatch.setattr(pipe.vae, "sdf_functions", lambda latents, chunk_size=None: [solid, faint, faint])
    result = generate_scene(pipe, scene(), options)
    assert result.empty_ids == [] and result.fallback_levels == {2: 0.1, 3: 0.1}
    meshes = result.meshes_by_id()  # each mesh says so too (the evaluation counts them from this)
    assert [meshes[i].metadata.get("midi3d_fallback_level") for i in (1, 2, 3)] == [None, 0.1, 0.1]
    assert result.settings["fallback_levels"] == (0.1, 0.4)
    assert "(dilated: 2, 3)" in summary_line(tmp_path / "room.glb", result, 1.0)
    import trimesh

    from midi3d.pipelines.scene import export_scene

    written = trimesh.load(export_scene(result, tmp_path / "room.glb"), force="scene")
    assert written.metadata["midi3d_fallback_levels"] == {"2": 0.1, "3": 0.1}
    assert sorted(written.graph.nodes_geometry) == ["instance_1", "instance_2", "instance_3"]
    off = generate_scene(pipe, scene(), GenerateOptions(**{**options.__dict__, "extraction": ExtractionOptions(
        resolution=32, coarse_resolution=8, fallback_levels=())}))
    assert off.empty_ids == [2, 3] and off.fallback_levels == {}
    assert "(no surface: 2, 3)" in summary_line(tmp_path / "room.glb", off, 1.0)
    higher = generate_scene(pipe, scene(), GenerateOptions(**{**options.__dict__, "extraction": ExtractionOptions(
        resolution=32, coarse_resolution=8, fallback_levels=(0.01, 0.3))}))
    assert higher.fallback_levels == {2: 0.3, 3: 0.3}  # the caller's levels win; 0.01 has no surface


def test_unset_guidance_and_resolution_come_from_the_pipeline(tiny_pipe, monkeypatch):
    """``GenerateOptions()`` leaves guidance and meshing resolution to ``pipe.sampling_defaults``
    (so Python callers of the embedded model get its defaults, as CLI users do); given values win."""
    import midi3d.pipelines.pipeline_midi as pipeline_module
    from midi3d.pipelines.sampling import OFFICIAL_DEFAULTS, SamplingDefaults

    assert tiny_pipe.sampling_defaults == OFFICIAL_DEFAULTS
    latents, resolutions = [], []
    real_extract, real_meshes = tiny_pipe.extract, pipeline_module.extract_meshes

    def spy_extract(lat, options=None, postprocess=None):
        latents.append(lat.clone())
        return real_extract(lat, options, postprocess)

    def spy_meshes(sdfs, method, resolution, *args, **kwargs):
        resolutions.append(resolution)
        return real_meshes(sdfs, method, resolution, *args, **kwargs)

    monkeypatch.setattr(tiny_pipe, "extract", spy_extract)
    monkeypatch.setattr(pipeline_module, "extract_meshes", spy_meshes)
    monkeypatch.setattr(tiny_pipe, "sampling_defaults", SamplingDefaults(resolution=16, guidance=2.5))
    for guidance, resolution in [(None, None), (2.5, 32), (7.0, None)]:
        extraction = ExtractionOptions(resolution=resolution, coarse_resolution=8)
        generate_scene(tiny_pipe, scene(), GenerateOptions(steps=2, guidance=guidance, extraction=extraction,
                                                           postprocess=None))
    assert resolutions == [16, 32, 16]
    torch.testing.assert_close(latents[0], latents[1])  # unset guidance = the pipeline's 2.5
    assert (latents[0] - latents[2]).abs().max() > 1e-4  # and guidance does change the result


def test_bfloat16_on_cpu(tiny_pipe):
    reference = generate_scene(tiny_pipe, scene(), GenerateOptions(steps=2, extraction=FAST, postprocess=None,
                                                                   guidance=3.0))
    tiny_pipe.to(torch.bfloat16)
    assert tiny_pipe.transformer.dtype == tiny_pipe.vae.dtype == tiny_pipe.image_encoder_2.dtype == torch.bfloat16
    result = generate_scene(tiny_pipe, scene(), GenerateOptions(steps=2, extraction=FAST, postprocess=None,
                                                                guidance=3.0))
    assert result.latents.dtype == torch.bfloat16 and len(result.meshes) == 3
    # the same sampling, rounded differently: close to float32, not equal to it
    difference = (result.latents.float() - reference.latents).abs()
    assert 0 < difference.max() and difference.mean() < 0.1 * reference.latents.abs().mean()


def test_pad_scene_is_square_and_keeps_objects():
    s = scene(size=48)
    wide = np.full((48, 96, 3), 255, np.uint8)
    labels = np.zeros((48, 96), np.int64)
    wide[:, :48], labels[:, :48] = s.rgb, s.labels
    rgb, seg = pad_scene(wide, labels)
    assert rgb.shape[0] == rgb.shape[1] == seg.shape[0] == seg.shape[1]
    for i in s.ids:
        assert (seg == i).sum() == (labels == i).sum()


def test_round_trip_and_pickle_refusal(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "model")
    tiny_pipe.save_pretrained(tmp_path / "model")  # overwriting an existing folder is atomic too
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    loaded = MIDIPipeline.from_pretrained(tmp_path / "model")
    assert loaded.transformer.mi_layers == tiny_pipe.transformer.mi_layers
    for key, value in tiny_pipe.vae.state_dict().items():
        torch.testing.assert_close(loaded.vae.state_dict()[key], value)

    weights = tmp_path / "model" / "vae" / "diffusion_pytorch_model.safetensors"
    torch.save(tiny_pipe.vae.state_dict(), weights.with_suffix(".bin"))
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.bin: pickled weights are refused"):
        MIDIPipeline.from_pretrained(tmp_path / "model")
    trusted = MIDIPipeline.from_pretrained(tmp_path / "model", allow_pickle=True)
    torch.testing.assert_close(trusted.vae.decoder.proj_out.weight, tiny_pipe.vae.decoder.proj_out.weight)


def test_non_finite_weights_are_refused(tiny_pipe, tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_pipe.save_pretrained(tmp_path / "model")
    path = tmp_path / "model" / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    state["proj_out.bias"][0] = float("nan")
    save_file(state, path)
    with pytest.raises(CheckpointError, match=r"non-finite values .* proj_out\.bias"):
        MIDIPipeline.from_pretrained(tmp_path / "model")


def test_dinov2_expansion_to_seven_channels():
    from transformers import Dinov2Config, Dinov2Model

    from midi3d.models.image_encoders import expand_patch_embedding

    model = Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=28))
    rgb = model.embeddings.patch_embeddings.projection.weight.detach().clone()
    expand_patch_embedding(model, "clone")
    weight = model.embeddings.patch_embeddings.projection.weight
    assert weight.shape[1] == 7 and model.config.num_channels == 7
    torch.testing.assert_close(weight[:, :3], rgb)
    torch.testing.assert_close(weight[:, 3:6], rgb)
    torch.testing.assert_close(weight[:, 6:], rgb[:, :1])
    assert model(pixel_values=torch.zeros(1, 7, 28, 28)).last_hidden_state.shape == (1, 5, 16)
