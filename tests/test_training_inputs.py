"""Training sees what inference sees: one instance through the training cache and batch assembly
gives the same encoder tensors as the pipeline's own preprocessing (each encoder its processor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from midi3d.data.layout import RENDER
from midi3d.data.synth import SynthConfig, generate_dataset
from midi3d.io.images import load_rgb
from midi3d.io.labelmap import instance_ids, read_label_map
from midi3d.models.image_encoders import clip_pixels, dino_pixels
from midi3d.pipelines.preprocess import split_instances
from midi3d.training.cache import CacheSettings, build_cache, processor_configs
from midi3d.training.config import DiTTrainConfig
from midi3d.training.dit import DiTTask


@pytest.fixture(scope="module")
def one_room(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs") / "data"
    generate_dataset(root, 1, SynthConfig(seed=3, image_size=96, surface_points=256), jobs=1)
    return root


def _training_and_inference_pixels(pipe, root: Path, cache_dir: Path, config: DiTTrainConfig):
    """(training clip, training dino, inference clip, inference dino) for every instance of the room."""
    settings = CacheSettings(64, 64, 32, 0.0, 10)
    cache = build_cache(root, cache_dir, settings, processor_configs(pipe), jobs=1)
    objects, tokens, channels = len(cache.surface), 4, pipe.transformer.config.in_channels
    latents = (torch.zeros(objects, tokens, channels), torch.ones(objects, tokens, channels))
    task = DiTTask(pipe, cache, config, latents)
    batch = task.batch(0, 0, 1, torch.device("cpu"))  # one room, batch of scenes: all its instances
    rgb, labels = _room_view(root)
    ids = instance_ids(labels)
    assert batch["counts"] == [len(ids)] and not batch["single"]
    images, masks = split_instances(rgb, labels, ids)
    return (batch["clip_pixels"], batch["dino_pixels"], clip_pixels(pipe.feature_extractor_1, images),
            dino_pixels(pipe.feature_extractor_2, images, [rgb] * len(ids), masks))


def _room_view(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """View 0 of the only room, as inference reads it."""
    import json

    room = json.loads((root / "midi_room_ids.json").read_text())[0]
    folder = root / RENDER / room
    return load_rgb(folder / "render_0000.webp"), read_label_map(folder / "semantic_0000.png")


def _check_equal(train_clip, train_dino, infer_clip, infer_dino):
    assert train_clip.shape == infer_clip.shape and train_dino.shape == infer_dino.shape
    torch.testing.assert_close(train_clip, infer_clip, atol=1e-6, rtol=0)
    torch.testing.assert_close(train_dino, infer_dino, atol=1e-6, rtol=0)


def test_embedded_model_trains_on_the_tensors_it_samples_with(one_room, tmp_path):
    from midi3d.embedded import load_embedded_pipeline

    pipe = load_embedded_pipeline()
    config = DiTTrainConfig(batch_size=1, mixed_probability=0.0, condition_drop=0.0)
    _check_equal(*_training_and_inference_pixels(pipe, one_room, tmp_path / "cache", config))


def test_lora_on_the_official_fixture_trains_on_the_tensors_inference_produces(official_tiny, one_room, tmp_path):
    """The fixture's two processors differ (CLIP 56 → 56, DINOv2 64 → crop 56): each is used."""
    from midi3d.pipelines import MIDIPipeline

    pipe = MIDIPipeline.from_pretrained(official_tiny / "pipeline", mi_layers=[1, 3])
    assert pipe.feature_extractor_2.size != pipe.feature_extractor_1.size  # the case that was wrong
    config = DiTTrainConfig(batch_size=1, mixed_probability=0.0, condition_drop=0.0, train_encoders=False,
                            ema_decay=0.0, lora={"rank": 2, "alpha": 2})
    train_clip, train_dino, infer_clip, infer_dino = _training_and_inference_pixels(pipe, one_room,
                                                                                    tmp_path / "cache", config)
    _check_equal(train_clip, train_dino, infer_clip, infer_dino)
    # and what the old one-processor cache fed DINOv2 was far from it (the defect this replaces)
    from midi3d.models.factory import IMAGENET_MEAN, IMAGENET_STD
    from midi3d.models.image_encoders import build_image_processor, normalised_pixels, resized_pixels

    single = build_image_processor("clip", {**pipe.feature_extractor_1.to_dict(), "image_mean": IMAGENET_MEAN,
                                            "image_std": IMAGENET_STD})
    rgb, labels = _room_view(one_room)
    images, _ = split_instances(rgb, labels, instance_ids(labels))
    old = normalised_pixels(single, resized_pixels(single, images))
    assert old.shape == infer_dino[:, :3].shape
    assert float((old - infer_dino[:, :3]).abs().max()) > 0.5  # a different crop: objects shift
    assert np.isfinite(train_dino.numpy()).all()
