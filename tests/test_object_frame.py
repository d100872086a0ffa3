"""The object-frame shape VAE (embedded models only): each object encoded in its own box, the box
carried in the latent's last channels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TEST_SPEC
from midi3d.models.autoencoders.shape_vae import BOX_CHANNELS, OUTSIDE_VALUE, ShapeVAE
from midi3d.models.factory import PipelineSpec, build_pipeline

VAE = {**TEST_SPEC["vae"], "latent_channels": 4 + BOX_CHANNELS, "object_frame": True}


def box_surface(low, high, count: int = 512, seed: int = 0) -> torch.Tensor:
    """Samples on the faces of an axis-aligned box with their outward normals: ``[1, count, 6]``."""
    rng = np.random.default_rng(seed)
    low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
    points = rng.uniform(low, high, size=(count, 3)).astype(np.float32)
    axis, side = rng.integers(3, size=count), rng.integers(2, size=count)
    points[np.arange(count), axis] = np.where(side == 1, high[axis], low[axis])
    normals = np.zeros((count, 3), np.float32)
    normals[np.arange(count), axis] = np.where(side == 1, 1.0, -1.0)
    return torch.from_numpy(np.concatenate([points, normals], 1))[None]


@pytest.fixture(scope="module")
def vae() -> ShapeVAE:
    torch.manual_seed(0)
    return ShapeVAE(**VAE).eval()


def test_the_latent_carries_the_box_exactly_and_outside_the_kl(vae):
    surface = box_surface([0.1, -0.5, 0.2], [0.5, 0.1, 0.3])
    posterior = vae.encode(surface, num_tokens=8).latent_dist
    assert posterior.mean.shape == (1, 8, 4 + BOX_CHANNELS)
    expected = torch.tensor([0.3, -0.2, 0.25, 0.2, 0.3, 0.05])
    torch.testing.assert_close(posterior.mean[0, :, -BOX_CHANNELS:], expected.expand(8, -1), atol=1e-6, rtol=0)
    assert posterior.std[..., -BOX_CHANNELS:].max() < 1e-6
    torch.testing.assert_close(vae.latent_box(posterior.mean)[0], expected, atol=1e-6, rtol=0)
    scaled = ShapeVAE(**{**VAE, "box_scale": 3.0}).eval()  # the latent holds 3x the box; it reads back 1x
    scaled_mean = scaled.encode(surface, num_tokens=8).latent_dist.mean
    torch.testing.assert_close(scaled_mean[0, 0, -BOX_CHANNELS:], 3.0 * expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(scaled.latent_box(scaled_mean)[0], expected, atol=1e-6, rtol=0)
    # the KL is that of the shape channels alone
    shape_only = 0.5 * (posterior.mean[..., :4] ** 2 + posterior.logvar[..., :4].exp() - 1 - posterior.logvar[..., :4])
    torch.testing.assert_close(posterior.kl(), shape_only.mean(dim=(1, 2)))


def test_moving_the_object_moves_its_field_and_nothing_else(vae):
    """Translation equivariance, which a scene-frame VAE does not have: the same object shifted by
    t decodes, at queries shifted by t, to the same values; beyond the grown box it is outside."""
    shift = torch.tensor([0.3, 0.2, -0.4])
    surface = box_surface([-0.4, -0.3, 0.0], [0.0, 0.1, 0.2])
    moved = surface.clone()
    moved[..., :3] += shift
    queries = torch.rand(1, 400, 3, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.7
    with torch.no_grad():
        here = vae.decode(vae.encode(surface, num_tokens=8).latent_dist.mean, queries).sample
        there = vae.decode(vae.encode(moved, num_tokens=8).latent_dist.mean, queries + shift).sample
    torch.testing.assert_close(here, there, atol=1e-4, rtol=1e-4)  # float32 coordinates
    box = ShapeVAE.surface_box(surface)[0]
    beyond = ((queries[0] - box[:3]).abs() / box[3:]).amax(-1) > 1.0 + vae.config.object_margin
    assert beyond.any() and (~beyond).any()
    assert (here[0, beyond, 0] == OUTSIDE_VALUE).all()
    assert (here[0, ~beyond, 0] != OUTSIDE_VALUE).all()  # inside the grown box the network answers


def test_sdf_functions_and_decode_agree_and_the_folder_round_trips(vae, tmp_path):
    surface = box_surface([0.0, 0.0, 0.0], [0.3, 0.4, 0.2])
    latents = vae.encode(surface, num_tokens=8).latent_dist.mean
    points = torch.rand(300, 3, generator=torch.Generator().manual_seed(1)) - 0.3
    with torch.no_grad():
        direct = vae.decode(latents, points[None]).sample[0, :, 0]
    torch.testing.assert_close(vae.sdf_functions(latents)[0](points), direct)
    vae.save_pretrained(tmp_path / "vae")
    again = ShapeVAE.from_pretrained(tmp_path / "vae").eval()
    assert again.config.object_frame and again.shape_channels == 4
    with torch.no_grad():
        torch.testing.assert_close(again.decode(latents, points[None]).sample[0, :, 0], direct)


def test_a_scene_frame_vae_is_unchanged_and_bad_sizes_are_refused():
    torch.manual_seed(0)
    plain = ShapeVAE(**TEST_SPEC["vae"]).eval()
    assert not plain.config.object_frame and plain.shape_channels == plain.config.latent_channels
    posterior = plain.encode(box_surface([0, 0, 0], [0.2, 0.2, 0.2]), num_tokens=8).latent_dist
    assert posterior.kl_channels is None and posterior.mean.shape[-1] == 4
    with pytest.raises(ValueError, match="object_frame needs latent_channels > 6"):
        ShapeVAE(**{**VAE, "latent_channels": BOX_CHANNELS})


def test_an_object_frame_pipeline_generates_meshes_inside_the_generated_boxes(tmp_path):
    from midi3d.training.dit import rescale_latent_space

    spec = PipelineSpec(**{**TEST_SPEC, "vae": VAE,
                           "transformer": {**TEST_SPEC["transformer"], "in_channels": 4 + BOX_CHANNELS}})
    pipe = build_pipeline(spec)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn(2, 8, 4 + BOX_CHANNELS, generator=torch.Generator().manual_seed(0))
    latents[..., -BOX_CHANNELS:] = torch.tensor([[0.2, 0.0, -0.3, 0.3, 0.2, 0.25], [-0.5, 0.1, 0.4, 0.2, 0.3, 0.2]])[:, None]
    with torch.no_grad():  # every query answers "inside" where the network decodes: a full box
        pipe.vae.decoder.proj_out.bias.fill_(100.0)
    meshes, _ = pipe.extract(latents)
    for mesh, box in zip(meshes, pipe.vae.latent_box(latents)):
        low, high = (box[:3] - box[3:] * 1.1).numpy(), (box[:3] + box[3:] * 1.1).numpy()
        assert mesh is not None and (mesh.bounds[0] >= low - 0.02).all() and (mesh.bounds[1] <= high + 0.02).all()
        assert (mesh.bounds[1] - mesh.bounds[0] > 0.8 * 2 * box[3:].numpy()).all()
    # rescaling the latent space (normalise_latents) divides the shape channels only, exactly
    surface = box_surface([0.1, -0.2, 0.0], [0.4, 0.2, 0.3])
    points = torch.rand(1, 200, 3, generator=torch.Generator().manual_seed(2)) - 0.3
    with torch.no_grad():
        pipe.vae.decoder.proj_out.bias.fill_(0.0)
        before = pipe.vae.encode(surface, num_tokens=8).latent_dist.mean
        values = pipe.vae.decode(before, points).sample
        rescale_latent_space(pipe.vae, 2.0)
        after = pipe.vae.encode(surface, num_tokens=8).latent_dist.mean
        torch.testing.assert_close(after[..., :4], before[..., :4] / 2.0)
        torch.testing.assert_close(after[..., 4:], before[..., 4:])
        torch.testing.assert_close(pipe.vae.decode(after, points).sample, values, atol=1e-5, rtol=1e-5)
