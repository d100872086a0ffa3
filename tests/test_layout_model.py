"""The instance layout model (3D boxes from 2D masks) and the sampler holding the latents' boxes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TEST_SPEC
from midi3d.models.autoencoders.shape_vae import BOX_CHANNELS
from midi3d.models.factory import PipelineSpec, build_pipeline
from midi3d.models.layout_model import InstanceLayoutModel, mask_features, mirror_features, padded_sets
from midi3d.pipelines import MIDIPipeline

OBJECT_SPEC = {**TEST_SPEC, "vae": {**TEST_SPEC["vae"], "latent_channels": 4 + BOX_CHANNELS, "object_frame": True},
               "transformer": {**TEST_SPEC["transformer"], "in_channels": 4 + BOX_CHANNELS}}


def rectangle(height: int, width: int, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    mask = torch.zeros(height, width)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = 1.0
    return mask


def test_mask_features_read_the_box_in_image_coordinates_at_any_resolution():
    small = rectangle(32, 32, (8, 16), (4, 28))
    large = small.repeat_interleave(4, 0).repeat_interleave(4, 1)  # the same mask at 128 x 128
    features = mask_features(torch.stack([small]), grid=4)[0]
    x1, y1, x2, y2 = features[:4].tolist()
    assert x1 == pytest.approx(-1 + 2 * 4 / 31) and x2 == pytest.approx(-1 + 2 * 27 / 31)
    assert y1 == pytest.approx(-1 + 2 * 8 / 31) and y2 == pytest.approx(-1 + 2 * 15 / 31)
    assert features[6] == pytest.approx((8 * 24 / 1024) ** 0.5)
    torch.testing.assert_close(mask_features(large[None], grid=4)[0, 6:], features[6:])  # area and grid
    torch.testing.assert_close(mask_features(large[None], grid=4)[0, :6], features[:6], atol=0.05, rtol=0)
    empty = mask_features(torch.zeros(1, 16, 16), grid=4)[0]
    assert empty[0] > 1 and empty[2] < -1 and empty[6] == 0  # an empty mask lies outside the image


def test_mirrored_features_are_those_of_the_mirrored_masks():
    masks = torch.stack([rectangle(24, 24, (2, 9), (1, 7)), rectangle(24, 24, (10, 20), (12, 23))])
    torch.testing.assert_close(mirror_features(mask_features(masks, 6), 6), mask_features(masks.flip(-1), 6))


def test_the_model_places_each_scene_on_its_own_and_ignores_instance_order():
    torch.manual_seed(0)
    model = InstanceLayoutModel(grid=4, width=32, num_layers=2, num_attention_heads=4, dropout=0.0).eval()
    masks = torch.stack([rectangle(32, 32, (r, r + 6), (c, c + 9)) for r, c in [(2, 3), (10, 20), (20, 5), (4, 14), (25, 25)]])
    with torch.no_grad():
        both = model(masks, [3, 2])
        first, second = model(masks[:3]), model(masks[3:], [2])
        shuffled = model(masks[[2, 0, 1]])
    torch.testing.assert_close(both, torch.cat([first, second]), atol=1e-5, rtol=0)  # no leak across scenes
    torch.testing.assert_close(shuffled, first[[2, 0, 1]], atol=1e-5, rtol=0)  # a set: order-equivariant
    assert both.shape == (5, 6) and (both[:, 3:] >= model.config.min_half_size).all()
    assert not torch.allclose(first[0], first[1])  # the boxes depend on the masks
    with pytest.raises(ValueError, match="do not split 5 masks"):
        model(masks, [3, 3])
    sets, padding = padded_sets(torch.arange(5.0)[:, None], [3, 2])
    assert padding.tolist() == [[False, False, False], [False, False, True]] and sets[1, :2, 0].tolist() == [3.0, 4.0]


@pytest.fixture(scope="module")
def object_pipe() -> MIDIPipeline:
    pipe = build_pipeline(PipelineSpec(**OBJECT_SPEC))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def scene() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
    labels = np.zeros((64, 64), np.uint8)
    labels[5:30, 4:25], labels[35:60, 30:60] = 1, 2
    return image, labels


def test_the_sampler_holds_the_given_boxes_and_ends_on_them(object_pipe):
    image, labels = scene()
    boxes = np.array([[0.2, -0.1, 0.3, 0.15, 0.2, 0.1], [-0.4, 0.2, 0.0, 0.3, 0.1, 0.25]], np.float32)
    seen = []

    def record(pipe, step, t, kwargs):
        seen.append(kwargs["latents"][..., -BOX_CHANNELS:].clone())
        return {}

    out = object_pipe(image, labels, num_inference_steps=4, output_type="latent", seed=0,
                      instance_boxes=boxes, callback_on_step_end=record)
    torch.testing.assert_close(object_pipe.vae.latent_box(out.latents), torch.from_numpy(boxes), atol=1e-6, rtol=0)
    assert out.settings["boxes"] == "given"
    # on the way, the box channels are the forward-noised boxes: their distance to the box shrinks
    target = torch.from_numpy(boxes)[:, None] * object_pipe.vae.config.box_scale
    gaps = [float((s - target).abs().mean()) for s in seen]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-6 < gaps[0]
    free = object_pipe(image, labels, num_inference_steps=4, output_type="latent", seed=0)
    assert free.settings["boxes"] == "generated"  # no layout model in this folder
    assert not torch.allclose(object_pipe.vae.latent_box(free.latents), torch.from_numpy(boxes), atol=1e-2)
    with pytest.raises(ValueError, match=r"must be \[2, 6\]"):
        object_pipe(image, labels, num_inference_steps=2, output_type="latent", instance_boxes=boxes[:1])
    with pytest.raises(ValueError, match="half-sizes must be positive"):
        object_pipe(image, labels, num_inference_steps=2, output_type="latent", instance_boxes=boxes * [1, 1, 1, -1, 1, 1])


def test_a_scene_frame_pipeline_refuses_boxes():
    pipe = build_pipeline(PipelineSpec(**TEST_SPEC))
    pipe.set_progress_bar_config(disable=True)
    image, labels = scene()
    with pytest.raises(ValueError, match="scene-frame"):
        pipe(image, labels, num_inference_steps=2, output_type="latent", instance_boxes=np.ones((2, 6)))


def test_a_folder_with_a_layout_model_round_trips_and_places_the_instances(object_pipe, tmp_path):
    torch.manual_seed(1)
    layout = InstanceLayoutModel(grid=4, width=32, num_layers=1, num_attention_heads=4).eval()
    object_pipe.register_modules(layout_model=layout)
    try:
        object_pipe.save_pretrained(tmp_path / "pipe")
    finally:
        object_pipe.register_modules(layout_model=None)
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["layout_model"] == ["midi3d", "InstanceLayoutModel"]
    loaded = MIDIPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    for name, tensor in layout.state_dict().items():
        torch.testing.assert_close(loaded.layout_model.state_dict()[name], tensor, rtol=0, atol=0)
    image, labels = scene()
    out = loaded(image, labels, num_inference_steps=3, output_type="latent", seed=0)
    assert out.settings["boxes"] == "layout_model"
    _, _, masks = loaded._encode_condition(*_instances(loaded, image, labels))
    with torch.no_grad():
        expected = layout(masks)
    torch.testing.assert_close(loaded.vae.latent_box(out.latents), expected, atol=1e-5, rtol=0)
    generated = loaded(image, labels, num_inference_steps=3, output_type="latent", seed=0, use_layout_model=False)
    assert generated.settings["boxes"] == "generated"
    # the folders of the official layout have no layout model and load as before
    object_pipe.save_pretrained(tmp_path / "plain")
    assert "layout_model" not in json.loads((tmp_path / "plain" / "model_index.json").read_text())
    assert MIDIPipeline.from_pretrained(tmp_path / "plain").layout_model is None


def _instances(pipe, image, labels):
    from midi3d.pipelines.preprocess import scene_instances

    inputs = scene_instances(image, labels)
    return inputs.images, inputs.masks, inputs.scenes


@pytest.fixture
def layout_folder(object_pipe, tmp_path) -> MIDIPipeline:
    """The tiny object-frame pipeline with a layout model, saved and loaded."""
    torch.manual_seed(2)
    object_pipe.register_modules(layout_model=InstanceLayoutModel(grid=4, width=32, num_layers=1,
                                                                  num_attention_heads=4).eval())
    try:
        object_pipe.save_pretrained(tmp_path / "layout-pipe")
    finally:
        object_pipe.register_modules(layout_model=None)
    return tmp_path / "layout-pipe"


def test_generate_options_and_the_cli_choose_the_boxes(layout_folder, tmp_path):
    from typer.testing import CliRunner

    from midi3d.cli import app
    from midi3d.data.synth import SynthConfig, generate_dataset
    from midi3d.pipelines.pipeline_midi import ExtractionOptions
    from midi3d.pipelines.scene import GenerateOptions, SceneInputs, generate_scene

    pipe = MIDIPipeline.from_pretrained(layout_folder)
    pipe.set_progress_bar_config(disable=True)
    image, labels = scene()
    options = GenerateOptions(steps=2, extraction=ExtractionOptions(resolution=16), postprocess=None)
    assert generate_scene(pipe, SceneInputs(image, labels), options).settings["boxes"] == "layout_model"
    chosen = GenerateOptions(steps=2, extraction=ExtractionOptions(resolution=16), postprocess=None,
                             use_layout_model=False)
    assert generate_scene(pipe, SceneInputs(image, labels), chosen).settings["boxes"] == "generated"
    # midi3d eval --generated-boxes is another run than the one with the layout model's boxes
    generate_dataset(tmp_path / "data", 1, SynthConfig(seed=3, image_size=64, surface_points=512), jobs=1)
    common = ["eval", "--root", str(tmp_path / "data"), "--test-size", "1", "--model", str(layout_folder),
              "--steps", "2", "--resolution", "16", "--icp", "none", "-q"]
    runner = CliRunner()
    runner.invoke(app, [*common, "--out", str(tmp_path / "with-layout")])
    runner.invoke(app, [*common, "--out", str(tmp_path / "generated"), "--generated-boxes"])
    with_layout = json.loads((tmp_path / "with-layout" / "eval_run.json").read_text())
    generated = json.loads((tmp_path / "generated" / "eval_run.json").read_text())
    assert "generated_boxes" not in with_layout and generated["generated_boxes"] is True
