"""Layout tokens: InstanceAssemble's box encoding (official arrays), zero initialisation leaves
outputs unchanged, the flag travels with the folder, and the training paths train them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import SHARED
from midi3d.models.layout_tokens import dense_box_points, fourier_features, mask_boxes

INSTANCEASSEMBLE = SHARED / "fixtures" / "instanceassemble-tiny"


@pytest.mark.skipif(not INSTANCEASSEMBLE.is_dir(), reason="../shared/fixtures/instanceassemble-tiny is not present")
def test_box_sampling_and_fourier_features_match_instanceassemble():
    with np.load(INSTANCEASSEMBLE / "arrays.npz") as data:
        points, fourier = data["layout_boxes"][0], data["layout_fourier_xyxy"][0]
    boxes = torch.from_numpy(np.stack([points[:, 0], points[:, 1], points[:, -2], points[:, -1]], 1))
    np.testing.assert_allclose(dense_box_points(boxes).numpy(), points, atol=1e-7)
    np.testing.assert_allclose(fourier_features(torch.from_numpy(points)).numpy(), fourier, atol=1e-6)


def test_mask_boxes():
    masks = torch.zeros(2, 1, 10, 20)
    masks[0, 0, 2:5, 4:10] = 1
    boxes = mask_boxes(masks)
    np.testing.assert_allclose(boxes[0].numpy(), [4 / 20, 2 / 10, 10 / 20, 5 / 10, 18 / 200], rtol=1e-6)
    assert torch.equal(boxes[1], torch.zeros(5))  # an empty mask


def _scene(rng):
    images = [rng.integers(0, 255, (28, 28, 3), dtype=np.uint8) for _ in range(3)]
    masks = []
    for i in range(3):
        mask = np.zeros((28, 28), np.uint8)
        mask[4 * i: 10 + 4 * i, 3 * i: 12 + 3 * i] = 255
        masks.append(mask)
    return images, masks, images


def test_zero_initialised_layout_tokens_leave_outputs_unchanged_and_round_trip(tiny_pipe, tmp_path):
    from midi3d.pipelines import MIDIPipeline

    scene = _scene(np.random.default_rng(0))
    kwargs = dict(num_inference_steps=3, guidance_scale=2.0, output_type="latent", seed=1)
    before = tiny_pipe(*scene, **kwargs).latents
    tiny_pipe.save_pretrained(tmp_path / "plain")
    tiny_pipe.transformer.enable_layout_tokens()
    assert torch.equal(tiny_pipe(*scene, **kwargs).latents, before)
    torch.nn.init.normal_(tiny_pipe.transformer.layout_encoder.net[-1].weight, std=0.5)  # as if trained
    trained = tiny_pipe(*scene, **kwargs).latents
    assert (trained - before).abs().max() > 1e-3
    tiny_pipe.save_pretrained(tmp_path / "layout")
    config = json.loads((tmp_path / "layout" / "transformer" / "config.json").read_text())
    assert config["_midi3d_layout_tokens"] is True
    assert "_midi3d_layout_tokens" not in json.loads((tmp_path / "plain" / "transformer" / "config.json").read_text())
    loaded = MIDIPipeline.from_pretrained(tmp_path / "layout")
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(loaded(*scene, **kwargs).latents, trained)
    plain = MIDIPipeline.from_pretrained(tmp_path / "plain")  # off: the official layout, loaded strictly
    plain.set_progress_bar_config(disable=True)
    assert not plain.transformer.has_layout_tokens
    assert torch.equal(plain(*scene, **kwargs).latents, before)


def test_a_folder_claiming_layout_tokens_without_their_weights_is_refused(tiny_pipe, tmp_path):
    from midi3d.models.checkpoint import CheckpointError
    from midi3d.pipelines import MIDIPipeline

    tiny_pipe.save_pretrained(tmp_path / "model")
    path = tmp_path / "model" / "transformer" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "_midi3d_layout_tokens": True}))
    with pytest.raises(CheckpointError, match="layout_encoder"):
        MIDIPipeline.from_pretrained(tmp_path / "model")


def test_transformer_refuses_a_missing_or_unexpected_layout(tiny_pipe):
    transformer = tiny_pipe.transformer
    args = (torch.randn(2, 4, 4), torch.tensor([500.0, 500.0]), torch.randn(2, 1, 16), torch.randn(2, 5, 16))
    kwargs = {"attention_kwargs": {"num_instances": 2}}
    with pytest.raises(ValueError, match="no layout tokens"):
        transformer(*args, **kwargs, layout=torch.zeros(2, 5))
    transformer.enable_layout_tokens()
    with pytest.raises(ValueError, match="pass layout"):
        transformer(*args, **kwargs)
