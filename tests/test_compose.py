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


# -- AST on FLUX -----------------------------------------------------------------------------------

AST_FIXTURE = FIXTURE.parent / "ast-reweight"


def dense_ast(q, k, v, m_img, r_img, m_txt, r_txt, m_i2t, r_i2t, w, tau, text_len, i2i_t2t=True):
    """A direct float64 implementation of the formula, one block at a time, for comparison."""
    q, k, v = (x.double() for x in (q, k, v))
    p = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1)
    new = p.clone()
    t, i = slice(0, text_len), slice(text_len, None)
    if i2i_t2t:
        new[..., t, t] = p[..., t, t] * torch.exp(r_txt[:, None] * w[1] * tau * (m_txt - p[..., t, t]))
        new[..., i, i] = p[..., i, i] * torch.exp(r_img[:, None] * w[0] * tau * (m_img - p[..., i, i]))
    new[..., i, t] = p[..., i, t] * torch.exp(r_i2t[:, None] * w[2] * tau * (m_i2t - p[..., i, t]))
    new = new / (new.sum(-1, keepdim=True) + 1e-12)
    return new @ v


def test_ast_reweighting_equals_the_formula_and_is_chunk_invariant():
    from midi3d.compose.ast import ASTConfig, ASTMaps, LayerRule, reweighted_attention

    g = torch.Generator().manual_seed(0)
    text_len, hw = 5, 12
    q, k, v = (torch.randn(1, 2, text_len + hw, 8, generator=g) for _ in range(3))
    rng = np.random.default_rng(1)
    maps = ASTMaps(rng.integers(0, 2, (hw, hw)).astype(float), rng.random(hw), rng.random(hw),
                   rng.integers(0, 2, (text_len, text_len)).astype(float), rng.random(text_len),
                   rng.integers(0, 2, (hw, text_len)).astype(float), rng.integers(0, 2, (hw, text_len)).astype(float),
                   rng.integers(0, 2, (hw, text_len)).astype(float))
    config = ASTConfig()
    rule = LayerRule(True, "instance+attribute", "instance")
    ours = reweighted_attention(q, k, v, maps, rule, 0.6, config)
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    expected = dense_ast(q, k, v, t(maps.image), t(maps.image_sizes), t(maps.text), t(maps.text_sizes),
                         t(maps.i2t("instance+attribute")), t(maps.image_sizes_instance),
                         (config.w_i2i, config.w_t2t, config.w_i2t), 0.6, text_len)
    torch.testing.assert_close(ours.double(), expected, atol=1e-6, rtol=1e-5)
    chunked = reweighted_attention(q, k, v, maps, rule, 0.6, ASTConfig(max_chunk_elements=2 * 17 * 3))
    torch.testing.assert_close(chunked, ours, atol=1e-6, rtol=1e-5)  # row-wise rule: chunks change only rounding


@pytest.fixture(scope="module")
def ast_fixture():
    if not AST_FIXTURE.is_dir():
        pytest.skip("../shared/fixtures/ast-reweight is not present")
    return np.load(AST_FIXTURE / "arrays.npz"), json.loads((AST_FIXTURE / "config.json").read_text())


def fixture_maps(arrays, config, variant):
    from midi3d.compose.ast import ASTConfig, build_maps

    text_len = 16 if variant == "t16" else 512
    # t512 is the official code (text size factor over a hard-coded 512); t16 is that code with
    # every 512 replaced by 16, i.e. the factor over the actual length (our default)
    ast_config = ASTConfig(compat=variant == "t512")
    ids = arrays[f"{variant}_token_ids"]
    segments = [[int(x) for x in ids[i] if x not in (0, 1)] for i in (1, 2, 3)]  # no EOS, no padding
    vocab, stub = config["vocab"], config["attribute_instance_stub"]
    attributes = [[vocab[stub[p][0]]] for p in config["segment_prompts_[background,inst1,inst2]"][1:]]
    regions = (arrays[f"{variant}_layouts"] > 0.5).reshape(3, -1)
    return build_maps(regions, [int(x) for x in ids[0]], segments, attributes, text_len, ast_config), ast_config


