"""The catalogue of bad inputs: every entry point answers with one line that names the file and
the problem, and never leaves a partial output behind.

Each image / label-map case runs through ``midi3d generate`` (exit code 2, the error line checked,
the output folder checked empty). Inputs that are unusual but valid (16-bit, float, CMYK, EXIF
rotation, one instance, one-pixel instances, unused palette ids) must work, with their pixels checked.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from midi3d.cli import app
from midi3d.io.errors import InputError, OutputError
from midi3d.io.images import load_rgb
from midi3d.io.labelmap import read_label_map
from midi3d.models.checkpoint import CheckpointError
from midi3d.models.factory import PipelineSpec, build_pipeline
from midi3d.pipelines import MIDIPipeline

from conftest import TEST_SPEC

FAST = ["--steps", "2", "--resolution", "32", "--quiet"]
RNG = np.random.default_rng(0)
SCENE = (RNG.random((48, 64, 3)) * 255).astype(np.uint8)
LABELS = np.zeros((48, 64), np.uint8)
LABELS[5:20, 5:25], LABELS[25:45, 30:60] = 1, 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    build_pipeline(PipelineSpec(**TEST_SPEC)).save_pretrained(folder)
    return folder


def generate(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["generate", *map(str, args)])
    return result.exit_code, result.output


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---------------------------------------------------------------- files that are not usable images

def _encoded(fmt: str, array: np.ndarray = SCENE, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height``: what a decompression bomb looks like to a
    reader before it decodes (no pixel data is needed to trigger the check)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(
        b"IEND", b"")


def _flip_png_crc(data: bytes) -> bytes:
    """Damage one byte inside the first IDAT chunk (its CRC no longer matches)."""
    start = data.index(b"IDAT") + 4 + 20
    return data[:start] + bytes([data[start] ^ 0xFF]) + data[start + 1:]


def _damage_after(data: bytes, marker: bytes) -> bytes:
    """Break the length field that follows ``marker`` (a JPEG scan header)."""
    at = data.index(marker) + 4
    return data[:at] + b"\xff\xff" + data[at + 2:]


def _animated_gif() -> bytes:
    buffer = io.BytesIO()
    frames = [Image.fromarray(SCENE), Image.fromarray(255 - SCENE)]
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def _nan_tiff() -> bytes:
    values = np.full(SCENE.shape[:2], 0.5, np.float32)
    values[3, 3] = np.nan
    return _encoded("TIFF", values)


@dataclass
class BadFile:
    name: str                 # file name (its suffix is what a user would have)
    data: Callable[[], bytes]
    problem: str              # regex of the problem the message must state
    extra: tuple = ()         # extra CLI arguments


BAD_IMAGES = [
    BadFile("truncated.png", lambda: _encoded("PNG")[:3000], r"unreadable image \(.*truncated"),
    BadFile("truncated.jpg", lambda: _encoded("JPEG")[:700], r"unreadable image \(.*truncated"),
    BadFile("truncated.webp", lambda: _encoded("WEBP")[:300], r"unreadable image"),
    BadFile("bad-crc.png", lambda: _flip_png_crc(_encoded("PNG")), r"unreadable image"),
    BadFile("no-frame.jpg", lambda: _encoded("JPEG").replace(b"\xff\xc0", b"\xff\x01", 1), r"not an image"),
    BadFile("bad-scan.jpg", lambda: _damage_after(_encoded("JPEG"), b"\xff\xda"), r"unreadable image"),
    BadFile("bad-header.webp", lambda: b"RIFF\xff\xff\xff\xffWEBPVP8X" + b"\x00" * 40, r"unreadable image|not an image"),
    BadFile("empty.png", lambda: b"", r"empty file \(0 bytes\)"),
    BadFile("notes.png", lambda: b"shopping list: milk, eggs\n", r"not an image \(unrecognised format\)"),
    BadFile("dot.png", lambda: _encoded("PNG", SCENE[:1, :1]), r"image of 1x1 pixels is too small"),
    BadFile("animated.gif", _animated_gif, r"animated or multi-page image \(2 frames\)"),
    BadFile("nan.tif", _nan_tiff, r"NaN or infinite pixel values"),
    BadFile("bomb.png", lambda: _png_header_only(100_000, 100_000),
            r"image of 10000000000 pixels exceeds the limit of 64000000 pixels"),
    BadFile("wide.png", lambda: _png_header_only(20_000, 4_000),
            r"image of 20000x4000 pixels exceeds the limit of 64000000 pixels"),
    BadFile("big.png", lambda: _encoded("PNG", np.zeros((1200, 1000, 3), np.uint8)),
            r"image of 1000x1200 pixels exceeds the limit of 1000000 pixels", ("--max-pixels", "1000000")),
]


@pytest.mark.parametrize("case", BAD_IMAGES, ids=[c.name for c in BAD_IMAGES])
def test_bad_scene_image(tmp_path, model_dir, case):
    image = tmp_path / case.name
    image.write_bytes(case.data())
    seg = tmp_path / "seg.png"
    Image.fromarray(LABELS).save(seg)
    out = tmp_path / "out"
    code, output = generate(image, "--seg", seg, "-o", out / "scene.glb", "--model", model_dir, *case.extra, *FAST)
    assert code == 2, output
    assert len(output.strip().splitlines()) == 1, output
    assert f"{image}:" in " ".join(output.split()), output  # names the file
    assert re.search(case.problem, " ".join(output.split())), output
    assert files_under(out) == []


@pytest.mark.parametrize("case", BAD_IMAGES[:9], ids=[c.name for c in BAD_IMAGES[:9]])
def test_bad_label_map_file(tmp_path, case):
    """The same broken files given as the label map: the label-map reader names them too."""
    path = tmp_path / case.name
    path.write_bytes(case.data())
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: ({case.problem})"):
        read_label_map(path)


# ---------------------------------------------------------------- unusual but valid images

def test_sixteen_bit_and_float_tiff_keep_their_brightness(tmp_path):
    grey = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    Image.fromarray((grey * 65535).astype(np.uint16)).save(tmp_path / "u16.tif")
    Image.fromarray(grey).save(tmp_path / "float.tif")
    for name in ("u16.tif", "float.tif"):
        rgb = load_rgb(tmp_path / name)
        assert rgb.shape == (48, 64, 3)
        np.testing.assert_allclose(rgb[..., 0] / 255.0, grey, atol=1 / 255 + 1e-6)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.fromarray(SCENE).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    rgb = load_rgb(tmp_path / "cmyk.jpg")
    assert rgb.shape == SCENE.shape
    assert np.abs(rgb.astype(int) - SCENE).mean() < 20  # JPEG loss only, not inverted channels


def test_multi_picture_camera_jpeg_reads_its_first_frame(tmp_path):
    """MPO files (phones and stereo cameras) hold the photo first and a second picture after it:
    not an animation, so they are read, not refused."""
    smooth = np.stack([*np.meshgrid(np.linspace(0, 255, 64), np.linspace(0, 255, 48)), np.full((48, 64), 90.0)],
                      axis=2).astype(np.uint8)  # JPEG keeps a smooth picture to a few grey levels
    Image.fromarray(smooth).save(tmp_path / "camera.mpo", format="MPO", save_all=True,
                                 append_images=[Image.fromarray(255 - smooth)])
    rgb = load_rgb(tmp_path / "camera.mpo").astype(int)
    assert np.abs(rgb - smooth).mean() < 5 < 100 < np.abs(rgb - (255 - smooth)).mean()  # the first frame


def test_exif_rotation_is_applied(tmp_path):
    image = Image.fromarray(SCENE)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "rotated.png", exif=exif)
    rgb = load_rgb(tmp_path / "rotated.png")
    np.testing.assert_array_equal(rgb, np.rot90(SCENE, k=-1))


def test_exif_rotated_image_with_an_unrotated_label_map_is_named(tmp_path, model_dir):
    image = Image.fromarray(SCENE)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "rotated.png", exif=exif)
    Image.fromarray(LABELS).save(tmp_path / "seg.png")
    code, output = generate(tmp_path / "rotated.png", "--seg", tmp_path / "seg.png", "-o", tmp_path / "o.glb",
                            "--model", model_dir, *FAST)
    assert code == 2 and "seg.png: EXIF orientation 1 but image" in " ".join(output.split()), output


def test_square_exif_rotated_image_is_not_silently_misaligned(tmp_path, model_dir):
    """A square pair passes any size check; the orientations are compared instead."""
    square = np.zeros((48, 48, 3), np.uint8)
    square[:10, :30] = 200
    image = Image.fromarray(square)
    exif = image.getexif()
    exif[0x0112] = 8
    image.save(tmp_path / "rotated.png", exif=exif)
    labels = np.zeros((48, 48), np.uint8)
    labels[:10, :30] = 1
    Image.fromarray(labels).save(tmp_path / "seg.png")
    code, output = generate(tmp_path / "rotated.png", "--seg", tmp_path / "seg.png", "-o", tmp_path / "o.glb",
                            "--model", model_dir, *FAST)
    assert code == 2 and "EXIF orientation 1 but image" in " ".join(output.split()), output
    assert not (tmp_path / "o.glb").exists()
    label_image = Image.fromarray(labels)  # both turned the same way: read, and they line up
    label_image.save(tmp_path / "seg-turned.png", exif=exif)
    from midi3d.pipelines.scene import load_scene

    scene = load_scene(tmp_path / "rotated.png", tmp_path / "seg-turned.png")
    assert ((scene.labels == 1) == (scene.rgb[..., 0] == 200)).all()


def _png_16bit_rgb(path: Path, rgb16: np.ndarray) -> Path:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = rgb16.shape
    rows = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def test_label_maps_that_cannot_hold_exact_ids_are_refused_with_the_reason(tmp_path):
    rgb16 = np.zeros((8, 12, 3), np.uint16)
    rgb16[:, :4] = (0x1201, 0x3400, 0x5600)  # three colours that share their high bytes
    rgb16[:, 4:8] = (0x1202, 0x3400, 0x5600)
    rgb16[:, 8:] = (0x1203, 0x3400, 0x5600)
    with pytest.raises(InputError, match="16-bit colour PNG: Pillow keeps only the high byte"):
        read_label_map(_png_16bit_rgb(tmp_path / "deep.png", rgb16))
    labels = np.zeros((32, 32, 3), np.uint8)
    labels[4:20, 4:20] = (255, 0, 0)
    Image.fromarray(labels).save(tmp_path / "lossy.jpg", quality=80)
    with pytest.raises(InputError, match="lossy.jpg: unusable label map \\(JPEG is lossy"):
        read_label_map(tmp_path / "lossy.jpg")
    Image.fromarray(labels).save(tmp_path / "lossy.webp", lossless=False)
    with pytest.raises(InputError, match="lossy WebP"):
        read_label_map(tmp_path / "lossy.webp")
    Image.fromarray(labels).save(tmp_path / "exact.webp", lossless=True)
    assert read_label_map(tmp_path / "exact.webp").max() == 1  # lossless WebP is exact
    negative = np.zeros((8, 8), np.int32)
    negative[2:5, 2:5], negative[5:, 5:] = 3, -2
    Image.fromarray(negative, mode="I").save(tmp_path / "negative.tif")  # TIFF keeps signed 32-bit ids
    with pytest.raises(InputError, match="negative id -2"):
        read_label_map(tmp_path / "negative.tif")


def test_segment_renumbers_ids_above_255_for_its_palette_png(tmp_path):
    labels = np.zeros((32, 32), np.int32)
    labels[2:10, 2:10], labels[12:20, 12:20] = 300, 1000
    Image.fromarray(labels, mode="I").save(tmp_path / "big-ids.tif")
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "img.png")
    result = CliRunner().invoke(app, ["segment", str(tmp_path / "img.png"), "-o", str(tmp_path / "out.png"),
                                      "--backend", "labelmap", "--labels", str(tmp_path / "big-ids.tif"), "-q"])
    assert result.exit_code == 0, result.output
    written = read_label_map(tmp_path / "out.png")
    np.testing.assert_array_equal(written, np.where(labels == 300, 1, np.where(labels == 1000, 2, 0)))


# ---------------------------------------------------------------- label maps

def _write(path: Path, labels: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(labels, mode=mode).save(path) if mode else Image.fromarray(labels).save(path)
    return path


def test_label_map_with_one_instance_generates_one_object(tmp_path, model_dir):
    Image.fromarray(SCENE).save(tmp_path / "rgb.png")
    single = (LABELS == 2).astype(np.uint8) * 7
    _write(tmp_path / "seg.png", single)
    out = tmp_path / "one.glb"
    code, output = generate(tmp_path / "rgb.png", "--seg", tmp_path / "seg.png", "-o", out, "--model", model_dir,
                            *FAST)
    assert code == 0, output
    import trimesh

    scene = trimesh.load(out)
    assert scene.metadata["midi3d_instance_ids"] == [7]


def test_hundreds_of_instances_are_refused_above_the_cap(tmp_path, model_dir):
    many = (np.arange(48 * 64).reshape(48, 64) % 300 + 1).astype(np.uint16)
    seg = _write(tmp_path / "many.png", many)
    Image.fromarray(SCENE).save(tmp_path / "rgb.png")
    code, output = generate(tmp_path / "rgb.png", "--seg", seg, "-o", tmp_path / "o.glb", "--model", model_dir,
                            *FAST)
    assert code == 2
    assert f"{seg}: label map has 300 instances, above the limit of 64" in " ".join(output.split())
    assert read_label_map(seg, max_instances=300).max() == 300  # the cap is configurable


def test_one_pixel_instances_are_kept_and_reported(tmp_path, model_dir):
    labels = LABELS.copy()
    labels[2, 60] = 3  # a single pixel
    Image.fromarray(SCENE).save(tmp_path / "rgb.png")
    _write(tmp_path / "seg.png", labels)
    out = tmp_path / "o.glb"
    code, output = generate(tmp_path / "rgb.png", "--seg", tmp_path / "seg.png", "-o", out, "--model", model_dir,
                            *FAST)
    assert code == 0, output
    import trimesh

    assert trimesh.load(out).metadata["midi3d_instance_ids"] == [1, 2, 3]


def test_palette_ids_that_do_not_appear_are_not_instances(tmp_path):
    image = Image.fromarray(np.where(LABELS == 2, 9, LABELS).astype(np.uint8), mode="P")
    image.putpalette([v for i in range(16) for v in (i * 15, 255 - i * 15, 40)])  # 16 colours, 3 used
    image.save(tmp_path / "pal.png")
    labels = read_label_map(tmp_path / "pal.png")
    assert sorted(np.unique(labels).tolist()) == [0, 1, 9]


def test_editing_ids_that_are_not_in_the_map_is_refused():
    from midi3d.demo.session import merge_instances, remove_instances

    labels = LABELS.astype(np.int64)
    with pytest.raises(InputError, match=r"instance\(s\) 5 not in the current label map \(it has 1, 2\)"):
        remove_instances(labels, [5])
    with pytest.raises(InputError, match=r"instance\(s\) 4 not in the current label map"):
        merge_instances(labels, [1, 4])
    with pytest.raises(InputError, match="leaves nothing to generate"):
        remove_instances(labels, [1, 2])


def test_label_map_problems_name_the_file(tmp_path):
    cases = {
        "blank.png": (np.zeros((8, 8), np.uint8), r"label map has no instance"),
        "fractional.tif": (np.full((8, 8), 1.5, np.float32), r"unusable label map \(float label map with non-integer"),
    }
    for name, (array, problem) in cases.items():
        path = _write(tmp_path / name, array)
        with pytest.raises(InputError, match=rf"^{re.escape(str(path))}: {problem}"):
            read_label_map(path)


# ---------------------------------------------------------------- checkpoints and configs

@pytest.fixture()
def saved_pipe(tmp_path) -> Path:
    folder = tmp_path / "model"
    build_pipeline(PipelineSpec(**TEST_SPEC)).save_pretrained(folder)
    return folder


def test_nan_and_inf_in_a_checkpoint(saved_pipe):
    from safetensors.torch import load_file, save_file

    path = saved_pipe / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    key = sorted(k for k in state if state[k].is_floating_point())[0]
    state[key].view(-1)[0] = float("inf")
    save_file(state, path)
    with pytest.raises(CheckpointError, match=rf"{saved_pipe / 'vae'}.*non-finite values \(NaN/inf\) in .*{key}"):
        MIDIPipeline.from_pretrained(saved_pipe)


def test_config_and_weights_that_disagree(saved_pipe):
    config_path = saved_pipe / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["width"] = config["width"] * 2
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"transformer.*weights do not match the config \(.*shape mismatch"):
        MIDIPipeline.from_pretrained(saved_pipe)


BROKEN_FOLDERS = [  # (component file, change, what the one line names)
    ("transformer/config.json", {"width": 0}, "width = 0: sizes must be positive"),
    ("vae/config.json", {"num_attention_heads": -4}, "num_attention_heads = -4"),
    ("vae/config.json", {"embedding_type": "fourier-x"}, "invalid ShapeVAE config"),
    ("scheduler/scheduler_config.json", {"shift": "fast"}, "invalid shift 'fast'"),
    ("scheduler/scheduler_config.json", {"num_train_timesteps": 0}, "invalid num_train_timesteps 0"),
    ("image_encoder_2/config.json", {"hidden_size": 24}, "Dinov2Model"),
]


@pytest.mark.parametrize("file, change, message", BROKEN_FOLDERS, ids=[f"{f}:{sorted(c)[0]}" for f, c, _ in BROKEN_FOLDERS])
def test_model_folders_with_unusable_configs_are_one_line(saved_pipe, file, change, message):
    path = saved_pipe / file
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(CheckpointError) as caught:
        MIDIPipeline.from_pretrained(saved_pipe)
    assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_eval_refuses_a_results_log_it_did_not_write(tmp_path):
    from midi3d.eval.runner import ResultLog

    (tmp_path / "results-0.jsonl").write_text('{"key": "a", "status": "ok", "seconds": 1}\n')
    with pytest.raises(InputError, match="line 1 is not a result record"):
        ResultLog(tmp_path).records()
    (tmp_path / "results-0.jsonl").write_text('[1, 2]\n{"key": "a", "status": "ok"')  # a torn last line is fine
    with pytest.raises(InputError, match="line 1"):
        ResultLog(tmp_path).records()
    (tmp_path / "results-0.jsonl").write_text('{"key": "a", "status": "failed", "error": "x", "seconds": 0}\n{"ke')
    assert list(ResultLog(tmp_path).records()) == ["a"]


@pytest.mark.parametrize("option", [["--views", "0,x"], ["--views", ","], ["--points", "0"], ["--test-size", "0"],
                                    ["--min-area", "1.5"], ["--seed", "-1"]])
def test_eval_options_are_checked_before_any_scene(tmp_path, option):
    result = CliRunner().invoke(app, ["eval", "--root", str(tmp_path), "--pred-dir", str(tmp_path),
                                      "--out", str(tmp_path / "out"), *option])
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "out" / "results-0.jsonl").exists()


class _Payload:
    """Pickles to a call that would create a marker file if the pickle were trusted blindly."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_weights_refused_then_loaded_only_with_weights_only(saved_pipe, tmp_path):
    from safetensors.torch import load_file

    vae = saved_pipe / "vae"
    state = load_file(vae / "diffusion_pytorch_model.safetensors")
    (vae / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(state, vae / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.bin: pickled weights are refused by default"):
        MIDIPipeline.from_pretrained(saved_pipe)
    MIDIPipeline.from_pretrained(saved_pipe, allow_pickle=True)  # a plain tensor pickle loads when trusted

    marker = tmp_path / "pwned"
    torch.save({"decoder.proj_out.weight": _Payload(marker)}, vae / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.bin: unreadable weights"):
        MIDIPipeline.from_pretrained(saved_pipe, allow_pickle=True)
    assert not marker.exists()  # weights_only=True refused the call; nothing ran


def test_pickle_refused_on_the_command_line(saved_pipe, tmp_path):
    from safetensors.torch import load_file

    vae = saved_pipe / "vae"
    torch.save(load_file(vae / "diffusion_pytorch_model.safetensors"), vae / "diffusion_pytorch_model.bin")
    (vae / "diffusion_pytorch_model.safetensors").unlink()
    Image.fromarray(SCENE).save(tmp_path / "rgb.png")
    _write(tmp_path / "seg.png", LABELS)
    code, output = generate(tmp_path / "rgb.png", "--seg", tmp_path / "seg.png", "-o", tmp_path / "o.glb",
                            "--model", saved_pipe, *FAST)
    assert code == 2 and "pickled weights are refused by default" in " ".join(output.split())
    assert "--trust-pickle" in output
    code, output = generate(tmp_path / "rgb.png", "--seg", tmp_path / "seg.png", "-o", tmp_path / "o.glb",
                            "--model", saved_pipe, "--trust-pickle", *FAST)
    assert code == 0, output


def test_a_config_naming_a_python_class_is_never_imported(saved_pipe, tmp_path, monkeypatch):
    probe = tmp_path / "probe_pkg"
    probe.mkdir()
    marker = tmp_path / "imported"
    (probe / "midi3d_evil_probe.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Evil: pass\n")
    monkeypatch.syspath_prepend(str(probe))
    index_path = saved_pipe / "model_index.json"
    index = json.loads(index_path.read_text())
    index["transformer"] = ["midi3d_evil_probe", "Evil"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model_index\.json: unsupported class 'Evil' for transformer"):
        MIDIPipeline.from_pretrained(saved_pipe)
    assert not marker.exists() and "midi3d_evil_probe" not in sys.modules


def test_a_training_config_with_a_python_tag_is_refused(tmp_path):
    from midi3d.training.config import load_train_config

    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"kind: vae\nmax_steps: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: invalid YAML at line 2 \("
                                          r"could not determine a constructor for the tag"):
        load_train_config(path)
    assert not marker.exists()
    code = CliRunner().invoke(app, ["train", str(path), "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    assert code.exit_code == 2 and "invalid YAML at line 2" in code.output


# ---------------------------------------------------------------- output paths

def test_dataset_entries_cannot_lead_outside_the_root(tmp_path):
    from midi3d.data.datasets import ThreeDFrontDataset

    (tmp_path / "midi_room_ids.json").write_text(json.dumps(["../../outside"]))
    (tmp_path / "midi_furniture_ids.json").write_text(json.dumps([["chair"]]))
    data = ThreeDFrontDataset(tmp_path)
    with pytest.raises(InputError, match=r"midi_room_ids\.json: entry '\.\./\.\./outside' is not a relative path"):
        data.load(0)


@pytest.mark.parametrize("name", ["..", "a/b", "../x", "nul\x00", "", "tab\tname"])
def test_output_names_from_inputs_stay_in_their_folder(tmp_path, name):
    from midi3d.io.paths import child_path

    with pytest.raises(InputError, match="source.txt: (name|output name)"):
        child_path(tmp_path, name, "source.txt")


def test_ground_truth_export_refuses_an_escaping_key(tmp_path):
    from midi3d.data.datasets import EvalScene
    from midi3d.eval.runner import export_ground_truth

    scene = EvalScene("../escape", SCENE, LABELS.astype(np.int64), [], [])
    with pytest.raises(InputError, match=r"name '\.\./escape\.glb' cannot be used as a file name"):
        export_ground_truth(scene, tmp_path / "gt")
    assert files_under(tmp_path) == []


# ---------------------------------------------------------------- unwritable outputs

def _mount_tmpfs(folder: Path, size: str, read_only: bool = False) -> bool:
    """Mount a small tmpfs (needs root and CAP_SYS_ADMIN); False where that is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


@pytest.fixture()
def mounts():
    mounted: list[Path] = []
    yield mounted
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _scene_inputs(tmp_path: Path) -> tuple[Path, Path]:
    Image.fromarray(SCENE).save(tmp_path / "rgb.png")
    return tmp_path / "rgb.png", _write(tmp_path / "seg.png", LABELS)


def test_unwritable_output_folder_patched(tmp_path, model_dir, monkeypatch):
    """Portable: ``os.open`` refuses (as for a folder without write permission, which root ignores)."""
    rgb, seg = _scene_inputs(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if str(path).startswith(str(locked)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    code, output = generate(rgb, "--seg", seg, "-o", locked / "scene.glb", "--model", model_dir, *FAST)
    assert code == 2, output
    assert f"{locked}: cannot write (Permission denied)" in " ".join(output.split())
    assert files_under(locked) == []


def test_read_only_output_folder(tmp_path, model_dir, mounts):
    folder = tmp_path / "ro"
    if not _mount_tmpfs(folder, "1m", read_only=True):
        pytest.skip("cannot mount a tmpfs here (not root); the patched-writer test covers this case")
    mounts.append(folder)
    rgb, seg = _scene_inputs(tmp_path)
    code, output = generate(rgb, "--seg", seg, "-o", folder / "scene.glb", "--model", model_dir, *FAST)
    assert code == 2 and f"{folder}: cannot write (Read-only file system)" in " ".join(output.split()), output
    for command in (["synth", "--out", str(folder / "data"), "--scenes", "1", "-q"],
                    ["eval", "--dataset", "blendswap", "--root", str(tmp_path), "--out", str(folder / "res")]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2 and "cannot write (Read-only file system)" in result.output, result.output


def test_full_disk_patched_writer(tmp_path, monkeypatch):
    """Portable: the write fails half-way with ENOSPC; neither the file nor its temporary remains."""
    from midi3d.io import files

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    target = tmp_path / "out" / "scene.glb"
    with pytest.raises(OutputError, match=rf"^{re.escape(str(target))}: cannot write \(No space left"):
        files.write_atomic(target, b"x" * 100_000)
    assert files_under(tmp_path) == []


def test_full_disk_tmpfs(tmp_path, model_dir, mounts):
    folder = tmp_path / "small"
    if not _mount_tmpfs(folder, "64k"):
        pytest.skip("cannot mount a tmpfs here (not root); the patched-writer test covers this case")
    mounts.append(folder)
    from midi3d.io.files import write_atomic

    with pytest.raises(OutputError, match=r"cannot write \(No space left on device\)"):
        write_atomic(folder / "big.bin", b"x" * 200_000)
    assert files_under(folder) == []

    previous = folder / "scene.glb"
    previous.write_bytes(b"an earlier result")
    filler = folder / "filler"
    filler.write_bytes(b"\0" * (64 * 1024 - 8192))  # leave less room than a scene needs
    rgb, seg = _scene_inputs(tmp_path)
    code, output = generate(rgb, "--seg", seg, "-o", previous, "--model", model_dir, *FAST)
    assert code == 2 and f"{previous}: cannot write (No space left on device)" in " ".join(output.split()), output
    assert previous.read_bytes() == b"an earlier result"  # the old file is intact
    assert sorted(p.name for p in folder.iterdir()) == ["filler", "scene.glb"]  # no temporary left


# ---------------------------------------------------------------- wrong or destructive, never silent

SILENT_BEFORE = [  # (extra generate options, what the one line must say)
    (["--guidance", "nan"], "--guidance nan: must be a finite number"),
    (["--guidance", "-1"], "--guidance -1.0: must be a finite number >= 0"),
    (["--mi-layers", "4-1"], "layers '4-1'"),
    (["--mi-layers", ","], "layers ',': empty item"),
    (["--mi-layers", "99"], "this transformer has blocks 0-4"),
    (["--resolution", "0"], "--resolution 0: must be a power of two"),
    (["--resolution", "48"], "--resolution 48: must be a power of two"),
    (["--steps", "0"], "--steps 0: must be an integer >= 1"),
    (["--device", "toaster"], "--device toaster: not a torch device"),
]


@pytest.mark.parametrize("extra, message", SILENT_BEFORE, ids=[" ".join(e) for e, _ in SILENT_BEFORE])
def test_values_that_used_to_be_accepted_silently(tmp_path, model_dir, extra, message):
    Image.fromarray(SCENE).save(tmp_path / "rgb.png")
    Image.fromarray(LABELS).save(tmp_path / "seg.png")
    code, output = generate(tmp_path / "rgb.png", "--seg", tmp_path / "seg.png", "-o", tmp_path / "out" / "o.glb",
                            "--model", model_dir, *FAST, *extra)
    flat = " ".join(output.split())
    assert code == 2 and message in flat, output
    assert not files_under(tmp_path / "out")


def test_outputs_never_replace_their_inputs(tmp_path, model_dir):
    Image.fromarray(SCENE).save(tmp_path / "photo.png")
    Image.fromarray(LABELS).save(tmp_path / "seg.png")
    photo = (tmp_path / "photo.png").read_bytes()
    segment = CliRunner().invoke(app, ["segment", str(tmp_path / "photo.png"), "-o", str(tmp_path / "photo.png")])
    assert segment.exit_code == 2 and "is also an input" in segment.output
    relabel = CliRunner().invoke(app, ["segment", str(tmp_path / "photo.png"), "-o", str(tmp_path / "seg.png"),
                                       "--backend", "labelmap", "--labels", str(tmp_path / "seg.png")])
    assert relabel.exit_code == 2 and "is also an input" in relabel.output
    (tmp_path / "photo_overlay.png").write_bytes(photo)  # the preview's name is checked too
    overlay = CliRunner().invoke(app, ["segment", str(tmp_path / "photo_overlay.png"), "-o",
                                       str(tmp_path / "photo.png")])
    assert overlay.exit_code == 2 and "is also an input" in overlay.output
    (tmp_path / "scene.ply").write_bytes((tmp_path / "photo.png").read_bytes())  # an image with a mesh suffix
    code, output = generate(tmp_path / "scene.ply", "--seg", tmp_path / "seg.png", "-o", tmp_path / "scene.ply",
                            "--model", model_dir, *FAST)
    assert code == 2 and "is also an input" in output
    assert (tmp_path / "photo.png").read_bytes() == photo and (tmp_path / "scene.ply").read_bytes() == photo


# ---------------------------------------------------------------- memory: refused before allocating

def test_generations_that_would_not_fit_the_memory_budget_are_refused_first(tmp_path, model_dir):
    """The official padding of a 2x8000 image, a 16384³ grid: one line naming the part, exit 2,
    before the canvas or grid exists (a 2x20000 canvas alone would be 50000² pixels)."""
    wide = np.full((2, 8000, 3), 200, np.uint8)
    labels = np.zeros((2, 8000), np.uint8)
    labels[:, 10:50], labels[:, 7940:7980] = 1, 2
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(labels).save(tmp_path / "wide_seg.png")
    common = [tmp_path / "wide.png", "--seg", tmp_path / "wide_seg.png", "-o", tmp_path / "out" / "o.glb",
              "--model", model_dir, "--steps", "1", "--quiet"]
    code, output = generate(*common, "--pad")
    flat = " ".join(output.split())
    assert code == 2 and "padded canvas" not in flat and "above the memory budget of 4 GiB" in flat, output
    assert "19945x19945 pixels" in flat
    code, output = generate(*common, "--resolution", "16384")
    assert code == 2 and "meshing grid at 16384³" in " ".join(output.split()), output
    code, output = generate(*common, "--max-memory-gb", "0.01")  # the budget is the user's to set
    assert code == 2 and "budget of 0.01 GiB" in " ".join(output.split())
    assert not files_under(tmp_path / "out")


def test_the_memory_model_of_a_large_scene():
    """4000x4000 pixels with 32 instances: instances are made one at a time, so the input-dependent
    memory stays far below the 12 GB that 32 full-resolution copies and float masks took."""
    from midi3d.pipelines.memory import GIB, estimate

    big = estimate(4000, 4000, 32, 128, latent_tokens=64, channels=8)
    assert big.total < 0.5 * GIB
    more = estimate(4000, 4000, 64, 128, latent_tokens=64, channels=8)
    assert more.total - big.total < 0.01 * GIB  # twice the instances: nearly the same (not N·H·W)


def test_instances_made_on_demand_equal_the_official_split():
    from midi3d.pipelines.preprocess import scene_instances, split_instances

    labels = LABELS.astype(np.int64) * 3
    inputs = scene_instances(SCENE, labels)
    images, masks = split_instances(SCENE, labels, inputs.ids)
    assert len(inputs.images) == len(images) == 2
    for k in range(2):
        np.testing.assert_array_equal(inputs.images[k], images[k])
        np.testing.assert_array_equal(inputs.masks[k], masks[k])
