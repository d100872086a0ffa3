"""The pipeline's contract with its users, in the style of diffusers' ``PipelineTesterMixin``:
tiny random components, two steps, and the conventions a diffusers user relies on (dict vs tuple
output, step-end callbacks, seeds, dtypes, CPU offload, save/load with the sampling defaults)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from midi3d.pipelines import ExtractionOptions, MIDIPipeline, MIDIPipelineOutput
from midi3d.pipelines.sampling import OFFICIAL_DEFAULTS, SAMPLING_KEY, SamplingDefaults

FAST = ExtractionOptions(resolution=16, coarse_resolution=8)


def scene_inputs(size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((size, size), np.int64)
    rgb = np.full((size, size, 3), 255, np.uint8)
    for k, instance in enumerate((2, 5, 9)):
        labels[3 + 12 * k : 12 + 12 * k, 4 : 4 + 9 * (k + 1)] = instance
        rgb[labels == instance] = (70 * k, 180 - 40 * k, 90 + 30 * k)
    return rgb, labels


def call(pipe: MIDIPipeline, **kwargs):
    rgb, labels = scene_inputs()
    settings = dict(num_inference_steps=2, guidance_scale=3.0, seed=0, output_type="latent")
    return pipe(rgb, labels, **{**settings, **kwargs})


def test_scene_image_and_label_map_in_one_call(tiny_pipe):
    out = call(tiny_pipe, output_type="mesh", extraction=FAST)
    assert isinstance(out, MIDIPipelineOutput)
    assert out.instance_ids == [2, 5, 9] and len(out.meshes) == 3 and out.latents.shape == (3, 32, 4)
    assert set(out.timings) == {"encode", "denoise", "decode"}
    assert out.settings["steps"] == 2 and out.settings["guidance"] == 3.0 and out.settings["resolution"] == 16
    assert out.settings["mi_layers"] == [1, 3] and out.settings["seed"] == 0
    assert set(out.empty_ids) <= {2, 5, 9}
    assert out.meshes_by_id().keys() == {i for i in out.instance_ids if i not in out.empty_ids}
    # the label map may also be passed by name, and as a PIL palette image
    from PIL import Image

    rgb, labels = scene_inputs()
    palette = Image.fromarray(labels.astype(np.uint8), mode="P")
    again = tiny_pipe(Image.fromarray(rgb), label_map=palette, num_inference_steps=2, guidance_scale=3.0, seed=0,
                      output_type="latent")
    torch.testing.assert_close(again.latents, call(tiny_pipe).latents, atol=0, rtol=0)


def test_scene_mode_equals_the_instance_lists(tiny_pipe):
    from midi3d.pipelines.preprocess import split_instances

    rgb, labels = scene_inputs()
    images, masks = split_instances(rgb, labels, [2, 5, 9])
    lists = tiny_pipe(images, masks, [rgb] * 3, num_inference_steps=2, guidance_scale=3.0,
                      generator=torch.Generator().manual_seed(0), output_type="latent")
    torch.testing.assert_close(lists.latents, call(tiny_pipe).latents, atol=0, rtol=0)


def test_dict_and_tuple_outputs_agree(tiny_pipe):
    as_dict = call(tiny_pipe)
    as_tuple = call(tiny_pipe, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    torch.testing.assert_close(as_tuple[0], as_dict.latents, atol=0, rtol=0)
    assert as_tuple[1] is None and as_dict.meshes is None  # latent output: no meshes


def test_seed_determinism_and_the_seed_matters(tiny_pipe):
    torch.manual_seed(123)  # the global RNG plays no part
    first = call(tiny_pipe, seed=4).latents
    torch.manual_seed(999)
    second = call(tiny_pipe, seed=4).latents
    third = call(tiny_pipe, seed=5).latents
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert (first - third).abs().max() > 1e-3
    generator = torch.Generator().manual_seed(4)  # a generator is the same as its seed
    torch.testing.assert_close(call(tiny_pipe, seed=None, generator=generator).latents, first, atol=0, rtol=0)


def test_callback_sees_each_step_and_can_replace_the_latents(tiny_pipe):
    seen = []

    def observe(pipe, step, t, kwargs):
        seen.append((step, float(t), sorted(kwargs)))
        return {}

    plain = call(tiny_pipe, callback_on_step_end=observe,
                 callback_on_step_end_tensor_inputs=["latents", "model_output"]).latents
    assert [s[0] for s in seen] == [0, 1] and all(s[2] == ["latents", "model_output"] for s in seen)
    assert seen[0][1] > seen[1][1]  # timesteps fall
    torch.testing.assert_close(plain, call(tiny_pipe).latents, atol=0, rtol=0)  # observing changes nothing

    def zero_after_first(pipe, step, t, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])} if step == 0 else {}

    changed = call(tiny_pipe, callback_on_step_end=zero_after_first).latents
    assert (changed - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="not in"):
        call(tiny_pipe, callback_on_step_end=observe, callback_on_step_end_tensor_inputs=["cond_9"])


def test_diffusers_pipeline_callback_objects_are_accepted(tiny_pipe):
    from diffusers.callbacks import PipelineCallback

    class ScaleLatents(PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            return {"latents": callback_kwargs["latents"] * 0.5}

    scaled = call(tiny_pipe, callback_on_step_end=ScaleLatents(cutoff_step_ratio=1.0)).latents
    assert (scaled - call(tiny_pipe).latents).abs().max() > 1e-3


def test_cpu_offload_gives_the_same_latents(tiny_pipe):
    reference = call(tiny_pipe).latents
    tiny_pipe.enable_model_cpu_offload(device="cpu")
    assert str(tiny_pipe._execution_device).startswith("cpu")
    torch.testing.assert_close(call(tiny_pipe).latents, reference, atol=0, rtol=0)


def test_dtypes_from_pretrained_and_to(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "model")
    reference = call(tiny_pipe).latents
    for loaded in (MIDIPipeline.from_pretrained(tmp_path / "model", torch_dtype=torch.bfloat16),
                   MIDIPipeline.from_pretrained(tmp_path / "model", dtype=torch.bfloat16),
                   MIDIPipeline.from_pretrained(tmp_path / "model").to(torch.bfloat16)):
        assert {loaded.transformer.dtype, loaded.vae.dtype, loaded.image_encoder_1.dtype,
                loaded.image_encoder_2.dtype} == {torch.bfloat16}
        loaded.set_progress_bar_config(disable=True)
        latents = call(loaded).latents
        assert latents.dtype == torch.bfloat16
        difference = (latents.float() - reference).abs()
        assert 0 < difference.max() and difference.mean() < 0.1 * reference.abs().mean()
    with pytest.raises(ValueError, match="disagree"):
        MIDIPipeline.from_pretrained(tmp_path / "model", torch_dtype=torch.bfloat16, dtype=torch.float32)


def test_sampling_defaults_round_trip_and_given_values_win(tiny_pipe, tmp_path):
    assert tiny_pipe.sampling_defaults == OFFICIAL_DEFAULTS
    tiny_pipe.sampling_defaults = SamplingDefaults(steps=3, guidance=2.5, resolution=16)
    tiny_pipe.save_pretrained(tmp_path / "model")
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index[SAMPLING_KEY] == {"num_inference_steps": 3, "guidance_scale": 2.5, "resolution": 16}
    loaded = MIDIPipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.sampling_defaults == SamplingDefaults(steps=3, guidance=2.5, resolution=16)
    rgb, labels = scene_inputs()
    out = loaded(rgb, labels, seed=0, extraction=ExtractionOptions(coarse_resolution=8))
    assert (out.settings["steps"], out.settings["guidance"], out.settings["resolution"]) == (3, 2.5, 16)
    given = loaded(rgb, labels, seed=0, num_inference_steps=2, guidance_scale=1.0, output_type="latent")
    assert (given.settings["steps"], given.settings["guidance"]) == (2, 1.0)
    # a folder without the key (the official release) gets the official values
    del index[SAMPLING_KEY]
    (tmp_path / "model" / "model_index.json").write_text(json.dumps(index))
    assert MIDIPipeline.from_pretrained(tmp_path / "model").sampling_defaults == OFFICIAL_DEFAULTS


@pytest.mark.parametrize("entry, problem", [({"guidance_scale": "x"}, "guidance_scale"),
                                            ({"resolution": 100}, "power of two"),
                                            ({"num_inference_steps": 0}, "num_inference_steps"),
                                            ({"sampler": 1}, "keys"), ([1, 2], "mapping")])
def test_bad_recorded_defaults_are_one_line(tiny_pipe, tmp_path, entry, problem):
    from midi3d.models.checkpoint import CheckpointError

    tiny_pipe.save_pretrained(tmp_path / "model")
    path = tmp_path / "model" / "model_index.json"
    index = json.loads(path.read_text())
    index[SAMPLING_KEY] = entry
    path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"model_index.json: {SAMPLING_KEY}.*{problem}"):
        MIDIPipeline.from_pretrained(tmp_path / "model")


def test_multi_instance_layers_per_call_are_restored(tiny_pipe):
    with_mi = call(tiny_pipe).latents
    without = call(tiny_pipe, mi_layers="none")
    assert without.settings["mi_layers"] == [] and tiny_pipe.transformer.mi_layers == (1, 3)
    assert (with_mi - without.latents).abs().max() > 1e-5
    assert call(tiny_pipe, mi_layers="all").settings["mi_layers"] == [0, 1, 2, 3, 4]
    torch.testing.assert_close(call(tiny_pipe, mi_layers="1,3").latents, with_mi, atol=0, rtol=0)


def test_bad_inputs_are_refused(tiny_pipe):
    from midi3d.io.errors import InputError

    rgb, labels = scene_inputs()
    with pytest.raises(InputError, match="no instance"):
        tiny_pipe(rgb, np.zeros_like(labels), num_inference_steps=1)
    with pytest.raises(InputError, match="more than the limit of 2"):
        tiny_pipe(rgb, labels, num_inference_steps=1, max_instances=2)
    with pytest.raises(InputError, match="label map is"):
        tiny_pipe(rgb, labels[:-1], num_inference_steps=1)
    with pytest.raises(ValueError, match="needs its label map"):
        tiny_pipe(rgb)
    with pytest.raises(ValueError, match="guidance_scale"):
        tiny_pipe(rgb, labels, guidance_scale=float("nan"))