@pytest.mark.parametrize("variant", ["t16", "t512"])
def test_ast_maps_match_the_official_construction(ast_fixture, variant):
    arrays, config = ast_fixture
    maps, _ = fixture_maps(arrays, config, variant)
    for name, ours in [("sreg_image_maps", maps.image), ("reg_image_sizes", maps.image_sizes),
                       ("reg_image_sizes_instance", maps.image_sizes_instance), ("sreg_text_maps", maps.text),
                       ("reg_text_sizes", maps.text_sizes), ("pww_maps_instance", maps.i2t_instance),
                       ("pww_maps_attribute", maps.i2t_attribute), ("pww_maps_background", maps.i2t_background)]:
        reference = arrays[f"{variant}_map_{name}"][0]
        np.testing.assert_allclose(ours, reference.reshape(ours.shape), atol=1e-7, err_msg=name)


def test_ast_layer_groups_match_the_probed_table(ast_fixture):
    from midi3d.compose.ast import layer_rule

    _, config = ast_fixture
    for row in config["layer_table_t16_run"]:
        rule = layer_rule(row["call_index"])
        if row["path_at_step_index_0"] == "sdpa":
            assert rule is None, row
            continue
        assert rule.i2i_t2t == row["I2I"] == row["T2T"], row
        parts = set(rule.i2t_map.split("+"))
        assert parts == {p for p in ("instance", "attribute", "background") if row[f"I2T_uses_{p}"]}, row
        assert (rule.i2t_size == "all") == row["I2T_size_reg_image_sizes"], row


@pytest.mark.parametrize("variant", ["t16", "t512"])
def test_ast_core_outputs_and_probabilities_match(ast_fixture, variant):
    from midi3d.compose.ast import ASTState, reweighted_attention

    arrays, config = ast_fixture
    maps, ast_config = fixture_maps(arrays, config, variant)
    state = ASTState(ast_config, maps, arrays["timesteps"])
    for call in config[f"calls_{variant}"]:
        key, kind = call["key"], "double" if "double" in call["key"] else "single"
        q, k, v = (torch.from_numpy(arrays[f"{variant}_{kind}_{x}"])[None] for x in "qkv")
        state.step = call["step"]
        rule = state.rule(call["layer"])
        assert (rule is None) == (call["path"] == "sdpa"), key
        if rule is None:
            out, probs = torch.nn.functional.scaled_dot_product_attention(q, k, v), None
        else:
            out, probs = reweighted_attention(q, k, v, maps, rule, state.tau(), ast_config, return_probs=True)
        np.testing.assert_allclose(out[0].numpy(), arrays[f"{variant}_call_{key}_core_out"], atol=1e-5, rtol=1e-4,
                                   err_msg=key)
        if probs is not None and f"{variant}_call_{key}_probs" in arrays:
            np.testing.assert_allclose(probs[0].numpy(), arrays[f"{variant}_call_{key}_probs"], atol=1e-6,
                                       err_msg=key)


def test_ast_processor_outputs_match_on_diffusers_flux_attention(ast_fixture):
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed
    from safetensors.torch import load_file

    from midi3d.compose.ast import ASTFluxAttnProcessor, ASTState

    arrays, config = ast_fixture
    maps, ast_config = fixture_maps(arrays, config, "t16")
    weights = load_file(AST_FIXTURE / "attention_modules.safetensors")
    rope = FluxPosEmbed(10000, [4, 6, 6])(torch.from_numpy(arrays["t16_rope_ids"][0]))
    state = ASTState(ast_config, maps, arrays["timesteps"])
    for call in config["calls_t16"]:
        key, kind = call["key"], "double" if "double" in call["key"] else "single"
        module = flux_attention(kind, weights)
        module.set_processor(ASTFluxAttnProcessor(state, call["layer"]))
        state.step = call["step"]
        with torch.no_grad():
            if kind == "double":
                image, text = module(torch.from_numpy(arrays["t16_in_double_image_hidden"]),
                                     torch.from_numpy(arrays["t16_in_double_text_hidden"]), image_rotary_emb=rope)
                out = torch.cat([text, image], 1)
            else:
                out = module(torch.from_numpy(arrays["t16_in_single_hidden"]), image_rotary_emb=rope)
        np.testing.assert_allclose(out.numpy(), arrays[f"t16_call_{key}_out"], atol=1e-5, rtol=1e-4, err_msg=key)


