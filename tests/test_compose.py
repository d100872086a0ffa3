"""Layout → scene image: the layout format and the 3DIS masks on diffusers' FLUX attention
(issue: from a layout to a 3D scene). Parity with ``../shared/fixtures/3dis-masks`` when present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from midi3d.compose import MAX_INSTANCES, layout_from_data, load_layout
from midi3d.compose.threedis import (ThreeDISConfig, ThreeDISFluxAttnProcessor, ThreeDISState, active_rules,
                                     attention_mask, box_token_grid)
from midi3d.io.errors import InputError

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "3dis-masks"


def good_layout(**changes) -> dict:
    data = {"size": [128, 96], "prompt": "a cat and a dog", "instances": [
        {"box": [6, 19, 64, 77], "description": "a cat", "category": "cat"},
        {"box": [48, 48, 112, 96], "description": "a brown dog"}]}
    data.update(changes)
    return data


# -- the layout format ---------------------------------------------------------------------------


def test_layout_round_trip_and_label_map(tmp_path):
    path = tmp_path / "layout.yaml"
    Image.fromarray(np.pad(np.ones((20, 20), np.uint8) * 255, ((10, 66), (90, 18)))).save(tmp_path / "m.png")
    data = good_layout()
    data["instances"].append({"box": [0.7, 0.1, 0.86, 0.31], "description": "a ball", "mask": "m.png"})
    data["units"] = "pixels"
    data["instances"][2]["box"] = [90, 10, 110, 30]
    import yaml

    path.write_text(yaml.safe_dump(data))
    layout = load_layout(path)
    assert (layout.width, layout.height, len(layout.instances)) == (128, 96, 3)
    np.testing.assert_allclose(layout.boxes[0], [6 / 128, 19 / 96, 64 / 128, 77 / 96])
    labels = layout.label_map()
    assert labels.shape == (96, 128) and set(np.unique(labels)) == {0, 1, 2, 3}
    assert (labels[10:30, 90:110] == 3).all() and labels[50, 60] == 2  # later instances on top
    normalized = layout_from_data({**good_layout(), "units": "normalized",
                                   "instances": [{"box": [0.1, 0.1, 0.5, 0.5], "description": "x"}]})
    assert normalized.instances[0].box == (0.1, 0.1, 0.5, 0.5)
    (tmp_path / "layout.json").write_text(json.dumps(good_layout()))
    assert load_layout(tmp_path / "layout.json").prompt == "a cat and a dog"


@pytest.mark.parametrize("change, message", [
    ({"instances": [{"box": [-5, 0, 20, 20], "description": "x"}]}, "outside the image"),
    ({"instances": [{"box": [0, 0, 200, 20], "description": "x"}]}, "outside the image"),
    ({"instances": [{"box": [10, 10, 10, 20], "description": "x"}]}, "zero area"),
    ({"instances": [{"box": [0, 0, 5, 5], "description": "x"}] * (MAX_INSTANCES + 1)}, "exceed the limit of 50"),
    ({"prompt": "  "}, "global prompt is missing or empty"),
    ({"instances": [{"box": [0, 0, 5, 5], "description": ""}]}, "description: missing or empty"),
    ({"instances": [{"box": [0, 0, 5], "description": "x"}]}, "list of 4 numbers"),
    ({"size": [128, "tall"]}, "size"),
    ({"units": "inches"}, "units"),
    ({"colour": "red"}, "unknown key 'colour'"),
])
def test_bad_layouts_fail_in_one_line(change, message, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(good_layout(**change)))
    with pytest.raises(InputError, match=message) as error:
        load_layout(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_mask_of_the_wrong_size_is_refused(tmp_path):
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "small.png")
    data = good_layout()
    data["instances"][0]["mask"] = "small.png"
    (tmp_path / "l.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="mask small.png is 10x10, the layout's image is 128x96"):
        load_layout(tmp_path / "l.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON/YAML"):
        load_layout(tmp_path / "broken.json")


# -- 3DIS masks: the rules -------------------------------------------------------------------------


def small_setup():
    boxes = np.array([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 1.0, 1.0]])
    regions = box_token_grid(boxes, 4, 4).reshape(2, -1)
    texts = [np.arange(2, 4), np.arange(4, 6)]  # text: 0-1 global, 2-3 instance 0, 4-5 instance 1
    return regions, texts


def test_rules_step_by_step():
    """An image token of box 0 only (not box 1) never sees text 1 while I2T is on, sees it after;
    text 0 sees only box 0 while T2I is on."""
    regions, texts = small_setup()
    config = ThreeDISConfig(hard_control_steps=6, i2i=1, i2t=3, t2i=2, t2t=4)
    text_len = 6
    only_box0 = text_len + int(np.flatnonzero(regions[0] & ~regions[1])[0])
    outside_box0 = text_len + int(np.flatnonzero(~regions[0])[0])
    for step in range(7):
        rules = active_rules(config, step)
        mask = attention_mask(rules, regions, texts, text_len)
        # box-0 image token → text of instance 1 (j ≠ i): 0 while I2I or I2T is on
        assert mask[only_box0, 4:6].any() == (step >= 3), step
        assert mask[only_box0, 0:2].any() == (step >= 1), step  # the global text from I2I off
        assert mask[only_box0, outside_box0] == (step >= 1), step  # other image tokens from I2I off
        assert mask[2, outside_box0] == (step >= 2), step  # text 0 → outside its box from T2I off
        assert mask[2, 4] == (step >= 4), step  # text 0 → text 1 from T2T off
        assert mask[0].all()  # the global text is never restricted
        background = text_len + np.flatnonzero(~regions.any(0))
        assert len(background) and mask[background].all()  # nor are the image tokens outside every box


def test_compat_mode_adds_the_official_first_call():
    config = ThreeDISConfig(hard_control_steps=9, i2i=2, i2t=4, t2i=4, t2t=4, compat=True)
    assert active_rules(config, 2, call=0).i2i and not active_rules(config, 2, call=1).i2i
    documented = ThreeDISConfig(hard_control_steps=9, i2i=2, i2t=4, t2i=4, t2t=4)
    assert not active_rules(documented, 2, call=0).i2i and active_rules(documented, 1, call=56).i2i


# -- parity with the official code ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture():
    if not FIXTURE.is_dir():
        pytest.skip("../shared/fixtures/3dis-masks is not present")
    return np.load(FIXTURE / "arrays.npz"), json.loads((FIXTURE / "config.json").read_text())


def fixture_config(config: dict, compat: bool) -> ThreeDISConfig:
    t = config["thresholds"]
    return ThreeDISConfig(t["hard_control_steps"], t["I2I_control_steps"], t["I2T_control_steps"],
                          t["T2I_control_steps"], t["T2T_control_steps"], compat=compat)


def test_every_official_mask_is_reproduced(fixture):
    arrays, config = fixture
    grid = box_token_grid(arrays["boxes"], config["latent_H"], config["latent_W"])
    assert (grid == (arrays["position_masks"] > 0.5)).all()
    regions = grid.reshape(len(grid), -1)
    recorded = arrays["masks_all_calls"]
    steps, calls = recorded.shape[:2]
    compat = fixture_config(config, compat=True)
    for step in range(steps):
        for call in range(calls):
            mask = attention_mask(active_rules(compat, step, call, calls), regions, arrays["instance_text_index"],
                                  config["text_len"])
            assert (mask == recorded[step, call]).all(), (step, call)
    documented = fixture_config(config, compat=False)  # differs exactly at the off-by-one calls
    differ = {(s, c) for s in range(steps) for c in range(calls)
              if not (attention_mask(active_rules(documented, s, c, calls), regions, arrays["instance_text_index"],
                                     config["text_len"]) == recorded[s, c]).all()}
    assert differ == {(2, 0), (4, 0)}


def flux_attention(kind: str, weights: dict):
    from diffusers.models.transformers.transformer_flux import FluxAttention

    if kind == "double":
        module = FluxAttention(query_dim=32, added_kv_proj_dim=32, dim_head=16, heads=2, out_dim=32,
                               context_pre_only=False, bias=True, eps=1e-6)
    else:
        module = FluxAttention(query_dim=32, dim_head=16, heads=2, out_dim=32, bias=True, eps=1e-6, pre_only=True)
    state = {k[len(kind) + 1:]: v for k, v in weights.items() if k.startswith(kind + ".")}
    module.load_state_dict(state, strict=True)
    return module.eval()


@pytest.mark.parametrize("key", ["step1_call00_double", "step1_call19_single", "step5_call00_double",
                                 "step5_call19_single", "step2_call00_double", "step2_call01_double",
                                 "step4_call00_double", "step4_call01_double"])
def test_processor_outputs_match_the_official_processor(fixture, key):
    """Our processor on diffusers' own FLUX attention modules, with the fixture's weights and
    inputs, gives the official processor's outputs at its tolerance (atol 1e-5, rtol 1e-4)."""
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed
    from safetensors.torch import load_file

    arrays, config = fixture
    weights = load_file(FIXTURE / "attention_modules.safetensors")
    step_part, call_part, kind = key.split("_")
    step, call = int(step_part[len("step"):]), int(call_part[len("call"):])
    grid = box_token_grid(arrays["boxes"], config["latent_H"], config["latent_W"])
    state = ThreeDISState(fixture_config(config, compat=True), grid.reshape(len(grid), -1),
                          arrays["instance_text_index"], config["text_len"], calls_per_step=57)
    state.step = step
    module = flux_attention(kind, weights)
    module.set_processor(ThreeDISFluxAttnProcessor(state, call))
    rope = FluxPosEmbed(10000, [4, 6, 6])(torch.from_numpy(arrays["direct_rope_ids"]))
    image = torch.from_numpy(arrays["direct_in_image_hidden"])
    text = torch.from_numpy(arrays["direct_in_text_hidden"])
    with torch.no_grad():
        if kind == "double":
            image_out, text_out = module(image, text, image_rotary_emb=rope)
            out = torch.cat([text_out, image_out], 1)
        else:
            out = module(torch.cat([text, image], 1), image_rotary_emb=rope)
    mask = state.mask(call, "cpu", out.shape[1])
    expected_mask = arrays[f"direct_{key}_mask"]
    assert (np.ones_like(expected_mask) if mask is None else mask[0, 0].numpy()) .tolist() == expected_mask.tolist()
    np.testing.assert_allclose(out.numpy(), arrays[f"direct_{key}_out"], atol=1e-5, rtol=1e-4)
