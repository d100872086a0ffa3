"""Multi-instance attention: memory-efficient form equals the key/value-repeating form."""

from __future__ import annotations

import pytest
import torch

from midi3d.models.attention import (
    instance_groups,
    multi_instance_attention,
    repeated_multi_instance_attention,
)
from midi3d.models.layer_spec import check_layer_spec, parse_layer_list
from midi3d.models.transformers.midi_transformer import MIDITransformer, default_mi_layers


def qkv(batch, heads=2, length=9, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, length, heads, dim, generator=g) for _ in range(3)]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("scenes", [1, 2])
@pytest.mark.parametrize("cfg", [False, True])
def test_equals_repeating_formulation(n, scenes, cfg):
    batch = n * scenes * (2 if cfg else 1)
    q, k, v = qkv(batch, seed=n + 10 * scenes)
    ours = multi_instance_attention(q, k, v, instance_groups(batch, n))
    reference = repeated_multi_instance_attention(q, k, v, n)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_mixed_counts_per_batch_with_cfg():
    counts = [3, 1, 2]
    q, k, v = qkv(2 * sum(counts), seed=3)
    ours = multi_instance_attention(q, k, v, instance_groups(q.shape[0], counts))
    start, expected = 0, []
    for _ in range(2):  # uncond half, then cond half
        for n in counts:
            sl = slice(start, start + n)
            expected.append(repeated_multi_instance_attention(q[sl], k[sl], v[sl], n))
            start += n
    torch.testing.assert_close(ours, torch.cat(expected), atol=1e-5, rtol=1e-5)


def test_slot_layout_padding_rows_attend_alone():
    assert instance_groups(8, [2, 3], num_instances_per_batch=4) == [2, 1, 1, 3, 1]
    assert instance_groups(16, [2, 3], num_instances_per_batch=4) == [2, 1, 1, 3, 1] * 2


def test_scenes_do_not_leak():
    """Changing scene 1 must not change scene 0's output."""
    q, k, v = qkv(6, seed=1)
    base = multi_instance_attention(q, k, v, [3, 3])
    k2 = k.clone()
    k2[3:] = torch.randn_like(k2[3:])  # a uniform shift would be softmax-invariant
    changed = multi_instance_attention(q, k2, v, [3, 3])
    torch.testing.assert_close(base[:3], changed[:3])
    assert (base[3:] - changed[3:]).abs().max() > 1e-3


def test_bad_layouts_raise():
    with pytest.raises(ValueError, match="not a multiple"):
        instance_groups(5, 2)
    with pytest.raises(ValueError, match="positive"):
        instance_groups(4, [0, 4])


def test_layer_selection_is_exact_and_required():
    model = MIDITransformer(num_attention_heads=2, width=16, in_channels=4, num_layers=21,
                            cross_attention_dim=8, cross_attention_2_dim=8)
    model.set_multi_instance_layers(None)
    assert model.mi_layers == (8, 9, 10, 11, 12) == tuple(default_mi_layers(21))
    model.set_multi_instance_layers([1])
    kinds = [type(b.attn1.processor).__name__ for b in model.blocks]
    assert kinds.count("MultiInstanceAttnProcessor") == 1  # "blocks.1" does not catch blocks.10-19
    x = torch.randn(2, 16, 4)
    with pytest.raises(ValueError, match="num_instances"):
        model(x, torch.tensor([500.0, 500.0]), torch.zeros(2, 1, 8), torch.zeros(2, 3, 8))
    with pytest.raises(ValueError, match="has blocks 0-20"):
        model.set_multi_instance_layers([21])


def test_parse_layer_list():
    assert parse_layer_list("8-12") == [8, 9, 10, 11, 12]
    assert parse_layer_list("1,3") == [1, 3]
    assert parse_layer_list("none") == []
    assert parse_layer_list("default") is None and parse_layer_list(None) is None
    assert parse_layer_list("all", 4) == [0, 1, 2, 3]
    assert parse_layer_list("1,4-6") == [1, 4, 5, 6]
    assert parse_layer_list([3, 1]) == [1, 3]
    for bad in ("4-1", ",", "1,,2", "x", "-2", "1-"):
        with pytest.raises(ValueError, match="layers"):
            parse_layer_list(bad)
    with pytest.raises(ValueError, match="number of blocks"):
        parse_layer_list("all")
    with pytest.raises(ValueError, match="blocks 0-4"):
        parse_layer_list("2-5", 5)
    check_layer_spec("all")  # the syntax is fine before a model is known
    with pytest.raises(ValueError):
        check_layer_spec("all,2")