def test_ast_prompt_substitution_matches(ast_fixture):
    from midi3d.compose.ast import find_span, substitute_segments

    arrays, _ = ast_fixture
    ids = arrays["t16_token_ids"]
    per_prompt = torch.from_numpy(arrays["t16_prompt_embeds_per_prompt"])
    master = [int(x) for x in ids[0]]
    spans = []
    for row in (1, 2, 3):
        segment = [int(x) for x in ids[row] if x not in (0, 1)]
        start = find_span(master, segment)
        spans.append((start, start + len(segment)))
    out = substitute_segments(per_prompt[0:1], [per_prompt[i:i + 1] for i in (1, 2, 3)], spans)
    np.testing.assert_allclose(out.numpy(), arrays["t16_prompt_embeds_after_substitution"], atol=0)


# -- end to end on a tiny random FLUX through diffusers' own FluxPipeline --------------------------


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    from tiny_flux import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("flux") / "tiny-flux")


LAYOUT = {"size": [96, 64], "prompt": "a living room with a sofa and a lamp", "instances": [
    {"box": [5, 10, 50, 60], "description": "a red sofa", "category": "sofa"},
    {"box": [60, 5, 90, 40], "description": "a white lamp"}]}


@pytest.mark.parametrize("control", ["3dis", "ast", "none"])
def test_each_control_runs_end_to_end(flux_folder, control):
    from midi3d.compose.flux import ComposeOptions, compose_image, load_image_model

    pipe = load_image_model(flux_folder)
    pipe.set_progress_bar_config(disable=True)
    before = dict(pipe.transformer.attn_processors)
    result = compose_image(pipe, layout_from_data(LAYOUT), ComposeOptions(control=control, steps=3,
                                                                         max_sequence_length=32, instance_tokens=8))
    assert result.image.shape == (64, 96, 3) and result.image.dtype == np.uint8
    assert result.labels.shape == (64, 96) and set(np.unique(result.labels)) == {0, 1, 2}
    assert result.label_source == "layout boxes"
    assert {k: type(v) for k, v in pipe.transformer.attn_processors.items()} == {k: type(v) for k, v in
                                                                               before.items()}  # restored


def test_threedis_in_the_pipeline_zeroes_the_probabilities_the_rules_forbid(flux_folder, monkeypatch):
    """Through the real pipeline: at each step, the attention probability from an image token in
    box 0 only to the text of instance 1 is exactly 0 while I2I/I2T hold and non-zero after."""
    from midi3d.compose import threedis
    from midi3d.compose.flux import ComposeOptions, compose_image, load_image_model

    seen: dict[int, torch.Tensor] = {}
    real = threedis.ThreeDISState.mask

    def spy(self, call, device, sequence):
        mask = real(self, call, device, sequence)
        if call == 0:
            seen[self.step] = mask
        return mask

    monkeypatch.setattr(threedis.ThreeDISState, "mask", spy)
    pipe = load_image_model(flux_folder)
    pipe.set_progress_bar_config(disable=True)
    config = ThreeDISConfig(hard_control_steps=4, i2i=1, i2t=2, t2i=2, t2t=3)
    compose_image(pipe, layout_from_data(LAYOUT), ComposeOptions(control="3dis", steps=5, instance_tokens=8,
                                                                 threedis=config))
    assert sorted(seen) == [0, 1, 2, 3, 4]
    grid = box_token_grid(layout_from_data(LAYOUT).boxes, 4, 6).reshape(2, -1)
    text_len = 3 * 8
    query = text_len + int(np.flatnonzero(grid[0] & ~grid[1])[0])
    other_text = np.arange(16, 24)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, text_len + 24, 16, generator=g), torch.randn(1, 2, text_len + 24, 16, generator=g)
    for step, mask in seen.items():
        scores = q @ k.transpose(-1, -2) / 4.0
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, -1)[0, :, query, other_text]
        if step < config.i2t:
            assert (probs == 0).all(), step
        elif step < config.hard_control_steps:
            assert (probs > 0).all(), step
        else:  # after the hard steps the instance prompts are dropped: no one but themselves sees them
            assert (probs == 0).all(), step


