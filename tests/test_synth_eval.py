"""Synthetic generator, dataset readers and the benchmark runner."""

from __future__ import annotations

import hashlib
import json
import shutil
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from typer.testing import CliRunner

from midi3d.cli import app
from midi3d.data.datasets import ThreeDFrontDataset
from midi3d.data.layout import read_surface
from midi3d.data.synth import SynthConfig, generate_dataset
from midi3d.eval.runner import EvalOptions, ResultLog, load_prediction, run, summarise

SMALL = SynthConfig(seed=3, image_size=128, surface_points=2048)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(root, 4, SMALL, jobs=2)
    return root


def test_generator_is_deterministic_and_readable(dataset_root, tmp_path):
    again = tmp_path / "again"
    generate_dataset(again, 4, SMALL, jobs=1)
    assert tree_digest(again) == tree_digest(dataset_root)
    data = ThreeDFrontDataset(dataset_root, object_filter=None, points=1024)
    assert len(data) == 4
    for index in range(len(data)):
        scene = data.load(index)
        assert scene.rgb.shape == (512, 512, 3) and scene.labels.shape == (512, 512)
        assert 0 < len(scene.ids) <= 7
        assert all(p.shape == (1024, 3) for p in scene.gt_points)


def test_view_frame_puts_the_first_camera_on_plus_z(dataset_root):
    rooms = json.loads((dataset_root / "midi_room_ids.json").read_text())
    for room in rooms:
        camera = json.loads((dataset_root / "3D-FRONT-RENDER" / room / "camera_0000.json").read_text())
        offset = np.subtract(camera["eye"], camera["centre"])
        assert abs(offset[0]) < 1e-6 and offset[2] > 0 and offset[1] > 0, (room, offset)


def test_objects_do_not_interpenetrate(tmp_path):
    # In the layout ("world") frame every object is axis-aligned, so box overlap is the exact test.
    dataset_root = tmp_path / "world"
    generate_dataset(dataset_root, 4, SynthConfig(seed=3, image_size=64, surface_points=64, frame="world"))
    rooms = json.loads((dataset_root / "midi_room_ids.json").read_text())
    furniture = json.loads((dataset_root / "midi_furniture_ids.json").read_text())
    for room, names in zip(rooms, furniture):
        assert 2 <= len(names) <= 10
        boxes = [trimesh.load(dataset_root / "3D-FRONT-SCENE" / room / f"{n}.glb", force="mesh").bounds for n in names]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                overlap = np.minimum(boxes[i][1], boxes[j][1]) - np.maximum(boxes[i][0], boxes[j][0])
                assert not np.all(overlap > 1e-4), (room, names[i], names[j])
        assert np.abs(np.concatenate(boxes)).max() <= 0.95 + 1e-5


def test_render_orientation_matches_a_pinhole_projection():
    from midi3d.data.synth import Camera, SceneObject, render

    right = trimesh.creation.icosphere(radius=0.1)
    right.apply_translation([0.5, 0, 0])
    up = trimesh.creation.icosphere(radius=0.1)
    up.apply_translation([0, 0.5, 0])
    objects = [SceneObject("r", "x", right, (1, 0, 0)), SceneObject("u", "x", up, (0, 1, 0))]
    _, ids = render(objects, Camera(np.array([0, 0, 3.0]), np.zeros(3), 60.0), 64)
    focal = 32 / np.tan(np.radians(30))
    rows, cols = np.nonzero(ids == 1)
    assert abs(cols.mean() - (31.5 + focal * 0.5 / 3)) < 1.0 and abs(rows.mean() - 31.5) < 1.0
    rows, cols = np.nonzero(ids == 2)
    assert abs(rows.mean() - (31.5 - focal * 0.5 / 3)) < 1.0 and abs(cols.mean() - 31.5) < 1.0


