"""The SAM back end on a tiny, randomly initialised SAM (segment-anything's own classes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import BUNDLED
from midi3d.cli import app
from midi3d.models.checkpoint import CheckpointError
from midi3d.segmentation.sam import SamSegmenter, build_sam, load_sam, sam_architecture

TINY = {"type": "custom", "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 16, "img_size": 64,
        "global_attn_indexes": [1], "window_size": 2, "mlp_ratio": 4.0, "out_chans": 32, "mask_in_chans": 4,
        "decoder_depth": 2, "decoder_mlp_dim": 64, "iou_head_depth": 3, "iou_head_hidden_dim": 32,
        "multimask_outputs": 3}


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sam = build_sam(TINY)
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.safetensors"
    save_file({k: v.contiguous() for k, v in sam.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    from midi3d.io.images import load_rgb

    return load_rgb(BUNDLED / "blocks-5_rgb.png")


def test_architecture_is_read_from_shapes(tiny_sam):
    _, arch = load_sam(tiny_sam)
    assert arch == TINY
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        vit_b = sam_model_registry["vit_b"]()
    arch = sam_architecture(vit_b.state_dict(), Path("renamed.safetensors"))
    assert arch["type"] == "vit_b" and arch["num_heads"] == 12 and arch["global_attn_indexes"] == [2, 5, 8, 11]
    assert arch["img_size"] == 1024 and arch["window_size"] == 14


def test_automatic_mode_returns_an_image_sized_map(tiny_sam, image):
    labels = SamSegmenter(tiny_sam, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                          max_instances=4).segment(image)
    assert labels.shape == image.shape[:2]
    assert labels.max() <= 4
    ids = [i for i in np.unique(labels) if i]
    assert ids == list(range(1, len(ids) + 1))


def test_prompts_give_one_instance_each(tiny_sam, image):
    labels = SamSegmenter(tiny_sam, points=[(70, 160), (170, 140)], boxes=[(205, 145, 250, 235)]).segment(image)
    assert labels.shape == image.shape[:2]
    assert sorted(int(i) for i in np.unique(labels) if i) == [1, 2, 3]
    assert (labels == 3).sum() <= (250 - 205 + 1) * (235 - 145 + 1)  # a box prompt stays in its box


def test_missing_and_corrupt_checkpoints(tmp_path, monkeypatch, tiny_sam):
    monkeypatch.delenv("MIDI3D_SAM_CHECKPOINT", raising=False)
    with pytest.raises(CheckpointError, match="no SAM checkpoint configured: download"):
        load_sam(None)
    with pytest.raises(CheckpointError, match=r"nothere\.pth: SAM checkpoint not found"):
        load_sam(tmp_path / "nothere.pth")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match=r"corrupt\.safetensors: unreadable SAM checkpoint"):
        load_sam(corrupt)
    pickled = tmp_path / "sam.pth"
    from safetensors.torch import load_file

    torch.save(load_file(str(tiny_sam)), pickled)
    with pytest.raises(CheckpointError, match=r"sam\.pth: pickled checkpoints are refused"):
        load_sam(pickled)
    monkeypatch.setenv("MIDI3D_SAM_CHECKPOINT", str(pickled))
    assert load_sam(None, allow_pickle=True)[1] == TINY


def test_segment_command_with_sam(tiny_sam, tmp_path):
    from midi3d.io.labelmap import read_label_map

    out = tmp_path / "seg.png"
    result = CliRunner().invoke(app, ["segment", str(BUNDLED / "blocks-5_rgb.png"), "-o", str(out), "--backend",
                                      "sam", "--sam-checkpoint", str(tiny_sam), "--points", "70,160 170,140",
                                      "--boxes", "205,145,250,235"])
    assert result.exit_code == 0, result.output
    assert read_label_map(out).max() == 3
    result = CliRunner().invoke(app, ["segment", str(BUNDLED / "blocks-5_rgb.png"), "-o", str(out), "--backend",
                                      "sam", "--sam-checkpoint", str(tmp_path / "missing.pth")])
    assert result.exit_code == 2 and "SAM checkpoint not found" in result.output


def test_generate_without_seg_uses_configured_sam(tiny_sam, tmp_path, monkeypatch):
    from midi3d.models.factory import PipelineSpec, build_pipeline

    from conftest import TEST_SPEC

    model = tmp_path / "model"
    build_pipeline(PipelineSpec(**TEST_SPEC)).save_pretrained(model)
    monkeypatch.setenv("MIDI3D_SAM_CHECKPOINT", str(tiny_sam))
    out = tmp_path / "scene.glb"
    result = CliRunner().invoke(app, ["generate", str(BUNDLED / "blocks-5_rgb.png"), "-o", str(out), "--model",
                                      str(model), "--steps", "1", "--resolution", "32"])
    # With the default thresholds the random tiny SAM keeps no proposal: the SAM path must have
    # been taken (not the classic one, which finds 5 objects here) and fail with a clear message.
    assert result.exit_code == 2, result.output
    assert "automatic SAM segmentation found no object" in result.output
    assert not out.exists()


def test_a_layout_label_map_from_sam_box_prompts(tiny_sam, image):
    """The layout path's masks for the 3D stage: SAM prompted with the layout's boxes, one
    instance per box in layout order (otherwise the layout's own boxes, and it says so)."""
    from midi3d.compose import layout_from_data
    from midi3d.compose.flux import layout_label_map

    height, width = image.shape[:2]
    layout = layout_from_data({"size": [width, height], "prompt": "blocks", "instances": [
        {"box": [205, 145, 250, 235], "description": "a block"}, {"box": [40, 120, 110, 200], "description": "a cube"}]})
    labels, source = layout_label_map(image, layout, tiny_sam)
    assert source == "sam (box prompts)" and labels.shape == (height, width)
    assert set(int(i) for i in np.unique(labels) if i) <= {1, 2} and (labels > 0).any()
    assert not (labels == 1)[:, :200].any()  # box 1's instance stays in box 1
    fallback, source = layout_label_map(image, layout, None)
    assert source == "layout boxes" and set(np.unique(fallback)) == {0, 1, 2}
