"""Parity with the official code on ../shared/fixtures/official-tiny (README lists the tolerances)."""

from __future__ import annotations

import numpy as np
import torch

from midi3d.geometry.extraction import marching_cubes, mean_filter3, vertices_to_world
from midi3d.io.labelmap import instance_ids
from midi3d.models.image_encoders import clip_pixels, dino_pixels
from midi3d.pipelines.preprocess import split_instances
from midi3d.schedulers import RectifiedFlowScheduler

MODULE_TOL = dict(atol=1e-5, rtol=1e-5)
PIPE_TOL = dict(atol=5e-5, rtol=0)


def t(reference, key):
    return torch.from_numpy(reference[key])


@torch.no_grad()
def test_transformer_forward_with_multi_instance(official_pipe, reference):
    tf = official_pipe.transformer
    assert tf.mi_layers == (1, 3)
    out = tf(t(reference, "tf_latent_model_input"), t(reference, "tf_timestep_batch"), t(reference, "tf_ehs1"),
             t(reference, "tf_ehs2"), attention_kwargs={"num_instances": 3}).sample
    np.testing.assert_allclose(out.numpy(), reference["tf_out"], **MODULE_TOL)
    uncond, cond = out.chunk(2)
    np.testing.assert_allclose((uncond + 7 * (cond - uncond)).numpy(), reference["tf_out_cfg7"], atol=1e-4)


@torch.no_grad()
def test_transformer_time_token_and_blocks(official_pipe, reference):
    tf = official_pipe.transformer
    emb = tf.time_embed(t(reference, "tf_timestep_batch"))
    np.testing.assert_allclose(tf.time_proj(emb).numpy(), reference["tf_time_token"], **MODULE_TOL)
    outputs = []
    hooks = [block.register_forward_hook(lambda m, i, o: outputs.append(o[6:].clone())) for block in tf.blocks]
    try:
        tf(t(reference, "tf_latent_model_input"), t(reference, "tf_timestep_batch"), t(reference, "tf_ehs1"),
           t(reference, "tf_ehs2"), attention_kwargs={"num_instances": 3})
    finally:
        for hook in hooks:
            hook.remove()
    np.testing.assert_allclose(torch.stack(outputs).numpy(), reference["tf_block_out_cond"], **MODULE_TOL)


@torch.no_grad()
def test_transformer_without_multi_instance(official_pipe, reference):
    tf = official_pipe.transformer
    tf.set_multi_instance_layers([])
    try:
        out = tf(t(reference, "tf_latent_model_input"), t(reference, "tf_timestep_batch"), t(reference, "tf_ehs1"),
                 t(reference, "tf_ehs2")).sample
    finally:
        tf.set_multi_instance_layers([1, 3])
    np.testing.assert_allclose(out.numpy(), reference["tf_out_no_mi"], **MODULE_TOL)
    assert np.abs(out.numpy() - reference["tf_out"]).max() > 1e-3  # the MI part is really exercised


@torch.no_grad()
def test_vae_decode_and_dense_grids(official_pipe, reference):
    vae = official_pipe.vae
    out = vae.decode(t(reference, "vae_dec_latents"), t(reference, "vae_dec_points")).sample
    np.testing.assert_allclose(out.numpy(), reference["vae_dec_out"], **MODULE_TOL)
    first = official_pipe.decode_dense_grids(t(reference, "vae_dec_latents"), octree_depth=4, progressive=False)
    second = official_pipe.decode_dense_grids(t(reference, "vae_dec_latents"), octree_depth=4, progressive=True)
    for i in range(2):
        np.testing.assert_allclose(first[i].values.reshape(-1), reference["grid_d4_logits_pass1"][i, :, 0],
                                   **MODULE_TOL)
        np.testing.assert_allclose(second[i].values.reshape(-1), reference["grid_d4_logits_pass2"][i, :, 0],
                                   **MODULE_TOL)
        np.testing.assert_allclose(second[i].bbox_min, reference["grid_d4_bbox_min_pass2"][i], atol=1e-6)
        np.testing.assert_allclose(second[i].bbox_max, reference["grid_d4_bbox_max_pass2"][i], atol=1e-6)


@torch.no_grad()
def test_smoothing_and_marching_cubes(official_pipe, reference):
    grid = official_pipe.decode_dense_grids(t(reference, "vae_dec_latents"), octree_depth=4, progressive=True)[0]
    smoothed = mean_filter3(grid.values)
    np.testing.assert_allclose(smoothed, reference["mc_grid_smoothed"], **MODULE_TOL)
    verts, faces = marching_cubes(reference["mc_grid_smoothed"])
    np.testing.assert_allclose(verts, reference["mc_verts_index"], atol=1e-5)
    np.testing.assert_array_equal(faces, reference["mc_faces"])
    np.testing.assert_allclose(vertices_to_world(verts, grid), reference["mc_verts_world"], atol=1e-5)


