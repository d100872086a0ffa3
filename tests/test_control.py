"""Instance control (midi3d.control): neutral settings change nothing, the reweighting is AST's
rule (dense re-derivation and the official AST arrays), step thresholds hold step by step, and
the controls work with mixed instance counts and classifier-free guidance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BUNDLED, SHARED
from midi3d.control import ControlConfig, active_steps, load_control
from midi3d.control.reweight import reweighted_attention, specialty_update
from midi3d.control.schedule import ControlPlan
from midi3d.models import attention as attention_module
from midi3d.models.attention import reweighted_multi_instance_attention

AST = SHARED / "fixtures" / "ast-reweight"
ZERO_WEIGHTS = {"grounding_ratio": 1.0,
                "reweight": [{"place": "instances", "weight": 0.0, "until": 1.0},
                             {"place": "image", "layers": "all", "weight": 0.0, "until": 1.0}],
                "isolation": [{"place": "image", "layers": "all", "until": 0.0},
                              {"place": "instances", "until": 0.0}]}


@pytest.fixture(scope="module")
def embedded():
    from midi3d.embedded import load_embedded_pipeline

    pipe = load_embedded_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def room():
    return Image.open(BUNDLED / "room-5_rgb.png"), Image.open(BUNDLED / "room-5_seg.png")


# -- neutral settings ----------------------------------------------------------------------------

def test_neutral_settings_reproduce_the_embedded_model(embedded, room):
    base = embedded(*room, num_inference_steps=6, output_type="latent", seed=3).latents
    for control in ("neutral", ControlConfig(), ZERO_WEIGHTS):
        out = embedded(*room, num_inference_steps=6, output_type="latent", seed=3, control=control)
        assert torch.equal(out.latents, base), control
        assert out.settings["control"] == load_control(control).to_data()
    moved = embedded(*room, num_inference_steps=6, output_type="latent", seed=3, control="grounding-0.3").latents
    assert (moved - base).abs().max() > 1e-3  # the controls are really wired in


def test_neutral_settings_reproduce_the_official_fixture(official_pipe, reference):
    from midi3d.io.labelmap import instance_ids
    from midi3d.pipelines.preprocess import split_instances

    seg, rgb = reference["pipe_seg"], reference["pipe_scene_rgb"]
    images, masks = split_instances(rgb, seg, instance_ids(seg))
    init = torch.from_numpy(reference["pipe_latents_init"])
    outs = [official_pipe(images, masks, [rgb] * 3, num_inference_steps=3, guidance_scale=7.0, latents=init,
                          output_type="latent", control=control).latents for control in (None, ZERO_WEIGHTS)]
    assert torch.equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[1].numpy(), reference["pipe_latents_final"], atol=1e-4, rtol=1e-4)


# -- the reweighting rule --------------------------------------------------------------------------

def _dense_mi_reference(q, k, v, groups, weight, tau, target):
    """The formula on the full (N*L)^2 matrix of each scene, in float64."""
    out = torch.empty_like(q, dtype=torch.float64)
    length, start = q.shape[1], 0
    for size in groups:
        qs, ks, vs = (x[start:start + size].reshape(size * length, *x.shape[2:]).double().transpose(0, 1)
                      for x in (q, k, v))
        probs = (qs @ ks.transpose(1, 2) / math.sqrt(q.shape[-1])).softmax(-1)
        instance = torch.arange(size * length) // length
        own = (instance[:, None] == instance[None, :]).double()
        m = own if target == "own" else 1 - own
        s = 1 - 1 / size
        probs = probs * torch.exp(s * weight * tau * (m - probs))
        probs = probs / (probs.sum(-1, keepdim=True) + 1e-12)
        out[start:start + size] = (probs @ vs).transpose(0, 1).reshape(size, length, *q.shape[2:])
        start += size
    return out


@pytest.mark.parametrize("target,weight", [("own", 3.5), ("others", 2.0), ("own", -4.0)])
def test_chunked_mi_reweighting_equals_the_dense_formula(target, weight):
    from midi3d.control.config import ReweightRule

    generator = torch.Generator().manual_seed(0)
    groups = [2, 3, 1, 3]  # mixed scene sizes in one batch, a single-instance scene among them
    q, k, v = (torch.randn(sum(groups), 7, 2, 8, generator=generator) * 2 for _ in range(3))
    rule = ReweightRule(place="instances", weight=weight, target=target)
    tau = 0.7
    for max_elements in (2**20, 50):  # one chunk; chunks of 1-3 queries
        out = reweighted_multi_instance_attention(q, k, v, groups, [(rule, tau)], max_elements)
        expected = _dense_mi_reference(q, k, v, groups, weight, tau, target)
        np.testing.assert_allclose(out.double().numpy(), expected.numpy(), atol=2e-6, rtol=2e-5)
    plain = attention_module.multi_instance_attention(q, k, v, groups)
    assert (out - plain).abs().max() > 1e-2


def test_update_rule_is_ast_on_small_tensors():
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    target, gain = torch.tensor([[1.0, 0.0, 0.0]]), 2.0
    raw = probs * torch.exp(gain * (target - probs))
    np.testing.assert_allclose(specialty_update(probs, target, torch.tensor(gain)).numpy(),
                               (raw / raw.sum()).numpy(), rtol=1e-6)
    assert specialty_update(probs, target, torch.tensor(gain))[0, 0] > 0.5  # towards the target


def _ast_call(data, variant: str, key: str, weights: dict[str, float]):
    """Maps and gains of one official AST call (README table), as one update on [text; image]."""
    text = data[f"{variant}_map_sreg_text_maps"].shape[1]
    image = data[f"{variant}_map_sreg_image_maps"].shape[1]
    kind, index = key.split("_")[1], int(key.split("_L")[1][:2])
    m = np.zeros((text + image, text + image), np.float32)
    g = np.zeros_like(m)
    tau = float(data[f"{variant}_call_{key}_treg"])
    r_img, r_inst, r_txt = (data[f"{variant}_map_{n}"][0] for n in ("reg_image_sizes", "reg_image_sizes_instance",
                                                                      "reg_text_sizes"))
    if index < 50:  # I2I and T2T
        m[text:, text:] = data[f"{variant}_map_sreg_image_maps"][0]
        g[text:, text:] = r_img * weights["i2i"] * tau
        m[:text, :text] = data[f"{variant}_map_sreg_text_maps"][0]
        g[:text, :text] = r_txt * weights["t2t"] * tau
    maps = {n: data[f"{variant}_map_pww_maps_{n}"][0] for n in ("instance", "attribute", "background")}
    if kind == "double":
        i2t, r = maps["instance"], r_inst
    elif index <= 23:
        i2t, r = maps["instance"] + maps["background"], r_img
    elif index <= 33:
        i2t, r = maps["instance"] + maps["attribute"], r_inst
    else:
        i2t, r = maps["attribute"], r_inst
    m[text:, :text] = i2t
    g[text:, :text] = r * weights["i2t"] * tau
    return torch.from_numpy(m), torch.from_numpy(g)


@pytest.mark.skipif(not AST.is_dir(), reason="../shared/fixtures/ast-reweight is not present")
@pytest.mark.parametrize("variant", ["t16", "t512"])
def test_reweighting_matches_the_official_ast_arrays(variant):
    import json

    hyper = json.loads((AST / "config.json").read_text())["hyperparameters"]
    weights = {"i2i": hyper["i2ireg"], "t2t": hyper["t2treg"], "i2t": hyper["i2treg"]}
    with np.load(AST / "arrays.npz") as data:
        data = {name: data[name] for name in data.files}
    keys = sorted({name[len(variant) + 6:-len("_core_out")] for name in data
                   if name.startswith(f"{variant}_call_s") and name.endswith("_core_out")
                   and "unmodulated" not in name and not name.startswith(f"{variant}_call_s16")})
    assert len(keys) == (15 if variant == "t16" else 6)
    for key in keys:
        kind = key.split("_")[1]
        q, k, v = (torch.from_numpy(data[f"{variant}_{kind}_{n}"]).transpose(0, 1) for n in "qkv")  # [L, H, d]
        target, gain = _ast_call(data, variant, key, weights)
        out = reweighted_attention(q, k, v, [(lambda a, b: target[a:b], lambda a, b: gain[a:b])], max_elements=2000)
        expected = data[f"{variant}_call_{key}_core_out"]
        np.testing.assert_allclose(out.transpose(0, 1).numpy(), expected, atol=1e-5, rtol=1e-4, err_msg=key)
        if f"{variant}_call_{key}_probs" in data:
            scores = (q.transpose(0, 1) @ k.transpose(0, 1).transpose(1, 2)) / math.sqrt(q.shape[-1])
            probs = specialty_update(scores.softmax(-1), target, gain)
            np.testing.assert_allclose(probs.numpy(), data[f"{variant}_call_{key}_probs"], atol=1e-6, err_msg=key)


# -- schedules -----------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 7, 10, 25, 50])
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_grounding_runs_mi_attention_in_exactly_the_first_ceil_r_n_steps(ratio, steps):
    plan = ControlPlan.resolve(ControlConfig(grounding_ratio=ratio), num_layers=5, mi_layers=(1, 3))
    joint = [plan.step(s, steps, 1000.0, None).instances_joint(1) for s in range(steps)]
    assert joint == [s < math.ceil(ratio * steps) for s in range(steps)]
    assert list(active_steps(ratio, steps)) == [s for s in range(steps) if joint[s]]


def test_isolation_and_reweight_windows_follow_their_thresholds():
    config = load_control({"isolation": [{"place": "image", "layers": "0-1", "until": 0.25}],
                           "reweight": [{"place": "instances", "weight": 1.0, "start": 0.2, "until": 0.6}]})
    plan = ControlPlan.resolve(config, num_layers=5, mi_layers=(1, 3))
    steps = 10
    table = [(plan.step(s, steps, 500.0, None).image_isolated(0), plan.step(s, steps, 500.0, None).image_isolated(2),
              len(plan.step(s, steps, 500.0, None).reweights("instances", 3))) for s in range(steps)]
    assert [t[0] for t in table] == [s < 3 for s in range(steps)]
    assert not any(t[1] for t in table)  # layer 2 is not in the rule
    assert [t[2] for t in table] == [1 if 2 <= s < 6 else 0 for s in range(steps)]
    (_, tau), = plan.step(0, steps, 500.0, None).reweights("instances", 1) or [(None, None)]  # step 0: not yet
    assert tau is None
    (_, tau), = plan.step(2, steps, 500.0, None).reweights("instances", 1)
    assert tau == pytest.approx(0.5**3)


def test_pipeline_runs_mi_attention_only_in_the_grounding_steps(tiny_pipe, monkeypatch):
    seen: list[list[int]] = []
    original = attention_module.multi_instance_attention
    monkeypatch.setattr(attention_module, "multi_instance_attention",
                        lambda q, k, v, groups: seen.append(list(groups)) or original(q, k, v, groups))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (28, 28, 3), dtype=np.uint8) for _ in range(3)]
    masks = [np.full((28, 28), 255, np.uint8) for _ in range(3)]
    steps = 10
    tiny_pipe(images, masks, images, num_inference_steps=steps, guidance_scale=2.0, output_type="latent", seed=0,
              control={"grounding_ratio": 0.3})
    layers = len(tiny_pipe.transformer.mi_layers)
    assert len(seen) == steps * layers
    joint = [groups != [1] * len(groups) for groups in seen]
    assert joint == [s < 3 for s in range(steps) for _ in range(layers)]
    assert all(groups == [3, 3] for groups in seen[: 3 * layers])  # CFG: two copies of the scene


# -- mixed instance counts, CFG, image regions ---------------------------------------------------

MIXED = {"grounding_ratio": 0.6,
         "reweight": [{"place": "instances", "weight": 3.0, "until": 1.0},
                      {"place": "image", "layers": "all", "weight": 4.0, "target": "others", "until": 0.5}],
         "isolation": [{"place": "image", "layers": "0-2", "until": 0.4}]}


def test_controls_with_mixed_instance_counts_and_cfg_equal_scene_by_scene_runs(tiny_pipe):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (28, 28, 3), dtype=np.uint8) for _ in range(5)]
    masks = []
    for i in range(5):  # different mask regions, so the image regions differ per instance
        mask = np.zeros((28, 28), np.uint8)
        mask[: 6 + 4 * i, 2 * i:] = 255
        masks.append(mask)
    latents = torch.randn(5, 8, 4, generator=torch.Generator().manual_seed(0))
    kwargs = dict(num_inference_steps=5, guidance_scale=3.0, output_type="latent", num_latent_tokens=8,
                  control=MIXED)
    both = tiny_pipe(images, masks, images, num_instances=[2, 3], latents=latents, **kwargs).latents
    first = tiny_pipe(images[:2], masks[:2], images[:2], latents=latents[:2], **kwargs).latents
    second = tiny_pipe(images[2:], masks[2:], images[2:], latents=latents[2:], **kwargs).latents
    np.testing.assert_allclose(both.numpy(), torch.cat([first, second]).numpy(), atol=1e-5)
    plain = tiny_pipe(images, masks, images, num_instances=[2, 3], latents=latents,
                      **{**kwargs, "control": None}).latents
    assert (both - plain).abs().max() > 1e-3


def test_image_isolation_masks_keys_outside_the_instance_region():
    from midi3d.models.attention import ConditionAttnProcessor
    from midi3d.models.transformers.midi_transformer import _attention

    torch.manual_seed(0)
    attn = _attention(16, 2, 8)
    hidden, condition = torch.randn(2, 5, 16), torch.randn(2, 6, 8)
    regions = torch.tensor([[1, 1, 0, 0, 1, 0], [1, 0, 1, 1, 0, 0]], dtype=torch.bool)
    plan = ControlPlan.resolve(load_control({"isolation": [{"place": "image", "layers": "all", "until": 0.5}]}),
                               num_layers=3, mi_layers=())
    processor = ConditionAttnProcessor(layer=1)
    masked = processor(attn, hidden, condition, control=plan.step(0, 4, 1000.0, regions))
    for row in range(2):  # the same as attending to the region's tokens only
        alone = processor(attn, hidden[row:row + 1], condition[row:row + 1, regions[row]])
        np.testing.assert_allclose(masked[row:row + 1].detach().numpy(), alone.detach().numpy(), atol=1e-6)
    lifted = processor(attn, hidden, condition, control=plan.step(2, 4, 1000.0, regions))
    assert torch.equal(lifted, processor(attn, hidden, condition))


# -- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize("data,message", [
    ({"grounding_ratio": 1.5}, "grounding_ratio"),
    ({"reweight": [{"place": "instances"}]}, "reweight.0.weight"),
    ({"reweight": [{"place": "voxels", "weight": 1}]}, "reweight.0.place"),
    ({"isolation": [{"place": "image", "until": 0.2, "colour": 1}]}, "unknown key"),
    ({"reweight": [{"place": "image", "weight": 1, "start": 0.6, "until": 0.5}]}, "before start"),
    ({"isolation": [{"place": "image", "layers": "3-1", "until": 0.2}]}, "layers"),
])
def test_bad_control_settings_are_one_line_errors(data, message):
    with pytest.raises(ValueError, match=message) as err:
        load_control(data)
    assert "\n" not in str(err.value)


def test_instance_rules_on_layers_without_mi_attention_are_refused():
    config = load_control({"reweight": [{"place": "instances", "layers": "0-2", "weight": 1.0}]})
    with pytest.raises(ValueError, match=r"layers \[0, 2\] are not multi-instance"):
        ControlPlan.resolve(config, num_layers=5, mi_layers=(1, 3))


def test_unknown_preset_names_the_presets():
    with pytest.raises(ValueError, match="neutral"):
        load_control("no-such-preset")


def test_a_folder_records_its_control_and_calls_use_it(tiny_pipe, tmp_path):
    from midi3d.pipelines import MIDIPipeline

    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (28, 28, 3), dtype=np.uint8) for _ in range(2)]
    masks = [np.full((28, 28), 255, np.uint8) for _ in range(2)]
    kwargs = dict(num_inference_steps=4, output_type="latent", seed=0)
    chosen = tiny_pipe(images, masks, images, control="grounding-0.3", **kwargs)
    tiny_pipe.set_control_defaults("grounding-0.3")
    tiny_pipe.save_pretrained(tmp_path / "model")
    loaded = MIDIPipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.control_defaults == load_control("grounding-0.3")
    by_default = loaded(images, masks, images, **kwargs)
    assert torch.equal(by_default.latents, chosen.latents)
    assert by_default.settings["control"]["grounding_ratio"] == 0.3
    neutral = loaded(images, masks, images, control="neutral", **kwargs)
    assert torch.equal(neutral.latents, tiny_pipe(images, masks, images, **{**kwargs}, control="neutral").latents)
    assert not torch.equal(neutral.latents, chosen.latents)
