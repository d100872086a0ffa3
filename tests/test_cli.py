"""The ``midi3d generate`` command: outputs, folder mode and one-line errors with exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image
from typer.testing import CliRunner

from midi3d.cli import app
from midi3d.models.factory import PipelineSpec, build_pipeline

from conftest import BUNDLED, TEST_SPEC

FAST = ["--steps", "2", "--resolution", "32", "--quiet"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    build_pipeline(PipelineSpec(**TEST_SPEC)).save_pretrained(folder)
    return folder


def run(*args):
    result = CliRunner().invoke(app, ["generate", *map(str, args)])
    return result.exit_code, result.output


def glb_nodes(path: Path) -> list[str]:
    scene = trimesh.load(path)
    return sorted(scene.graph.nodes_geometry)


def test_bundled_example_single_image(tmp_path, model_dir):
    out = tmp_path / "scene.glb"
    code, output = run(BUNDLED / "blocks-5_rgb.png", "--seg", BUNDLED / "blocks-5_seg.png", "-o", out,
                       "--model", model_dir, *FAST)
    assert code == 0, output
    scene = trimesh.load(out)
    empty = scene.metadata.get("midi3d_empty_instance_ids", [])
    assert sorted(glb_nodes(out) + [f"instance_{i}" for i in empty]) == [f"instance_{i}" for i in range(1, 6)]
    assert len(glb_nodes(out)) >= 1


@pytest.mark.parametrize("fmt", ["obj", "ply"])
def test_other_formats(tmp_path, model_dir, fmt):
    out = tmp_path / f"scene.{fmt}"
    code, output = run(BUNDLED / "blocks-5_rgb.png", "--seg", BUNDLED / "blocks-5_seg.png", "-o", out,
                       "--model", model_dir, *FAST)
    assert code == 0, output
    assert len(trimesh.load(out, force="mesh").vertices) > 0


def test_embedded_model_is_the_shipped_trained_one():
    from midi3d.embedded import embedded_model_folder, load_embedded_pipeline
    from midi3d.pipelines.sampling import SamplingDefaults

    folder = embedded_model_folder()
    assert (folder / "model_index.json").is_file(), "the trained midi3d-tiny weights are not in the installed package"
    pipe = load_embedded_pipeline()
    assert pipe.transformer.config.num_layers == 8 and pipe.transformer.mi_layers == (2, 3, 4, 5, 6)
    # v2: an object-frame VAE (the box in the latent's last 6 of 22 channels) and its layout model
    assert pipe.vae.config.object_frame and pipe.vae.config.latent_channels == 22
    assert pipe.layout_model is not None
    # its folder records what it samples with, and every caller gets it
    assert pipe.sampling_defaults == SamplingDefaults(steps=50, guidance=6.0, resolution=64,
                                                      fallback_levels=(0.5, 1.0, 2.0, 4.0))


def test_embedded_model_beats_the_random_stand_in_on_held_out_rooms(tmp_path):
    """The shipped weights are trained, not random: on rooms the training never saw, the surfaces
    it produces lie much closer to the objects than the random stand-in's (scene F-score over
    the instances that got a surface; the embedded model still misses some small ones)."""
    from midi3d.data.datasets import ThreeDFrontDataset
    from midi3d.data.synth import SynthConfig, generate_dataset
    from midi3d.embedded import load_embedded_pipeline
    from midi3d.eval.metrics import fscore
    from midi3d.eval.runner import sample_points
    from midi3d.models.factory import PipelineSpec, build_pipeline
    from midi3d.pipelines.pipeline_midi import ExtractionOptions
    from midi3d.pipelines.scene import GenerateOptions, SceneInputs, generate_scene

    generate_dataset(tmp_path / "data", 3, SynthConfig(seed=4242, image_size=256, surface_points=4096))
    data = ThreeDFrontDataset(tmp_path / "data", test_size=3, points=4096)
    options = GenerateOptions(steps=10, guidance=2.0, extraction=ExtractionOptions(resolution=64), postprocess=None)

    def mean_fscore(pipe) -> float:
        pipe.set_progress_bar_config(disable=True)
        values = []
        for index in range(len(data)):
            scene = data.load(index)
            result = generate_scene(pipe, SceneInputs(scene.rgb, scene.labels), options)
            gt = {i: p for i, p in zip(scene.ids, scene.gt_points)}
            pairs = [(sample_points(m, 2048, 0), gt[i]) for i, m in zip(result.ids, result.meshes)
                     if m is not None and i in gt]
            if not pairs:
                values.append(0.0)
                continue
            values.append(fscore(np.concatenate([p for p, _ in pairs]), np.concatenate([g for _, g in pairs])))
        return float(np.mean(values))

    trained = mean_fscore(load_embedded_pipeline())
    random = mean_fscore(build_pipeline(PipelineSpec.builtin("midi3d-tiny-v2-object")))  # its spec, random weights
    assert trained > 0.15 and trained > 3 * random, (trained, random)


def test_embedded_default_model(tmp_path):
    out = tmp_path / "scene.glb"
    code, output = run(BUNDLED / "room-5_rgb.png", "--seg", BUNDLED / "room-5_seg.png", "-o", out,
                       "--steps", "10", "--resolution", "64", "--quiet")
    assert code == 0, output
    # Every instance is either a mesh node or listed as empty in the scene metadata, never dropped.
    scene = trimesh.load(out, force="scene")
    empty = scene.metadata.get("midi3d_empty_instance_ids", [])
    assert len(glb_nodes(out)) + len(empty) == 5 and len(glb_nodes(out)) >= 3


def write_pair(folder: Path, name: str, size=(40, 40), ids=(1, 2)):
    rgb = np.full((*size, 3), 255, np.uint8)
    seg = np.zeros(size, np.uint8)
    for k, i in enumerate(ids):
        seg[5 + 10 * k : 12 + 10 * k, 5:30] = i
        rgb[seg == i] = (40 * k, 100, 200)
    Image.fromarray(rgb).save(folder / f"{name}_rgb.png")
    Image.fromarray(seg).save(folder / f"{name}_seg.png")


def test_folder_mode_continues_after_a_failure(tmp_path, model_dir):
    src = tmp_path / "in"
    src.mkdir()
    write_pair(src, "good")
    write_pair(src, "bad")
    (src / "bad_seg.png").write_text("not an image")
    code, output = run(src, "-o", tmp_path / "out", "--model", model_dir, "--steps", "2", "--resolution", "32")
    assert code == 1
    assert (tmp_path / "out" / "good.glb").is_file()
    assert not (tmp_path / "out" / "bad.glb").exists()
    assert "bad" in output and "not an image" in output


def test_folder_mode_on_real_examples(tmp_path, model_dir, examples_dir):
    code, output = run(examples_dir, "-o", tmp_path / "out", "--model", model_dir, *FAST)
    assert code == 0, output
    written = sorted(p.stem for p in (tmp_path / "out").glob("*.glb"))
    assert written == sorted(p.name[: -len("_rgb.png")] for p in examples_dir.glob("*_rgb.png"))


def assert_clean_error(code, output, *fragments):
    assert code == 2, output
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    for fragment in fragments:
        assert fragment in lines[0], output


def test_errors_are_one_line_with_exit_2(tmp_path, model_dir):
    out = tmp_path / "o.glb"
    rgb, seg = BUNDLED / "blocks-5_rgb.png", BUNDLED / "blocks-5_seg.png"
    assert_clean_error(*run(tmp_path / "missing.png", "--seg", seg, "-o", out), "missing.png", "not found")
    text = tmp_path / "text.png"
    text.write_text("hello")
    assert_clean_error(*run(text, "--seg", seg, "-o", out), "text.png", "not an image")
    small = tmp_path / "small_seg.png"
    Image.fromarray(np.ones((10, 10), np.uint8)).save(small)
    assert_clean_error(*run(rgb, "--seg", small, "-o", out), "small_seg.png", "10x10", "256x256")
    empty = tmp_path / "empty_seg.png"
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(empty)
    assert_clean_error(*run(rgb, "--seg", empty, "-o", out), "empty_seg.png", "no instance")
    assert not out.exists()


def test_bad_pipeline_folders_name_the_problem(tmp_path, model_dir):
    from safetensors.torch import load_file, save_file

    rgb, seg = BUNDLED / "blocks-5_rgb.png", BUNDLED / "blocks-5_seg.png"
    out = tmp_path / "o.glb"
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state.pop("proj_out.bias")
    state["extra.weight"] = state["proj_out.weight"].clone()
    save_file(state, weights)
    assert_clean_error(*run(rgb, "--seg", seg, "-o", out, "--model", broken), "transformer",
                       "proj_out.bias", "extra.weight")
    config = json.loads((broken / "vae" / "config.json").read_text())
    config["width_decoder"] = 32
    (broken / "vae" / "config.json").write_text(json.dumps(config))
    shutil.copy(model_dir / "transformer" / "diffusion_pytorch_model.safetensors", weights)
    assert_clean_error(*run(rgb, "--seg", seg, "-o", out, "--model", broken), "vae", "shape mismatch")
    assert_clean_error(*run(rgb, "--seg", seg, "-o", out, "--model", tmp_path / "nowhere"), "nowhere", "not found")
    evil = tmp_path / "evil"
    shutil.copytree(model_dir, evil)
    index = json.loads((evil / "model_index.json").read_text())
    index["transformer"] = ["os", "system"]
    (evil / "model_index.json").write_text(json.dumps(index))
    assert_clean_error(*run(rgb, "--seg", seg, "-o", out, "--model", evil), "unsupported class 'system'")
    assert not out.exists()


def test_existing_output_survives_a_failed_run(tmp_path, model_dir):
    out = tmp_path / "o.glb"
    out.write_bytes(b"previous result")
    empty = tmp_path / "empty_seg.png"
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(empty)
    code, _ = run(BUNDLED / "blocks-5_rgb.png", "--seg", empty, "-o", out, "--model", model_dir)
    assert code == 2
    assert out.read_bytes() == b"previous result"


def test_float16_on_cpu_is_refused(tmp_path, model_dir):
    code, output = run(BUNDLED / "blocks-5_rgb.png", "--seg", BUNDLED / "blocks-5_seg.png", "-o", tmp_path / "o.glb",
                       "--model", model_dir, "--dtype", "float16")
    assert_clean_error(code, output, "float16", "bfloat16")


def test_outputs_respect_the_umask(tmp_path, model_dir):
    import os
    import stat

    out = tmp_path / "scene.glb"
    code, output = run(BUNDLED / "blocks-5_rgb.png", "--seg", BUNDLED / "blocks-5_seg.png", "-o", out,
                       "--model", model_dir, *FAST)
    assert code == 0, output
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["scene.glb"]  # no temporary file left behind


@pytest.mark.parametrize("use_model, given, expected", [(False, None, 6.0), (True, None, 7.0), (False, "5", 5.0)])
def test_guidance_default_depends_on_the_model(tmp_path, model_dir, monkeypatch, use_model, given, expected):
    """The embedded model samples at its folder's guidance (6), a --model folder without recorded
    defaults at the official 7; an explicit --guidance always wins."""
    import midi3d.pipelines.batch as batch_module

    seen = []
    real = batch_module.generate_scene

    def spy(pipe, scene, options=None):
        result = real(pipe, scene, options)
        seen.append(result.settings["guidance"])
        return result

    monkeypatch.setattr(batch_module, "generate_scene", spy)
    args = [BUNDLED / "blocks-5_rgb.png", "--seg", BUNDLED / "blocks-5_seg.png", "-o", tmp_path / "s.glb", *FAST]
    args += ["--model", model_dir] if use_model else []
    args += ["--guidance", given] if given else []
    code, output = run(*args)
    assert code == 0, output
    assert seen == [expected]


@pytest.mark.parametrize("value, message", [("abc", "expected 'none' or comma-separated numbers"),
                                            ("0.2,0.1", "increasing finite numbers > 0")])
def test_bad_empty_fallback_levels_are_one_line_before_any_model_loads(tmp_path, value, message):
    out = tmp_path / "scene.glb"
    code, output = run(BUNDLED / "blocks-5_rgb.png", "--seg", BUNDLED / "blocks-5_seg.png", "-o", out,
                       "--model", tmp_path / "no-such-model", "--empty-fallback", value, *FAST)
    assert code == 2 and message in output and "--empty-fallback" in output, output
    assert not out.exists()


def test_a_folder_with_bad_fallback_levels_names_its_index(tmp_path, model_dir):
    import json
    import shutil

    folder = tmp_path / "tiny"
    shutil.copytree(model_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_midi3d_sampling"] = {**index.get("_midi3d_sampling", {}), "empty_fallback_levels": [0.3, -1]}
    (folder / "model_index.json").write_text(json.dumps(index))
    code, output = run(BUNDLED / "blocks-5_rgb.png", "--seg", BUNDLED / "blocks-5_seg.png", "-o",
                       tmp_path / "scene.glb", "--model", folder, *FAST)
    assert code == 2 and "model_index.json" in output and "empty_fallback_levels" in output, output