@torch.no_grad()
def test_vae_encode_fps_and_posterior(official_pipe, reference):
    vae = official_pipe.vae.eval()
    surface = t(reference, "vae_enc_surface")
    subset = np.random.default_rng(0).choice(512, 256, replace=False)
    np.testing.assert_array_equal(subset, reference["vae_enc_subset_idx"])
    out = vae.encode(surface, num_tokens=64, seed=0)
    np.testing.assert_array_equal(out.query_indices.numpy(), subset[reference["vae_enc_fps_idx_local"]])
    np.testing.assert_allclose(out.latent_dist.mean.numpy(), reference["vae_enc_mean"], **MODULE_TOL)
    np.testing.assert_allclose(out.latent_dist.logvar.numpy(), reference["vae_enc_logvar"], **MODULE_TOL)


@torch.no_grad()
def test_image_encoders(official_pipe, reference):
    e1 = official_pipe.image_encoder_1(pixel_values=t(reference, "enc1_pixels")).image_embeds
    np.testing.assert_allclose(e1.numpy(), reference["enc1_image_embeds"], **MODULE_TOL)
    e2 = official_pipe.image_encoder_2(pixel_values=t(reference, "enc2_pixels")).last_hidden_state
    np.testing.assert_allclose(e2.numpy(), reference["enc2_last_hidden_state"], **MODULE_TOL)


def test_scheduler_schedules(reference):
    scheduler = RectifiedFlowScheduler()
    scheduler.set_timesteps(3)
    np.testing.assert_allclose(scheduler.timesteps.numpy(), reference["pipe_timesteps"], atol=1e-4)
    np.testing.assert_allclose(scheduler.sigmas.numpy(), reference["pipe_sigmas"], atol=1e-7)
    shifted = RectifiedFlowScheduler(shift=3.0)
    shifted.set_timesteps(5)
    np.testing.assert_allclose(shifted.timesteps.numpy(), reference["sched_shift3_n5_timesteps"], atol=1e-4)
    np.testing.assert_allclose(shifted.sigmas.numpy(), reference["sched_shift3_n5_sigmas"], atol=1e-7)


@torch.no_grad()
def test_whole_pipeline_three_steps(official_pipe, reference):
    seg, rgb = reference["pipe_seg"], reference["pipe_scene_rgb"]
    ids = instance_ids(seg)
    assert ids == [3, 7, 12]
    images, masks = split_instances(rgb, seg, ids)
    np.testing.assert_array_equal(np.stack(images), reference["pipe_inst_rgb"])
    np.testing.assert_array_equal(np.stack(masks), reference["pipe_inst_mask"])
    np.testing.assert_allclose(clip_pixels(official_pipe.feature_extractor_1, images).numpy(),
                               reference["pipe_enc1_pixels"], **MODULE_TOL)
    np.testing.assert_allclose(dino_pixels(official_pipe.feature_extractor_2, images, [rgb] * 3, masks).numpy(),
                               reference["pipe_enc2_pixels"], **MODULE_TOL)
    e1, e2 = official_pipe.encode_condition(images, masks, [rgb] * 3)
    np.testing.assert_allclose(e1[:, 0].numpy(), reference["pipe_image_embeds_1"], **MODULE_TOL)
    np.testing.assert_allclose(e2.numpy(), reference["pipe_image_embeds_2"], **MODULE_TOL)

    steps = []
    out = official_pipe(images, masks, [rgb] * 3, num_inference_steps=3, guidance_scale=7.0,
                        latents=t(reference, "pipe_latents_init"), output_type="latent",
                        callback_on_step_end=lambda pipe, i, ts, d: steps.append(d) or {},
                        callback_on_step_end_tensor_inputs=["latents", "model_input", "model_output"])
    np.testing.assert_allclose(official_pipe.scheduler.timesteps.numpy(), reference["pipe_timesteps"], atol=1e-4)
    for key, ref_key in (("model_input", "pipe_step_model_input"), ("model_output", "pipe_step_model_output"),
                         ("latents", "pipe_step_latents")):
        np.testing.assert_allclose(torch.stack([s[key] for s in steps]).numpy(), reference[ref_key], **PIPE_TOL)
    np.testing.assert_allclose(out.latents.numpy(), reference["pipe_latents_final"], **PIPE_TOL)


def test_official_folder_round_trip(official_pipe, reference, tmp_path):
    """save_pretrained writes the official layout, and it reloads to the same numbers."""
    import json

    from midi3d.pipelines import MIDIPipeline

    official_pipe.save_pretrained(tmp_path / "copy")
    index = json.loads((tmp_path / "copy" / "model_index.json").read_text())
    assert index["transformer"] == ["midi.models.transformers.triposg_transformer", "TripoSGDiTModel"]
    assert index["feature_extractor_2"] == ["transformers", "BitImageProcessor"]
    again = MIDIPipeline.from_pretrained(tmp_path / "copy")
    assert again.transformer.mi_layers == (1, 3)
    with torch.no_grad():
        out = again.transformer(t(reference, "tf_latent_model_input"), t(reference, "tf_timestep_batch"),
                                t(reference, "tf_ehs1"), t(reference, "tf_ehs2"),
                                attention_kwargs={"num_instances": 3}).sample
    np.testing.assert_allclose(out.numpy(), reference["tf_out"], **MODULE_TOL)
