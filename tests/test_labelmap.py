"""Label-map reader: every encoding, and the real examples' instance counts."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from midi3d.io.errors import InputError
from midi3d.io.labelmap import instance_ids, read_label_map


def labels():
    out = np.zeros((20, 30), np.int64)
    out[2:8, 3:9] = 1
    out[10:15, 10:25] = 4
    out[16:19, 1:5] = 9
    return out


def test_palette_uses_indices_not_colours(tmp_path):
    image = Image.fromarray(labels().astype(np.uint8), mode="P")
    # Blue for id 1, red for id 4: luminance order would be 1 < 4 < 9 anyway, so make it inverted.
    palette = [0, 0, 0] + [255, 255, 255] + [0] * 6 + [0, 0, 255] + [0] * 12 + [255, 0, 0]
    image.putpalette(palette + [0] * (768 - len(palette)))
    image.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "p.png"), labels())


@pytest.mark.parametrize("dtype,mode", [(np.uint8, "L"), (np.uint16, "I;16")])
def test_grayscale(tmp_path, dtype, mode):
    values = labels() * (300 if dtype == np.uint16 else 20)
    Image.fromarray(values.astype(dtype)).save(tmp_path / "g.png")
    assert instance_ids(read_label_map(tmp_path / "g.png")) == instance_ids(values)


def test_rgb_and_rgba_colour_coded(tmp_path):
    colours = {1: (250, 10, 10), 4: (10, 250, 10), 9: (10, 10, 250)}
    rgb = np.zeros((20, 30, 3), np.uint8)
    for i, c in colours.items():
        rgb[labels() == i] = c
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    got = read_label_map(tmp_path / "rgb.png")
    assert len(instance_ids(got)) == 3
    for i in colours:  # each colour maps to exactly one id and back
        assert len(np.unique(got[labels() == i])) == 1
    rgba = np.dstack([rgb, np.full((20, 30), 255, np.uint8)])
    rgba[labels() == 9, 3] = 0  # transparent = background
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert len(instance_ids(read_label_map(tmp_path / "rgba.png"))) == 2


def test_empty_and_too_many(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(InputError, match=r"empty\.png: label map has no instance"):
        read_label_map(tmp_path / "empty.png")
    many = np.arange(100, dtype=np.uint8).reshape(10, 10)
    Image.fromarray(many).save(tmp_path / "many.png")
    with pytest.raises(InputError, match=r"many\.png: label map has 99 instances"):
        read_label_map(tmp_path / "many.png", max_instances=64)


def test_real_examples_parse_to_listed_counts(examples_dir):
    rows = re.findall(r"^\| (\S+) \| \d+×\d+ \| [^|]+ \| (\d+) \|", (examples_dir / "README.md").read_text(), re.M)
    assert len(rows) == 11
    for name, count in rows:
        assert len(instance_ids(read_label_map(examples_dir / f"{name}_seg.png"))) == int(count), name
