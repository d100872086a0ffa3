"""Shared fixtures. Tests that need ../shared skip when it is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OFFICIAL_TINY = SHARED / "fixtures" / "official-tiny"
EXAMPLES = SHARED / "examples" / "midi-official"
BUNDLED = REPO / "midi3d" / "assets" / "examples"

TEST_SPEC = {
    "name": "test-tiny", "seed": 0, "mi_layers": [1, 3], "image_size": 28,
    "transformer": {"num_attention_heads": 2, "width": 32, "in_channels": 4, "num_layers": 5,
                    "cross_attention_dim": 16, "cross_attention_2_dim": 16},
    "vae": {"latent_channels": 4, "num_attention_heads": 2, "width_encoder": 16, "width_decoder": 16,
            "num_layers_encoder": 1, "num_layers_decoder": 1},
    "clip": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "patch_size": 14, "projection_dim": 16},
    "dino": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "mlp_ratio": 2, "patch_size": 14},
    "standin_occupancy": 0.05,
}


@pytest.fixture(scope="session")
def official_tiny() -> Path:
    if not OFFICIAL_TINY.is_dir():
        pytest.skip("../shared/fixtures/official-tiny is not present")
    return OFFICIAL_TINY


@pytest.fixture(scope="session")
def reference(official_tiny) -> dict[str, np.ndarray]:
    with np.load(official_tiny / "reference.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def official_pipe(official_tiny):
    from midi3d.pipelines import MIDIPipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pipe = MIDIPipeline.from_pretrained(official_tiny / "pipeline", mi_layers=[1, 3])
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    torch.set_num_threads(threads)  # later tests compare with subprocesses at the default count


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    if not EXAMPLES.is_dir():
        pytest.skip("../shared/examples/midi-official is not present")
    return EXAMPLES


@pytest.fixture
def tiny_pipe():
    from midi3d.models.factory import PipelineSpec, build_pipeline

    pipe = build_pipeline(PipelineSpec(**TEST_SPEC))
    pipe.set_progress_bar_config(disable=True)
    return pipe
