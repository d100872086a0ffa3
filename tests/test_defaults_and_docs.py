"""Defaults travel with the model (embedded folder, folders written by ``midi3d train``), the
README's Python example runs as written, and training configs are validated before any work."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from conftest import BUNDLED, REPO, TEST_SPEC
from midi3d.cli import app


def test_embedded_folder_samples_at_its_recorded_defaults():
    """``pipe(image, label_map)`` with nothing else set: guidance 6, 64 cells across each object's
    box and the boxes of the layout model, from the folder."""
    import midi3d.pipelines.pipeline_midi as pipeline_module
    from midi3d.embedded import load_embedded_pipeline
    from midi3d.pipelines.scene import load_scene

    pipe = load_embedded_pipeline()
    pipe.set_progress_bar_config(disable=True)
    scene = load_scene(BUNDLED / "blocks-5_rgb.png", BUNDLED / "blocks-5_seg.png")
    resolutions = []
    real = pipeline_module.extract_meshes

    def spy(sdfs, method, resolution, *args, **kwargs):
        resolutions.append(resolution)
        return real(sdfs, method, resolution, *args, **kwargs)

    pipeline_module.extract_meshes = spy
    try:
        out = pipe(scene.rgb, scene.labels, num_inference_steps=2, seed=0)
    finally:
        pipeline_module.extract_meshes = real
    assert out.settings["guidance"] == 6.0 and out.settings["resolution"] == 64 and resolutions == [64]
    assert out.settings["boxes"] == "layout_model"
    assert out.instance_ids == scene.ids


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's Python block, executed unchanged in a folder holding ``MIDI-3D`` (here the
    embedded folder), ``room.png`` and ``room_seg.png``."""
    from midi3d.embedded import embedded_model_folder

    text = (REPO / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "from_pretrained" in b]
    assert len(blocks) == 1, "expected one Python example that loads a pipeline folder"
    shutil.copytree(embedded_model_folder(), tmp_path / "MIDI-3D")
    shutil.copy(BUNDLED / "blocks-5_rgb.png", tmp_path / "room.png")
    shutil.copy(BUNDLED / "blocks-5_seg.png", tmp_path / "room_seg.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})
    import trimesh

    scene = trimesh.load(tmp_path / "room.glb", force="scene")
    assert sorted(scene.metadata["midi3d_instance_ids"]) == [1, 2, 3, 4, 5]
    assert len(scene.geometry) >= 3


def test_a_trained_folder_reloads_with_the_defaults_it_was_saved_with(tmp_path):
    from midi3d.data.synth import SynthConfig, generate_dataset
    from midi3d.pipelines import MIDIPipeline
    from midi3d.pipelines.sampling import SamplingDefaults
    from midi3d.training.config import VAETrainConfig
    from midi3d.training.run import run_training

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**TEST_SPEC, "standin_occupancy": None, "mi_layers": [2]}))
    generate_dataset(tmp_path / "data", 2, SynthConfig(seed=5, image_size=64, surface_points=256), jobs=1)
    config = VAETrainConfig(model=str(spec), max_steps=1, batch_size=2, latent_tokens=8, query_points=64,
                            surface_points=64, near_points=64, uniform_points=32, cache_jobs=1,
                            sample_steps=12, sample_guidance=3.5, sample_resolution=64)
    run_training(config, tmp_path / "data", tmp_path / "run", quiet=True)
    folder = tmp_path / "run" / "final" / "pipeline"
    loaded = MIDIPipeline.from_pretrained(folder)
    assert loaded.sampling_defaults == SamplingDefaults(steps=12, guidance=3.5, resolution=64)
    assert loaded.transformer.mi_layers == (2,)
    # a run that sets nothing keeps what the starting folder records
    config = VAETrainConfig(**{**config.model_dump(), "sample_steps": None, "sample_guidance": None,
                               "sample_resolution": None, "max_steps": 2})
    run_training(config, tmp_path / "data", tmp_path / "run2", init=folder, quiet=True)
    again = MIDIPipeline.from_pretrained(tmp_path / "run2" / "final" / "pipeline")
    assert again.sampling_defaults == loaded.sampling_defaults