def test_surface_reader_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.npy"
    np.save(path, np.array({"surface_points": Evil()}, dtype=object), allow_pickle=True)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        read_surface(path)
    plain = tmp_path / "plain.npy"
    np.save(plain, np.ones((5, 6), np.float32))
    assert read_surface(plain)["surface_points"].shape == (5, 3)


def test_ground_truth_scored_against_itself(dataset_root, tmp_path):
    runner = CliRunner()
    gt = tmp_path / "gt"
    result = runner.invoke(app, ["eval", "--root", str(dataset_root), "--export-gt", str(gt), "--quiet"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "res"
    result = runner.invoke(app, ["eval", "--root", str(dataset_root), "--pred-dir", str(gt), "--out", str(out),
                                 "--icp", "kabsch", "--points", "4096", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == 4 and summary["failed"] == 0 and summary["icp"] == "kabsch"
    # Boxes come from two independent samplings of the same surface (4096 vs 2048 points); on
    # objects turned into the view frame the sparse corners cost ~1% of IoU.
    assert summary["scene_fscore"] >= 0.999 and summary["iou_bbox"] >= 0.97
    assert summary["scene_cd"] < 1e-3  # surface-sampling noise only
    assert "ICP: kabsch" in (out / "summary.md").read_text()


def test_shifted_objects_give_the_expected_iou(dataset_root, tmp_path):
    data = ThreeDFrontDataset(dataset_root, points=4096)
    scene = data.load(0)
    offset = np.array([0.02, 0.0, 0.0])
    predicted = {}
    for instance, path in zip(scene.ids, scene.gt_meshes):
        mesh = trimesh.load(path, force="mesh")
        mesh.apply_translation(offset)
        predicted[instance] = mesh
    from midi3d.eval.runner import score

    metrics = score(scene, predicted, EvalOptions(icp="kabsch", points=20000))
    expected = []
    for points in scene.gt_points:
        size = points.max(0) - points.min(0)
        overlap = np.prod(size - np.abs(offset))
        expected.append(overlap / (2 * np.prod(size) - overlap))
    assert metrics["iou_bbox"] == pytest.approx(np.mean(expected), abs=0.01)


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_without_duplicates(dataset_root, tmp_path):
    data = ThreeDFrontDataset(dataset_root, points=2048)
    gt_dir = tmp_path / "gt"
    from midi3d.eval.runner import export_ground_truth

    for index in range(len(data)):
        export_ground_truth(data.load(index), gt_dir)
    options = EvalOptions(icp="kabsch", points=2048)

    def predictor(scene):
        return load_prediction(gt_dir / f"{scene.key}.glb")

    calls = []

    def flaky(scene):
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill after two finished scenes
        calls.append(scene.key)
        return predictor(scene)

    with pytest.raises(KeyboardInterrupt):
        run(data, flaky, tmp_path / "resumed", options)
    run(data, predictor, tmp_path / "resumed", options)
    run(data, predictor, tmp_path / "straight", options)
    lines = (tmp_path / "resumed" / "results-0.jsonl").read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines]
    assert sorted(keys) == sorted(set(keys)) == sorted(data.keys())

    def metrics(folder):
        summary = summarise(ResultLog(folder).records(), data.keys(), "kabsch")
        return {k: v for k, v in summary.items() if k != "seconds_per_scene"}

    assert metrics(tmp_path / "resumed") == metrics(tmp_path / "straight")


def test_broken_scene_is_recorded_and_the_run_goes_on(dataset_root, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(dataset_root, broken)
    room = json.loads((broken / "midi_room_ids.json").read_text())[1]
    name = json.loads((broken / "midi_furniture_ids.json").read_text())[1][0]
    (broken / "3D-FRONT-SURFACE" / room / f"{name}.npy").write_bytes(b"garbage")
    (broken / "3D-FRONT-RENDER" / json.loads((broken / "midi_room_ids.json").read_text())[2] /
     "render_0000.webp").unlink()
    data = ThreeDFrontDataset(broken, points=1024)
    gt = {}

    def predictor(scene):
        return {i: trimesh.load(p, force="mesh") for i, p in zip(scene.ids, scene.gt_meshes)}

    run(data, predictor, tmp_path / "out", EvalOptions(icp="none", points=1024))
    records = ResultLog(tmp_path / "out").records()
    summary = summarise(records, data.keys(), "none")
    assert summary["scored"] == 2 and summary["failed"] == 2
    errors = " ".join(summary["failures"].values())
    assert f"{name}.npy" in errors and "render_0000.webp" in errors
    del gt


def test_instances_meshed_by_the_fallback_are_scored_and_counted(dataset_root, tmp_path):
    from midi3d.eval.runner import write_summary

    data = ThreeDFrontDataset(dataset_root, points=1024)

    def predictor(scene):
        meshes = {i: trimesh.load(p, force="mesh") for i, p in zip(scene.ids, scene.gt_meshes)}
        meshes[scene.ids[-1]].metadata["midi3d_fallback_level"] = 0.1  # as the pipeline marks them
        return meshes

    run(data, predictor, tmp_path / "out", EvalOptions(icp="none", points=1024))
    records = ResultLog(tmp_path / "out").records()
    assert all(r["status"] == "ok" and len(r["dilated"]) == 1 for r in records.values())
    summary = summarise(records, data.keys(), "none")
    assert summary["failed"] == 0 and summary["dilated_instances"] == len(data.keys())
    write_summary(tmp_path / "out", summary)
    assert f"{len(data.keys())} instance(s) meshed at a fallback iso-level" in (tmp_path / "out" / "summary.md").read_text()


@pytest.mark.slow
def test_two_processes_give_the_same_summary(dataset_root, tmp_path):
    runner = CliRunner()
    gt = tmp_path / "gt"
    assert runner.invoke(app, ["eval", "--root", str(dataset_root), "--export-gt", str(gt), "-q"]).exit_code == 0
    common = ["--root", str(dataset_root), "--pred-dir", str(gt), "--icp", "kabsch", "--points", "2048", "-q"]
    assert runner.invoke(app, ["eval", *common, "--out", str(tmp_path / "one")]).exit_code == 0
    launcher = Path(sys.executable).with_name("accelerate")
    # accelerate >= 1.0 runs `--cpu` jobs in a single process unless mpirun is set up; on a machine
    # without GPUs, `--multi_gpu` starts real CPU processes (gloo), which is what this test needs.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    subprocess.run([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "midi3d.eval", *common,
                    "--out", str(tmp_path / "two")], check=True, capture_output=True, timeout=600, env=env,
                   cwd=tmp_path)  # not the repository root: the installed package must be the one imported
    assert (tmp_path / "two" / "results-1.jsonl").is_file()  # the second process did its share

    def metrics(folder):
        summary = json.loads((folder / "summary.json").read_text())
        return {k: v for k, v in summary.items() if k != "seconds_per_scene"}

    assert metrics(tmp_path / "two") == metrics(tmp_path / "one")


def test_synth_cli(tmp_path):
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "d"), "--scenes", "2", "--image-size", "64",
                                      "--jobs", "1", "-q"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "d" / "pairs").glob("*_rgb.png"))) == 2