def test_compose_cli_writes_image_label_map_and_overlay(flux_folder, tmp_path):
    from typer.testing import CliRunner

    from midi3d.cli import app

    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps(LAYOUT))
    out = tmp_path / "out" / "scene.png"
    out.parent.mkdir()
    result = CliRunner().invoke(app, ["compose", str(layout), "-o", str(out), "--image-model", str(flux_folder),
                                      "--steps", "2", "--instance-tokens", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (96, 64)
    labels = np.asarray(Image.open(out.with_name("scene_seg.png")))
    assert labels.shape == (64, 96) and set(np.unique(labels)) == {0, 1, 2}
    assert out.with_name("scene_overlay.png").is_file()
    missing = CliRunner().invoke(app, ["compose", str(layout), "-o", str(tmp_path / "x.png"), "--image-model",
                                       str(tmp_path / "no-flux")])
    assert missing.exit_code == 2 and "FLUX.1-dev" in missing.output and not (tmp_path / "x.png").exists()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**LAYOUT, "instances": [{"box": [0, 0, 0, 10], "description": "x"}]}))
    refused = CliRunner().invoke(app, ["compose", str(bad), "-o", str(tmp_path / "y.png"), "--image-model",
                                       str(flux_folder)])
    assert refused.exit_code == 2 and "zero area" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not (tmp_path / "y.png").exists()