BAD_SETS = [
    ("unknown_key=1", "unknown_key: unknown key"),
    ("latent_tokens=abc", "latent_tokens: Input should be a valid integer"),
    ("max_steps=-5", "max_steps: Input should be greater than or equal to 1"),
    ("lr_schedule=cosin", "lr_schedule: Input should be 'constant' or 'cosine'"),
    ("lora={rnk: 4}", "lora.rnk: unknown key"),
    ("lora=[1, 2]", "lora: Input should be a valid dictionary"),
    ("mi_layers=4-1", "mi_layers: layers '4-1'"),
    ("gradient_checkpointing=maybe", "gradient_checkpointing: Input should be a valid boolean"),
    ("lr=nan", "lr: Input should be a finite number"),
    ("mixed_probability=1.5", "mixed_probability: Input should be less than or equal to 1"),
    ("sample_resolution=100", "sample_resolution: .*power of two"),
    ("lora.rank=0", "lora.rank: Input should be greater than or equal to 1"),
]


@pytest.mark.parametrize("setting, message", BAD_SETS)
def test_bad_training_settings_are_one_line_before_any_work(tmp_path, setting, message):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "dit-tiny", "--data", str(tmp_path), "--out", str(out),
                                      "--set", setting])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()


@pytest.mark.parametrize("device", ["gpu", "cuda"])
def test_a_training_device_that_is_not_there_is_one_line_before_any_work(tmp_path, device):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --device cuda is valid here")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "vae-tiny", "--data", str(tmp_path), "--out", str(out),
                                      "--device", device])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: --device {device}:"), result.output
    assert not out.exists()


def test_layer_grammar_is_the_same_everywhere(tmp_path):
    """``all`` and ``1,4-6`` mean the same on the command line, in a config and in the pipeline."""
    from midi3d.training.config import load_train_config

    assert load_train_config("dit-tiny", ["mi_layers=all"]).mi_layers == "all"
    assert load_train_config("dit-tiny", ["mi_layers=1,4-6"]).mi_layers == "1,4-6"
    result = CliRunner().invoke(app, ["generate", str(BUNDLED / "blocks-5_rgb.png"), "--seg",
                                      str(BUNDLED / "blocks-5_seg.png"), "-o", str(tmp_path / "x.glb"),
                                      "--mi-layers", "4-1"])
    assert result.exit_code == 2 and "layers '4-1'" in result.output


def test_the_embedded_recipe_is_in_yaml_and_its_stages_parse():
    """scripts/train-embedded.sh calls the recipe's YAML files; each parses and names a stage, and
    the shipped folder samples with what the stages of its lineage write into it."""
    from midi3d.pipelines.sampling import OFFICIAL_DEFAULTS
    from midi3d.training.config import load_train_config

    script = (REPO / "scripts" / "train-embedded.sh").read_text()
    names = re.findall(r"\b(embedded-[a-z0-9-]+)", script)
    assert len(set(names)) == 12 and "--set" not in script
    for name in names:
        assert load_train_config(name).kind in ("vae", "dit", "layout")
    lineage = ["embedded-v2-object-vae", "embedded-v2-object-dit", "embedded-v2-object-dit-box",
               "embedded-v2-object-layout", "embedded-v2-object-decoder"]  # v2's stages, each --init the one
    # before (warm start: the VAE's folder)
    assert [n for n in names if n.startswith("embedded-v2")] == lineage
    defaults = OFFICIAL_DEFAULTS
    for name in lineage:  # as midi3d.training.run resolves them: None keeps the starting folder's
        config = load_train_config(name)
        levels = None if config.sample_fallback_levels is None else tuple(config.sample_fallback_levels)
        defaults = defaults.resolve(config.sample_steps, config.sample_guidance, config.sample_resolution, levels)
    assert (defaults.steps, defaults.guidance, defaults.resolution) == (50, 6.0, 64)
    assert json.loads((REPO / "midi3d" / "assets" / "midi3d-tiny" / "model_index.json").read_text())[
        "_midi3d_sampling"] == {"num_inference_steps": 50, "guidance_scale": 6.0, "resolution": 64,
                                "empty_fallback_levels": list(defaults.fallback_levels)}  # what the recipe writes


def test_extends_merges_and_refuses_loops(tmp_path):
    from midi3d.training.config import load_train_config

    (tmp_path / "base.yaml").write_text("extends: lora\nmax_steps: 7\nlora:\n  rank: 4\n")
    (tmp_path / "top.yaml").write_text("extends: base.yaml\nlr: 2.0e-4\n")
    config = load_train_config(tmp_path / "top.yaml", ["lora.alpha=3"])
    assert (config.max_steps, config.lr, config.lora.rank, config.lora.alpha) == (7, 2e-4, 4, 3.0)
    assert config.lora.target_modules == ["to_q", "to_k", "to_v", "to_out.0"]  # merged, not replaced
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="loops back"):
        load_train_config(tmp_path / "a.yaml")


