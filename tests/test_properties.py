"""Property-based tests (hypothesis): the label-map reader, the metrics and mesh export."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import trimesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from midi3d.eval.metrics import bbox_iou, chamfer_distance, fscore
from midi3d.io.labelmap import read_label_map
from midi3d.pipelines import MIDIPipelineOutput
from midi3d.pipelines.scene import export_scene

PROFILE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- label maps

@st.composite
def label_maps(draw, max_id: int = 255):
    """A map of 2..24 x 2..24 pixels with at least one instance (ids up to ``max_id``)."""
    height, width = draw(st.integers(2, 24)), draw(st.integers(2, 24))
    ids = draw(st.lists(st.integers(1, max_id), min_size=1, max_size=6, unique=True))
    values = draw(arrays(np.int64, (height, width), elements=st.sampled_from([0, *ids])))
    if not (values > 0).any():
        values[draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))] = ids[0]
    return values


def _read(encoded: bytes, suffix: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"labels{suffix}"
        path.write_bytes(encoded)
        return read_label_map(path, max_instances=10_000)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Same background, and a one-to-one correspondence between the instance ids."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = {(int(x), int(y)) for x, y in zip(a.ravel(), b.ravel())}
    return len({x for x, _ in pairs}) == len(pairs) == len({y for _, y in pairs})


@PROFILE
@given(label_maps(max_id=255), st.sampled_from(["L", "P"]))
def test_eight_bit_maps_round_trip_to_the_same_ids(labels, mode):
    image = Image.fromarray(labels.astype(np.uint8), mode="L")
    if mode == "P":
        image = image.convert("P")  # identity palette: indices = ids
    np.testing.assert_array_equal(_read(_png(image), ".png"), labels)


@PROFILE
@given(label_maps(max_id=65535))
def test_sixteen_bit_maps_round_trip_to_the_same_ids(labels):
    image = Image.fromarray(labels.astype(np.uint16))
    np.testing.assert_array_equal(_read(_png(image), ".png"), labels)


@PROFILE
@given(label_maps(max_id=40), st.randoms(use_true_random=False))
def test_colour_coded_maps_round_trip_to_the_same_instances(labels, random):
    ids = sorted(set(np.unique(labels).tolist()) - {0})
    colours = random.sample(range(1, 2**24), len(ids))
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    for instance, colour in zip(ids, colours):
        rgb[labels == instance] = [(colour >> 16) & 255, (colour >> 8) & 255, colour & 255]
    read = _read(_png(Image.fromarray(rgb)), ".png")
    assert same_partition(read, labels)
    assert sorted(set(np.unique(read).tolist()) - {0}) == list(range(1, len(ids) + 1))


# ---------------------------------------------------------------- metrics

def clouds(min_points: int = 1):
    return arrays(np.float64, st.tuples(st.integers(min_points, 40), st.just(3)),
                  elements=st.floats(-2, 2, allow_nan=False, width=32))


@PROFILE
@given(clouds(), clouds())
def test_chamfer_is_symmetric_and_non_negative(a, b):
    total_ab, d1_ab, d2_ab = chamfer_distance(a, b)
    total_ba, d1_ba, d2_ba = chamfer_distance(b, a)
    assert total_ab >= 0 and d1_ab >= 0 and d2_ab >= 0
    np.testing.assert_allclose([total_ab, d1_ab, d2_ab], [total_ba, d2_ba, d1_ba], rtol=1e-12, atol=0)


@PROFILE
@given(clouds(), st.permutations(range(40)))
def test_chamfer_is_zero_and_fscore_one_on_identical_clouds(a, order):
    shuffled = a[[i for i in order if i < len(a)]]
    assert chamfer_distance(a, shuffled)[0] == 0.0
    assert abs(fscore(a, shuffled) - 1.0) < 1e-7


@PROFILE
@given(clouds(), clouds(), st.floats(1e-4, 2.0))
def test_fscore_is_in_the_unit_interval_and_symmetric(a, b, tau):
    value = fscore(a, b, tau=tau)
    assert 0.0 <= value <= 1.0
    assert abs(value - fscore(b, a, tau=tau)) < 1e-12


def boxes():
    """Point sets whose boxes have every side >= 1/16 (a flat box has no volume, hence no IoU)."""
    corner = arrays(np.float64, 3, elements=st.floats(-2, 2, width=32))
    size = arrays(np.float64, 3, elements=st.floats(0.0625, 2, width=32))
    return st.tuples(corner, size, arrays(np.float64, (10, 3), elements=st.floats(0, 1, width=32))).map(
        lambda t: np.vstack([t[0], t[0] + t[1], t[0] + t[2] * t[1]]))


@PROFILE
@given(boxes(), boxes())
def test_box_iou_is_in_the_unit_interval_symmetric_and_one_on_identical_boxes(a, b):
    value = bbox_iou(a, b)
    assert 0.0 <= value <= 1.0
    assert abs(value - bbox_iou(b, a)) < 1e-12
    volume = float(np.prod(a.max(axis=0) - a.min(axis=0)))
    assert 0.0 <= 1.0 - bbox_iou(a, a[::-1]) <= 1e-8 / volume + 1e-12  # only the official +1e-8 in the denominator


# ---------------------------------------------------------------- mesh export

@st.composite
def mesh_sets(draw):
    """1..4 valid meshes: triangles of 3 distinct vertices, every vertex used by a face (what the
    extraction and clean-up produce), vertex positions anything (duplicates and slivers included)."""
    meshes = []
    for _ in range(draw(st.integers(1, 4))):
        count = draw(st.integers(3, 30))
        vertices = draw(arrays(np.float64, (count, 3), elements=st.floats(-1, 1, width=32)))
        covering = [[i, (i + 1) % count, (i + 2) % count] for i in range(0, count, 3)]
        extra = draw(st.lists(st.permutations(range(count)).map(lambda p: p[:3]), max_size=10))
        mesh = trimesh.Trimesh(vertices=vertices, faces=np.array(covering + extra), process=False)
        meshes.append(mesh)
    return meshes


@PROFILE
@given(mesh_sets(), st.sampled_from(["glb", "obj", "ply"]))
def test_any_mesh_set_exports_and_reloads_with_the_same_vertex_count(meshes, fmt):
    result = MIDIPipelineOutput(meshes=meshes, instance_ids=list(range(1, len(meshes) + 1)))
    with tempfile.TemporaryDirectory() as folder:
        path = export_scene(result, Path(folder) / f"scene.{fmt}")
        if fmt == "glb":
            loaded = trimesh.load(path, force="scene", process=False)
            counts = {name: len(loaded.geometry[name].vertices) for name in loaded.geometry}
            assert counts == {f"instance_{i}": len(m.vertices) for i, m in zip(result.ids, meshes)}
        else:
            loaded = trimesh.load(path, force="mesh", process=False)
            assert len(loaded.vertices) == sum(len(m.vertices) for m in meshes)
