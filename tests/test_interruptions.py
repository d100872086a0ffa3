"""Interruptions: ``midi3d generate`` on a folder, ``eval``, ``synth`` and ``train`` are SIGKILLed at
random points (twice each, seeded), then rerun. The rerun completes; what was finished before a kill
is neither redone nor lost; a file under its final name is always complete.

A kill is placed at a random amount of finished work (and a random moment after it), so that it
lands in the middle of the job, not during start-up.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from conftest import TEST_SPEC
from midi3d.data.layout import RENDER, SCENE, SURFACE, read_surface
from midi3d.data.synth import SynthConfig, generate_dataset
from midi3d.models.factory import PipelineSpec, build_pipeline

ROOMS = 8
KILLS = 5  # kills at random points per command, then a rerun to the end
MIDI3D = [sys.executable, "-m", "midi3d"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interrupt") / "data"
    generate_dataset(root, ROOMS, SynthConfig(seed=21, image_size=64, surface_points=1024), jobs=1)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    build_pipeline(PipelineSpec(**TEST_SPEC)).save_pretrained(folder)
    return folder


def kill_when(command: list[str], finished: Callable[[], int], target: int, rng: random.Random,
              cwd: Path, timeout: float = 240) -> None:
    """Run ``command``; once ``finished()`` reaches ``target``, wait 0-0.4 s and SIGKILL it."""
    process = subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    try:
        while finished() < target:
            if process.poll() is not None:
                pytest.fail(f"{command[3]} ended (rc {process.returncode}) before it could be interrupted: "
                            f"{process.stderr.read().decode()[-2000:]}")
            if time.time() > deadline:
                pytest.fail(f"{command[3]} made no progress to {target} in {timeout}s")
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.4))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def finish(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def identities(paths) -> dict[str, tuple[int, int]]:
    """(inode, mtime) per path: a file that is rewritten gets a new inode (atomic rename)."""
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".staging" in p.parts]


def test_generate_on_a_folder(dataset, model_dir, tmp_path):
    rng = random.Random(1)
    out = tmp_path / "out"
    command = [*MIDI3D, "generate", str(dataset / "pairs"), "-o", str(out), "--model", str(model_dir),
               "--steps", "2", "--resolution", "64", "--quiet"]
    outputs = lambda: sorted(out.glob("*.glb")) if out.is_dir() else []
    kept: dict[str, tuple[int, int]] = {}
    for target in sorted(rng.sample(range(1, ROOMS), KILLS)):
        kill_when(command, lambda: len(outputs()), target, rng, tmp_path)
        for path in outputs():  # complete: every file under its final name loads
            assert trimesh.load(path, force="scene").geometry, path
        now = identities(outputs())
        assert all(now[k] == v for k, v in kept.items())  # finished files were not redone by the rerun
        kept = now
    finish(command, tmp_path)
    final = identities(outputs())
    assert len(final) == ROOMS
    assert all(final[k] == v for k, v in kept.items())
    assert temporaries(out) == []
    straight = tmp_path / "straight"  # the same files as a run that was never killed
    finish([*command[: command.index("-o") + 1], str(straight), *command[command.index("-o") + 2:]], tmp_path)
    for path in outputs():
        assert path.read_bytes() == (straight / path.name).read_bytes(), path.name


def test_eval(dataset, model_dir, tmp_path):
    rng = random.Random(2)
    out = tmp_path / "eval"
    command = [*MIDI3D, "eval", "--dataset", "3dfront", "--root", str(dataset), "--out", str(out),
               "--model", str(model_dir), "--test-size", str(ROOMS), "--steps", "2", "--resolution", "32",
               "--points", "1000", "--icp", "none", "--quiet"]
    log = out / "results-0.jsonl"

    def records() -> list[dict]:
        lines = log.read_text().splitlines() if log.is_file() else []
        parsed = []
        for number, line in enumerate(lines):
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                assert number == len(lines) - 1, "only a last line can be torn by a kill"
        return parsed

    before: list[str] = []
    for target in sorted(rng.sample(range(1, ROOMS), KILLS)):
        kill_when(command, lambda: len(records()), target, rng, tmp_path)
        keys = [r["key"] for r in records()]
        assert keys[: len(before)] == before  # nothing lost
        assert len(keys) == len(set(keys))  # nothing scored twice
        before = keys
    finish(command, tmp_path)
    keys = [r["key"] for r in records()]
    assert len(keys) == len(set(keys)) == ROOMS and keys[: len(before)] == before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] + summary["failed"] == ROOMS
    assert temporaries(out) == []
    straight = tmp_path / "straight"  # the same numbers as a run that was never killed
    finish([*command[: command.index("--out") + 1], str(straight), *command[command.index("--out") + 2:]], tmp_path)
    other = json.loads((straight / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k != "seconds_per_scene"} == \
        {k: v for k, v in other.items() if k != "seconds_per_scene"}


def test_synth(tmp_path):
    rng = random.Random(3)
    root = tmp_path / "data"
    rooms = 10
    command = [*MIDI3D, "synth", "--out", str(root), "--scenes", str(rooms), "--seed", "5", "--image-size", "64",
               "--surface-points", "512", "--jobs", "1", "--quiet"]
    house = root / RENDER / "synth-5"
    finished = lambda: sorted(house.iterdir()) if house.is_dir() else []

    def check_complete(room: Path) -> None:
        Image.open(room / "render_0000.webp").load()
        Image.open(room / "semantic_0000.png").load()
        json.loads((room / "camera_0000.json").read_text())
        for obj in (root / SCENE / "synth-5" / room.name).glob("*.glb"):
            assert len(trimesh.load(obj, force="mesh").faces) > 0
            read_surface(root / SURFACE / "synth-5" / room.name / f"{obj.stem}.npy")
        for suffix in ("rgb", "seg"):
            Image.open(root / "pairs" / f"synth-5__{room.name}_{suffix}.png").load()

    kept: dict[str, tuple[int, int]] = {}
    for target in sorted(rng.sample(range(1, rooms), KILLS)):
        kill_when(command, lambda: len(finished()), target, rng, tmp_path)
        for room in finished():
            check_complete(room)
        now = identities(finished())
        assert all(now[k] == v for k, v in kept.items())
        kept = now
    finish(command, tmp_path)
    final = identities(finished())
    assert len(final) == rooms and all(final[k] == v for k, v in kept.items())
    for room in finished():
        check_complete(room)
    assert len(json.loads((root / "midi_room_ids.json").read_text())) == rooms
    assert temporaries(root) == []
    # the index files (which object each instance id names) are those of an uninterrupted run
    straight = tmp_path / "straight"
    finish([*command[:command.index("--out") + 1], str(straight), *command[command.index("--out") + 2:]], tmp_path)
    for name in ("midi_room_ids.json", "midi_furniture_ids.json", "valid_furniture_ids.json", "synth_config.json"):
        assert (root / name).read_bytes() == (straight / name).read_bytes(), name


def test_synth_resume_keeps_creation_order_and_refuses_other_settings(tmp_path):
    from midi3d.data.synth import SynthConfig, generate_dataset
    from midi3d.io.errors import InputError

    config = SynthConfig(seed=8, image_size=48, surface_points=64)
    generate_dataset(tmp_path / "grown", 2, config)
    generate_dataset(tmp_path / "grown", 3, config)  # --scenes 2, then --scenes 3
    generate_dataset(tmp_path / "straight", 3, config)
    for name in ("midi_furniture_ids.json", "midi_room_ids.json"):
        assert (tmp_path / "grown" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
    furniture = json.loads((tmp_path / "grown" / "midi_furniture_ids.json").read_text())
    assert any(names != sorted(names) for names in furniture)  # creation order is not alphabetical order
    with pytest.raises(InputError, match="image_size 48 → 32.*--overwrite"):
        generate_dataset(tmp_path / "grown", 3, SynthConfig(seed=8, image_size=32, surface_points=64))
    with pytest.raises(InputError, match="surface_points 64 → 65"):
        generate_dataset(tmp_path / "grown", 3, SynthConfig(seed=8, image_size=48, surface_points=65))
    generate_dataset(tmp_path / "grown", 2, SynthConfig(seed=8, image_size=32, surface_points=64), overwrite=True)
    assert json.loads((tmp_path / "grown" / "synth_config.json").read_text())["image_size"] == 32
    assert len(list((tmp_path / "grown" / RENDER / "synth-8").iterdir())) == 2  # started again


def test_two_synth_runs_on_one_folder_are_refused(tmp_path):
    from midi3d.data.synth import SynthConfig, generate_dataset
    from midi3d.io.errors import InputError
    from midi3d.io.locks import folder_lock

    with folder_lock(tmp_path / "d", "midi3d synth"):
        with pytest.raises(InputError, match="another midi3d synth is writing here"):
            generate_dataset(tmp_path / "d", 1, SynthConfig(seed=1, image_size=32, surface_points=16))


def test_train(dataset, tmp_path):
    import yaml

    rng = random.Random(4)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**TEST_SPEC, "standin_occupancy": None, "mi_layers": None}))
    out, steps = tmp_path / "run", 14
    settings = {"model": spec, "max_steps": steps, "batch_size": 4, "latent_tokens": 8, "query_points": 128,
                "cache_jobs": 1, "checkpoint_every": 2, "log_every": 1, "surface_points": 256,
                "near_points": 256, "uniform_points": 128}
    command = [*MIDI3D, "train", "vae-tiny", "--data", str(dataset), "--out", str(out), "--cache-dir",
               str(tmp_path / "cache"), "-q", *[f"--set={k}={v}" for k, v in settings.items()]]

    def latest() -> int:
        try:
            return json.loads((out / "latest.json").read_text())["step"]
        except (OSError, ValueError):
            return 0

    for target in sorted(rng.sample(range(2, steps - 2, 2), KILLS)):
        kill_when(command, latest, target, rng, tmp_path)
        step = latest()
        assert step >= target
        checkpoint = out / "checkpoints" / f"step-{step:07d}"
        assert json.loads((checkpoint / "state" / "state.json").read_text())["step"] == step
        assert (checkpoint / "pipeline" / "model_index.json").is_file()
    finish(command, tmp_path)
    logged = [int(line.split(",")[0]) for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert logged == list(range(1, steps + 1))  # every step once: none lost, none redone
    assert latest() == steps and (out / "final" / "pipeline" / "model_index.json").is_file()
    assert temporaries(out) == []
    assert np.isfinite(float((out / "metrics.csv").read_text().splitlines()[-1].split(",")[1]))
    straight = tmp_path / "straight"  # the same losses, bit for bit, as a run that was never killed
    finish([*command[: command.index("--out") + 1], str(straight), *command[command.index("--out") + 2:]], tmp_path)

    def losses(run: Path) -> list[str]:
        return [",".join(line.split(",")[:2]) for line in (run / "metrics.csv").read_text().splitlines()]

    assert losses(out) == losses(straight)