def test_an_unexpected_error_is_one_line_and_its_traceback_comes_with_debug(monkeypatch, capsys):
    """A bug (not bad input) ends in one line and exit code 3; ``--debug`` shows the traceback."""
    import midi3d.pipelines.batch as batch
    from midi3d.cli import main

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(batch, "read_single_scene", broken)
    args = ["generate", str(BUNDLED / "blocks-5_rgb.png"), "--seg", str(BUNDLED / "blocks-5_seg.png"),
            "-o", "/tmp/never-written.glb"]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 3
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: a bug (rerun with --debug" in " ".join(err.split())
    with pytest.raises(RuntimeError, match="a bug"):
        main(["--debug", *args])


def test_training_into_a_folder_of_another_run_or_with_a_damaged_state_is_one_line(tmp_path):
    from midi3d.data.synth import SynthConfig, generate_dataset

    generate_dataset(tmp_path / "data", 2, SynthConfig(seed=6, image_size=48, surface_points=128), jobs=1)
    spec = {**TEST_SPEC, "standin_occupancy": None}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    wider = {**spec, "vae": {**spec["vae"], "width_decoder": 24}}
    (tmp_path / "wider.yaml").write_text(yaml.safe_dump(wider))
    base = ("kind: vae\nmax_steps: 2\nbatch_size: 2\nlatent_tokens: 8\nquery_points: 64\nsurface_points: 64\n"
            "near_points: 64\nuniform_points: 32\ncache_jobs: 1\ncheckpoint_every: 1\n")
    (tmp_path / "a.yaml").write_text(base + f"model: {tmp_path / 'spec.yaml'}\n")
    (tmp_path / "b.yaml").write_text(base + f"model: {tmp_path / 'wider.yaml'}\n")

    def train(config: str):
        result = CliRunner().invoke(app, ["train", str(tmp_path / config), "--data", str(tmp_path / "data"),
                                          "--out", str(tmp_path / "run"), "-q"])
        lines = [line for line in result.output.splitlines() if line.strip()]
        return result.exit_code, " ".join(" ".join(lines).split()), len(lines)

    assert train("a.yaml")[0] == 0
    code, message, lines = train("b.yaml")
    assert code == 2 and lines == 1 and "a checkpoint of another model or settings" in message, message
    state = next((tmp_path / "run" / "checkpoints").glob("*/state/state.json"))
    for checkpoint in (tmp_path / "run" / "checkpoints").glob("*/state/state.json"):
        checkpoint.write_text("{not json")
    code, message, lines = train("a.yaml")
    assert code == 2 and lines == 1 and "damaged checkpoint" in message and state.parent.name in message, message


def test_the_ablation_variants_parse_and_differ_only_in_their_key():
    """scripts/ablation.sh: every variant's --set overrides parse on v1's and v2's configs, and
    v2's ablation config is the shipped transformer stage's recipe at a smaller budget."""
    from midi3d.training.config import config_dict, load_train_config

    script = (REPO / "scripts" / "ablation.sh").read_text()
    variants = {name: re.findall(r"--set (\S+)", flags) for name, flags in re.findall(r'\[([a-z-]+)\]="([^"]*)"', script)}
    assert set(variants) == {"mi-default", "mi-none", "mi-all", "mi-default-nomix"}
    v2 = REPO / "configs" / "train" / "embedded-v2-ablation.yaml"
    assert str(v2.relative_to(REPO)) in script
    for config in ("dit-tiny", v2):
        base = config_dict(load_train_config(config))
        for name, overrides in variants.items():
            changed = {k for k, v in config_dict(load_train_config(config, overrides)).items() if base[k] != v}
            assert changed == {o.split("=")[0] for o in overrides}, name
    shipped, ablation = config_dict(load_train_config("embedded-v2-object-dit-box")), config_dict(load_train_config(v2))
    differ = {k for k in shipped if shipped[k] != ablation[k]}
    assert differ <= {"max_steps", "decay_start", "lr", "warmup_steps"}, differ
    assert ablation["mixed_probability"] == 0.2 and ablation["box_channel_weight"] == 8.0