def test_generate_from_a_layout_end_to_end(flux_folder, tmp_path):
    import trimesh
    from typer.testing import CliRunner

    from conftest import TEST_SPEC
    from midi3d.cli import app
    from midi3d.models.factory import PipelineSpec, build_pipeline

    model = tmp_path / "midi"
    build_pipeline(PipelineSpec(**TEST_SPEC)).save_pretrained(model)
    layout = tmp_path / "layout.yaml"
    import yaml

    layout.write_text(yaml.safe_dump(LAYOUT))
    out = tmp_path / "scene.glb"
    result = CliRunner().invoke(app, ["generate", "--layout", str(layout), "--image-model", str(flux_folder),
                                      "--image-steps", "2", "--model", str(model), "--steps", "2", "--resolution",
                                      "32", "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and (tmp_path / "scene_image.png").is_file() and (tmp_path / "scene_image_seg.png").is_file()
    scene = trimesh.load(out, force="scene")
    assert scene.metadata["midi3d_instance_ids"] == [1, 2]


# -- InstanceAssemble on diffusers' FLUX -----------------------------------------------------------

IA_FIXTURE = FIXTURE.parent / "instanceassemble-tiny"


@pytest.fixture(scope="module")
def ia_fixture():
    if not IA_FIXTURE.is_dir():
        pytest.skip("../shared/fixtures/instanceassemble-tiny is not present")
    return np.load(IA_FIXTURE / "arrays.npz"), json.loads((IA_FIXTURE / "config.json").read_text())


def ia_model(config, batched=True, folder=None, allow_pickle=False):
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file

    from midi3d.compose.instanceassemble import load_instanceassemble

    transformer = FluxTransformer2DModel(**config["transformer_config"])
    transformer.load_state_dict(load_file(IA_FIXTURE / "base_transformer.safetensors"), strict=True)
    transformer.eval()
    return transformer, load_instanceassemble(transformer, folder or IA_FIXTURE / "ckpt", allow_pickle, batched)


def ia_inputs(arrays, config):
    from midi3d.compose.instanceassemble import ia_layout

    boxes = np.array([[x / w_img, y / h_img, (x + w) / w_img, (y + h) / h_img]
                      for (x, y, w, h), (h_img, w_img) in ((a["bbox"], a["hw"]) for a in config["annos"])])
    layout = ia_layout(boxes, torch.from_numpy(arrays["layout_text_embeddings"][0]), 8, 8,
                       max_objects=config["max_objs"])
    call = dict(hidden_states=torch.from_numpy(arrays["hidden_states_in"]),
                encoder_hidden_states=torch.from_numpy(arrays["encoder_hidden_states_in"]),
                pooled_projections=torch.from_numpy(arrays["pooled_projections_in"]),
                timestep=torch.from_numpy(arrays["timestep_in"]), img_ids=torch.from_numpy(arrays["img_ids"]),
                txt_ids=torch.from_numpy(arrays["txt_ids"]), guidance=torch.from_numpy(arrays["guidance_in"]))
    return layout, call


def test_ia_layout_encoder_and_token_indices_match(ia_fixture):
    from midi3d.compose.instanceassemble import image_ids, layout_texts
    from midi3d.models.layout_tokens import fourier_features

    arrays, config = ia_fixture
    layout, call = ia_inputs(arrays, config)
    np.testing.assert_allclose(layout.boxes.numpy(), arrays["layout_boxes"], atol=1e-6)
    np.testing.assert_array_equal(layout.masks.numpy(), arrays["layout_masks"])
    np.testing.assert_array_equal(layout.text_ids.numpy(), arrays["layout_text_ids"][0])
    for k in range(config["max_objs"]):
        assert layout.image_indices[k].tolist() == arrays[f"img_idxs_obj{k}"].tolist(), k
    # angles up to 100^(7/8) · 1 ≈ 56 rad: float32 rounding of the angle alone gives a few 1e-6
    np.testing.assert_allclose(fourier_features(layout.boxes).numpy(), arrays["layout_fourier_xyxy"], atol=1e-5)
    _, adapter = ia_model(config)
    with torch.no_grad():
        encoded = adapter.encoder(layout.boxes, layout.masks, torch.from_numpy(arrays["layout_text_embeddings"]))
    np.testing.assert_allclose(encoded.numpy(), arrays["layout_encoder_out"], atol=1e-6)
    np.testing.assert_array_equal(image_ids(8, 8).numpy(), arrays["img_ids"])
    texts = layout_texts([a["text"] for a in config["annos"]], [a["category"] for a in config["annos"]])
    assert texts == config["layout_texts"][:3]


@pytest.mark.parametrize("scale, key", [(1.0, "out_layout_scale_1"), (0.5, "out_layout_scale_0p5"),
                                        (1e-6, "out_layout_scale_1em6"), (0.0, "out_layout_scale_0")])
def test_ia_transformer_outputs_match_the_official_model(ia_fixture, scale, key):
    arrays, config = ia_fixture
    transformer, adapter = ia_model(config)
    layout, call = ia_inputs(arrays, config)
    with adapter.layout(layout, call["img_ids"], scale), torch.no_grad():
        out = transformer(**call).sample
    np.testing.assert_allclose(out.numpy(), arrays[key], atol=1e-5, rtol=1e-4)


def test_ia_scale_zero_is_the_base_model_and_batched_equals_the_loop(ia_fixture):
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file

    arrays, config = ia_fixture
    base = FluxTransformer2DModel(**config["transformer_config"])
    base.load_state_dict(load_file(IA_FIXTURE / "base_transformer.safetensors"))
    layout, call = ia_inputs(arrays, config)
    with torch.no_grad():
        plain = base.eval()(**call).sample
    transformer, adapter = ia_model(config)
    with adapter.layout(layout, call["img_ids"], 0.0), torch.no_grad():
        zero = transformer(**call).sample
    assert torch.equal(zero, plain)  # LoRA at scale 0 outside the branch, no branch at 0: bit-identical
    with torch.no_grad():
        after = transformer(**call).sample  # the hooks are gone after the context
    assert torch.equal(after, plain)
    with adapter.layout(layout, call["img_ids"], 1.0), torch.no_grad():
        batched = transformer(**call).sample
    adapter.batched = False
    with adapter.layout(layout, call["img_ids"], 1.0), torch.no_grad():
        looped = transformer(**call).sample
    torch.testing.assert_close(batched, looped, atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(looped.numpy(), arrays["out_layout_scale_1"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("steps", [10, 28])
def test_ia_generation_with_the_grounding_ratio_matches(ia_fixture, steps):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from midi3d.compose.instanceassemble import GroundingSchedule

    arrays, config = ia_fixture
    transformer, adapter = ia_model(config)
    layout, call = ia_inputs(arrays, config)
    scheduler = FlowMatchEulerDiscreteScheduler(**{k: v for k, v in config["scheduler_config"].items()
                                                   if not k.startswith("_")})
    pipe = FluxPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    schedule = GroundingSchedule(adapter, steps, ratio=0.3, scale=1.0)
    hook = transformer.register_forward_pre_hook(schedule, with_kwargs=True)
    try:
        with adapter.layout(layout, call["img_ids"], 1.0), torch.no_grad():
            latents = pipe(prompt_embeds=call["encoder_hidden_states"], pooled_prompt_embeds=call["pooled_projections"],
                           latents=call["hidden_states"].clone(), height=128, width=128, num_inference_steps=steps,
                           guidance_scale=3.5, output_type="latent").images
    finally:
        hook.remove()
    assert schedule.scales == arrays[f"gen_T{steps}_layout_scale_per_step"].tolist()
    np.testing.assert_allclose(latents.numpy(), arrays[f"gen_T{steps}_final_latents"], atol=1e-5, rtol=1e-4)


def test_ia_pickled_layout_needs_trust(ia_fixture, tmp_path):
    import shutil

    arrays, config = ia_fixture
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(IA_FIXTURE / "ckpt" / "pytorch_lora_weights.safetensors", folder)
    shutil.copy(IA_FIXTURE / "ckpt" / "layout.pth", folder)
    with pytest.raises(InputError, match="pickle; pass --trust-pickle"):
        ia_model(config, folder=folder)
    transformer, adapter = ia_model(config, folder=folder, allow_pickle=True)
    layout, call = ia_inputs(arrays, config)
    with adapter.layout(layout, call["img_ids"], 1.0), torch.no_grad():
        out = transformer(**call).sample
    np.testing.assert_allclose(out.numpy(), arrays["out_layout_scale_1"], atol=1e-5, rtol=1e-4)
    with pytest.raises(InputError, match="checkpoint folder not found"):
        ia_model(config, folder=tmp_path / "nothing")


def random_ia_weights(folder: Path, blocks: list[str], text_dim: int, width: int = 32) -> Path:
    """A random InstanceAssemble checkpoint folder (layout encoder, layout_forward per block, a LoRA)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    state = {"layout_net.text_embedder.linear_1.weight": torch.randn(width, text_dim, generator=g) * 0.1,
             "layout_net.text_embedder.linear_1.bias": torch.zeros(width),
             "layout_net.text_embedder.linear_2.weight": torch.randn(width, width, generator=g) * 0.1,
             "layout_net.text_embedder.linear_2.bias": torch.zeros(width),
             "layout_net.linears.linear_1.weight": torch.randn(16, width + 1152, generator=g) * 0.05,
             "layout_net.linears.linear_1.bias": torch.zeros(16),
             "layout_net.linears.linear_2.weight": torch.randn(width, 16, generator=g) * 0.1,
             "layout_net.linears.linear_2.bias": torch.zeros(width)}
    for block in blocks:
        state[f"{block}.layout_forward.weight"] = torch.randn(width, width, generator=g) * 0.3
        state[f"{block}.layout_forward.bias"] = torch.zeros(width)
    lora = {f"transformer.{blocks[0]}.attn.to_q.lora_A.weight": torch.randn(4, width, generator=g) * 0.3,
            f"transformer.{blocks[0]}.attn.to_q.lora_B.weight": torch.randn(width, 4, generator=g) * 0.3}
    folder.mkdir(parents=True)
    save_file(state, folder / "layout.safetensors")
    save_file(lora, folder / "pytorch_lora_weights.safetensors")
    return folder


def test_instanceassemble_control_end_to_end_on_a_tiny_flux(flux_folder, tmp_path):
    """Random InstanceAssemble weights for the tiny FLUX: the control runs through the pipeline."""
    from midi3d.compose.flux import ComposeOptions, compose_image, load_image_model

    folder = random_ia_weights(tmp_path / "ia", ["transformer_blocks.0", "single_transformer_blocks.0"], text_dim=32)
    pipe = load_image_model(flux_folder)
    pipe.set_progress_bar_config(disable=True)
    options = ComposeOptions(control="instanceassemble", steps=4, max_sequence_length=32, instanceassemble=folder)
    with_layout = compose_image(pipe, layout_from_data(LAYOUT), options)
    plain = compose_image(pipe, layout_from_data(LAYOUT), ComposeOptions(control="none", steps=4,
                                                                         max_sequence_length=32))
    assert with_layout.image.shape == (64, 96, 3) and with_layout.labels.shape == (64, 96)
    difference = np.abs(with_layout.image.astype(int) - plain.image).max()
    assert difference > 2  # the branch reached the image
    zero = compose_image(pipe, layout_from_data(LAYOUT), ComposeOptions(control="instanceassemble", steps=4,
                                                                        max_sequence_length=32, instanceassemble=folder,
                                                                        grounding_ratio=0.0))
    # grounding ratio 0: the base model (prompt embeddings passed in rather than encoded inside the
    # call: float rounding only; the transformer-level test above checks bit identity)
    assert np.abs(zero.image.astype(int) - plain.image).max() <= 1


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    from tiny_flux import build_tiny_sd3

    return build_tiny_sd3(tmp_path_factory.mktemp("sd3") / "tiny-sd3")


def test_instanceassemble_on_a_tiny_sd3_through_its_pipeline(sd3_folder, tmp_path):
    """SD3: the branch after every joint block, with classifier-free guidance (batch 2)."""
    from midi3d.compose.flux import ComposeOptions, compose_image, load_image_model

    folder = random_ia_weights(tmp_path / "ia", ["transformer_blocks.0", "transformer_blocks.1"], text_dim=64)
    pipe = load_image_model(sd3_folder)
    pipe.set_progress_bar_config(disable=True)
    layout = layout_from_data(LAYOUT)
    common = dict(steps=4, max_sequence_length=16)
    with_layout = compose_image(pipe, layout, ComposeOptions(control="instanceassemble", instanceassemble=folder,
                                                             **common))
    plain = compose_image(pipe, layout, ComposeOptions(control="none", **common))
    zero = compose_image(pipe, layout, ComposeOptions(control="instanceassemble", instanceassemble=folder,
                                                      grounding_ratio=0.0, **common))
    assert with_layout.image.shape == (64, 96, 3) and with_layout.labels.shape == (64, 96)
    assert np.abs(with_layout.image.astype(int) - plain.image).max() > 2
    assert np.array_equal(zero.image, plain.image)  # no branch: the base pipeline exactly
    with pytest.raises(InputError, match="runs on FLUX; this image model is SD3"):
        compose_image(pipe, layout, ComposeOptions(control="3dis", **common))


def test_instanceassemble_sd3_batched_equals_the_loop(sd3_folder, tmp_path):
    from diffusers import SD3Transformer2DModel

    from midi3d.compose.instanceassemble import ia_layout, load_instanceassemble

    folder = random_ia_weights(tmp_path / "ia", ["transformer_blocks.0", "transformer_blocks.1"], text_dim=64)
    transformer = SD3Transformer2DModel.from_pretrained(sd3_folder / "transformer").eval()
    adapter = load_instanceassemble(transformer, folder)
    layout = ia_layout(layout_from_data(LAYOUT).boxes, torch.randn(2, 64), 8, 12)
    g = torch.Generator().manual_seed(1)
    call = dict(hidden_states=torch.randn(2, 4, 8, 12, generator=g), encoder_hidden_states=torch.randn(2, 7, 32,
                generator=g), pooled_projections=torch.randn(2, 64, generator=g), timestep=torch.tensor([500.0, 500.0]))
    outputs = []
    for batched in (True, False):
        adapter.batched = batched
        with adapter.layout(layout, None, 1.0), torch.no_grad():
            outputs.append(transformer(**call).sample)
    torch.testing.assert_close(outputs[0], outputs[1], atol=2e-6, rtol=1e-5)
    with torch.no_grad():
        base = transformer(**call).sample
    assert (outputs[0] - base).abs().max() > 1e-3  # the branch changes the output; after the context it is gone


def test_threedis_on_flux_depth_with_a_depth_map(tmp_path, flux_folder):
    """3DIS-FLUX renders on FLUX-Depth when a depth map is given (a FluxControlPipeline folder)."""
    from tiny_flux import build_tiny_flux

    from midi3d.compose.flux import ComposeOptions, compose_image, load_image_model

    folder = build_tiny_flux(tmp_path / "tiny-flux-depth", depth=True)
    depth = tmp_path / "depth.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (64, 1))).save(depth)
    pipe = load_image_model(folder)
    pipe.set_progress_bar_config(disable=True)
    layout = layout_from_data(LAYOUT)
    common = dict(control="3dis", steps=3, max_sequence_length=32, instance_tokens=8)
    result = compose_image(pipe, layout, ComposeOptions(depth=depth, **common))
    assert result.image.shape == (64, 96, 3) and set(np.unique(result.labels)) == {0, 1, 2}
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((64, 96), 128, np.uint8)).save(flat)
    other = compose_image(pipe, layout, ComposeOptions(depth=flat, **common))
    assert not np.array_equal(other.image, result.image)  # the depth map reaches the model
    with pytest.raises(InputError, match="give a depth map"):
        compose_image(pipe, layout, ComposeOptions(**common))
    with pytest.raises(InputError, match="needs a FLUX-Depth pipeline"):
        compose_image(load_image_model(flux_folder), layout, ComposeOptions(depth=depth, **common))
