"""Segmentation back ends (labelmap, classic) and the `midi3d segment` command."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image
from typer.testing import CliRunner

from conftest import BUNDLED, TEST_SPEC
from midi3d.cli import app
from midi3d.io.errors import InputError
from midi3d.io.images import load_rgb
from midi3d.io.labelmap import read_label_map
from midi3d.segmentation import ClassicSegmenter, LabelMapSegmenter, save_label_map


def test_classic_finds_the_bundled_objects():
    rgb = load_rgb(BUNDLED / "blocks-5_rgb.png")
    truth = read_label_map(BUNDLED / "blocks-5_seg.png")
    found = ClassicSegmenter().segment(rgb)
    assert found.max() == 5
    matched = set()
    for instance in range(1, 6):
        mask = found == instance
        best = np.bincount(truth[mask]).argmax()
        iou = (mask & (truth == best)).sum() / (mask | (truth == best)).sum()
        assert best != 0 and iou > 0.95
        matched.add(int(best))
    assert matched == {1, 2, 3, 4, 5}


def test_classic_on_a_plain_image_finds_nothing():
    assert ClassicSegmenter().segment(np.full((64, 64, 3), 200, np.uint8)).max() == 0


def test_label_map_writer_round_trips(tmp_path):
    labels = np.zeros((20, 30), np.int64)
    labels[2:6, 3:9], labels[10:15, 4:20] = 1, 2
    path = save_label_map(labels, tmp_path / "seg.png")
    np.testing.assert_array_equal(read_label_map(path), labels)


def test_labelmap_backend_checks_the_size(tmp_path):
    Image.fromarray(np.ones((10, 12), np.uint8)).save(tmp_path / "l.png")
    with pytest.raises(InputError, match=r"l\.png: label map is 12x10 but the image is 30x20"):
        LabelMapSegmenter(tmp_path / "l.png").segment(np.zeros((20, 30, 3), np.uint8))


def test_segment_command(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["segment", str(BUNDLED / "blocks-5_rgb.png"), "-o", str(tmp_path / "seg.png")])
    assert result.exit_code == 0, result.output
    assert read_label_map(tmp_path / "seg.png").max() == 5
    assert (tmp_path / "seg_overlay.png").is_file()
    Image.fromarray(np.full((32, 32, 3), 255, np.uint8)).save(tmp_path / "blank.png")
    result = runner.invoke(app, ["segment", str(tmp_path / "blank.png"), "-o", str(tmp_path / "none.png")])
    assert result.exit_code == 2 and "no instance found" in result.output
    assert not (tmp_path / "none.png").exists()


def test_generate_without_seg_segments_first(tmp_path):
    from midi3d.models.factory import PipelineSpec, build_pipeline

    model = tmp_path / "model"
    build_pipeline(PipelineSpec(**TEST_SPEC)).save_pretrained(model)
    out = tmp_path / "scene.glb"
    result = CliRunner().invoke(app, ["generate", str(BUNDLED / "blocks-5_rgb.png"), "-o", str(out), "--model",
                                      str(model), "--steps", "2", "--resolution", "32", "--quiet"])
    assert result.exit_code == 0, result.output
    scene = trimesh.load(out)
    assert scene.metadata["midi3d_instance_ids"] == [1, 2, 3, 4, 5]  # the five objects the classic back end found
    assert len(scene.graph.nodes_geometry) + len(scene.metadata["midi3d_empty_instance_ids"]) == 5