@pytest.mark.slow
def test_killed_eval_process_resumes(dataset_root, tmp_path):
    import signal
    import time

    runner = CliRunner()
    gt = tmp_path / "gt"
    assert runner.invoke(app, ["eval", "--root", str(dataset_root), "--export-gt", str(gt), "-q"]).exit_code == 0
    common = ["eval", "--root", str(dataset_root), "--pred-dir", str(gt), "--icp", "kabsch", "--points", "4096",
              "-q"]
    killed = tmp_path / "killed"
    import torch

    # the same thread count as this process (float sums in another order differ in the last bits)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen([sys.executable, "-m", "midi3d", *common, "--out", str(killed)], cwd=tmp_path, env=env)
    log = killed / "results-0.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and log.read_text().count("\n") >= 1):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before = log.read_text().count("\n")
    assert 0 < finished_before < 4, "the kill should land mid-run"
    assert runner.invoke(app, [*common, "--out", str(killed)]).exit_code == 0
    assert runner.invoke(app, [*common, "--out", str(tmp_path / "straight")]).exit_code == 0
    keys = [json.loads(line)["key"] for line in log.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 4

    def metrics(folder):
        summary = json.loads((folder / "summary.json").read_text())
        return {k: v for k, v in summary.items() if k != "seconds_per_scene"}

    assert metrics(killed) == metrics(tmp_path / "straight")


def test_visuals_figure(dataset_root, tmp_path):
    from PIL import Image

    from midi3d.eval.visuals import PANEL, save_scene_figure

    scene = ThreeDFrontDataset(dataset_root, points=512).load(0)
    predicted = {i: trimesh.load(p, force="mesh") for i, p in zip(scene.ids, scene.gt_meshes)}
    path = save_scene_figure(scene, predicted, None, tmp_path / "fig.png")
    figure = np.asarray(Image.open(path).convert("RGB"))
    assert figure.shape == (PANEL + 36, 4 * PANEL, 3)
    prediction_panel, truth_panel = figure[18:-18, 2 * PANEL : 3 * PANEL], figure[18:-18, 3 * PANEL :]
    assert (prediction_panel < 250).any()  # something was rendered
    np.testing.assert_array_equal(prediction_panel, truth_panel)  # same meshes, same view, same picture


def test_blendswap_layout(dataset_root, tmp_path):
    import shutil

    from midi3d.data.datasets import BlendSwapDataset

    rooms = json.loads((dataset_root / "midi_room_ids.json").read_text())
    furniture = json.loads((dataset_root / "midi_furniture_ids.json").read_text())
    root = tmp_path / "blendswap"
    for room, names in list(zip(rooms, furniture))[:2]:
        folder = root / room.replace("/", "__")
        (folder / "meshes").mkdir(parents=True)
        render = dataset_root / "3D-FRONT-RENDER" / room
        from PIL import Image

        Image.open(render / "render_0000.webp").save(folder / "image.png")
        shutil.copy(render / "semantic_0000.png", folder / "labels.png")
        for k, name in enumerate(names):
            shutil.copy(dataset_root / "3D-FRONT-SCENE" / room / f"{name}.glb", folder / "meshes" / f"{k + 1}.glb")
    data = BlendSwapDataset(root, points=1024)
    assert len(data) == 2
    scene = data.load(0)
    assert scene.ids and all(p.shape == (1024, 3) for p in scene.gt_points)
    out = tmp_path / "res"
    gt = tmp_path / "gt"
    runner = CliRunner()
    assert runner.invoke(app, ["eval", "--dataset", "blendswap", "--root", str(root), "--export-gt", str(gt),
                               "-q"]).exit_code == 0
    result = runner.invoke(app, ["eval", "--dataset", "blendswap", "--root", str(root), "--pred-dir", str(gt),
                                 "--icp", "kabsch", "--points", "2048", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == 2 and summary["scene_fscore"] > 0.999


def test_eval_results_are_never_relabelled(dataset_root, tmp_path):
    """A rerun into the same --out with other options, predictions or data is refused (naming
    what differs) instead of reporting the old numbers under the new label; --overwrite scores again."""
    runner = CliRunner()
    gt = tmp_path / "gt"
    assert runner.invoke(app, ["eval", "--root", str(dataset_root), "--export-gt", str(gt), "-q"]).exit_code == 0
    out = tmp_path / "out"
    common = ["eval", "--root", str(dataset_root), "--pred-dir", str(gt), "--points", "1024", "--out", str(out), "-q"]
    assert runner.invoke(app, [*common, "--icp", "none"]).exit_code == 0
    first = json.loads((out / "summary.json").read_text())
    assert runner.invoke(app, [*common, "--icp", "none"]).exit_code == 0  # the same run: continued
    refused = runner.invoke(app, [*common, "--icp", "kabsch"])
    assert refused.exit_code == 2 and "icp 'none' → 'kabsch'" in refused.output and "--overwrite" in refused.output
    assert json.loads((out / "summary.json").read_text()) == first  # nothing was touched
    other = tmp_path / "other-predictions"
    shutil.copytree(gt, other)
    moved = runner.invoke(app, [*common[:3], "--pred-dir", str(other), *common[5:], "--icp", "none"])
    assert moved.exit_code == 2 and "pred_dir" in moved.output
    points = runner.invoke(app, [*common[:5], "--points", "512", *common[7:], "--icp", "none"])
    assert points.exit_code == 2 and "points 1024 → 512" in points.output
    again = runner.invoke(app, [*common, "--icp", "kabsch", "--overwrite"])
    assert again.exit_code == 0, again.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["icp"] == "kabsch" and summary["scored"] == first["scored"]
    records = [json.loads(line) for line in (out / "results-0.jsonl").read_text().splitlines()]
    assert {r["icp"] for r in records} == {"kabsch"}  # no record of the earlier run is left
    (out / "eval_run.json").unlink()  # results whose origin is unknown are refused too
    unknown = runner.invoke(app, [*common, "--icp", "kabsch"])
    assert unknown.exit_code == 2 and "without a record" in unknown.output


def test_two_evals_on_one_folder_are_refused(dataset_root, tmp_path):
    from midi3d.io.locks import folder_lock

    out = tmp_path / "out"
    with folder_lock(out, "midi3d eval"):
        result = CliRunner().invoke(app, ["eval", "--root", str(dataset_root), "--pred-dir", str(tmp_path),
                                          "--out", str(out), "-q"])
    assert result.exit_code == 2 and "another midi3d eval is writing here" in result.output


def test_reprojection_score_of_the_ground_truth(dataset_root, tmp_path):
    """The ground truth lines up with its own masks: the reprojection score at the estimated camera
    is high (masks upscaled from 128 px here cost some) with 3D metrics (``--reprojection``) and without them (``--dataset pairs``)."""
    import shutil

    runner = CliRunner()
    gt = tmp_path / "gt"
    export = ["eval", "--root", str(dataset_root), "--export-gt", str(gt), "--max-objects", "0", "--quiet"]
    assert runner.invoke(app, export).exit_code == 0
    out = tmp_path / "res"
    result = runner.invoke(app, ["eval", "--root", str(dataset_root), "--pred-dir", str(gt), "--out", str(out),
                                 "--icp", "none", "--points", "2048", "--reprojection", "--limit", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reprojection_scored"] == 2 and summary["reprojection_iou"] > 0.75
    assert summary["scene_fscore"] > 0.99  # the 3D metrics are still there
    records = ResultLog(out).records()
    record = next(iter(records.values()))
    assert len(record["reprojection_ious"]) == record["objects"]  # one per kept instance
    assert record["camera"]["image_size"] == [512, 512]
    assert len(list((out / "reprojection").glob("*.png"))) == 2
    # photos without 3D ground truth: NAME_rgb.png + NAME_seg.png, predictions NAME.glb
    pairs, predictions = tmp_path / "pairs", tmp_path / "pred"
    pairs.mkdir()
    predictions.mkdir()
    for path in sorted((dataset_root / "pairs").glob("*_rgb.png"))[:2]:
        name = path.name[: -len("_rgb.png")]
        shutil.copy(path, pairs)
        shutil.copy(path.with_name(f"{name}_seg.png"), pairs)
        shutil.copy(gt / f"{name}__0000.glb", predictions / f"{name}.glb")
    out = tmp_path / "pairs-res"
    result = runner.invoke(app, ["eval", "--dataset", "pairs", "--root", str(pairs), "--pred-dir", str(predictions),
                                 "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == 2 and summary["reprojection_iou"] > 0.75
    assert "Reproj-IoU" in (out / "summary.md").read_text() and "CD-S" not in (out / "summary.md").read_text()
