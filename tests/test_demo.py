"""The Gradio demo: API through gradio_client, concurrency, bad uploads, temporary files, and a
real browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import io

import os
import socket
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from conftest import TEST_SPEC
from midi3d.demo.browser import CHROMIUM

EXAMPLES = Path(__file__).resolve().parents[1] / "midi3d" / "assets" / "examples"
ARTIFACTS = Path(os.environ.get("MIDI3D_TEST_ARTIFACTS", Path(__file__).resolve().parent / "artifacts"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> tuple[Path, Path]:
    from midi3d.io.labelmap import instance_ids, read_label_map

    import midi3d

    folder = Path(midi3d.__file__).parent / "assets" / "examples"
    rgb, seg = folder / "blocks-5_rgb.png", folder / "blocks-5_seg.png"
    assert len(instance_ids(read_label_map(seg))) == 5
    return rgb, seg


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from midi3d.demo.app import DemoConfig, launch
    from midi3d.demo.session import DemoLimits
    from midi3d.models.factory import PipelineSpec, build_pipeline

    pipe = build_pipeline(PipelineSpec(**TEST_SPEC))
    pipe.set_progress_bar_config(disable=True)
    work = tmp_path_factory.mktemp("demo-work")
    config = DemoConfig(DemoLimits(max_upload_mb=0.5, max_side=1024, max_instances=8, queue_size=4),
                        work_dir=work, resolution=64)
    port = _free_port()
    page = launch(config, host="127.0.0.1", port=port, prevent_thread_lock=True, pipe=pipe)
    yield {"url": f"http://127.0.0.1:{port}/", "page": page, "work": page.backend.folders.root}
    page.close()


def _client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False)


def _generate(client, rgb: Path, seg: Path, seed: int = 42, control: str = "default"):
    from gradio_client import handle_file

    label_file, _, _, count = client.predict(handle_file(str(rgb)), "label map", handle_file(str(seg)), "", "",
                                                api_name="/segment")
    return count, client.predict(handle_file(str(rgb)), handle_file(label_file), 2, 3.0, seed, "default", control,
                                 api_name="/generate")


def _instances(glb: str) -> list[str]:
    scene = trimesh.load(glb, force="scene")
    return sorted(n for n in scene.graph.nodes_geometry if n.startswith("instance_"))


def test_gradio_client_segments_and_generates(server, example):
    count, (viewer, scene_glb, download, summary, overlay) = _generate(_client(server), *example)
    assert count == "5 instance(s)"
    assert _instances(scene_glb) == [f"instance_{i}" for i in range(1, 6)]
    with zipfile.ZipFile(download) as archive:
        names = sorted(archive.namelist())
        textured = trimesh.load(io.BytesIO(archive.read("scene_textured.glb")), file_type="glb")
    assert names == sorted([f"instance_{i}.glb" for i in range(1, 6)] + ["scene_textured.glb", "scene_untextured.glb"])
    # the scene shown carries the estimated camera and the photo's colours; the overlay is a picture
    scene = trimesh.load(scene_glb, force="scene")
    assert scene.has_camera and "midi3d_reprojection_iou" in scene.metadata
    assert all(isinstance(g.visual, trimesh.visual.TextureVisuals) for g in textured.geometry.values())
    assert Image.open(overlay).size[0] == 3 * Image.open(example[0]).size[0]
    assert summary.startswith("5/5 instances") and "reprojection IoU" in summary


def test_the_advanced_fold_applies_an_instance_control_preset(server, example):
    from gradio_client import handle_file

    client = _client(server)
    _, (_, plain, _, _, _) = _generate(client, *example, seed=5)
    _, (_, grounded, _, summary, _) = _generate(client, *example, seed=5, control="grounding-0.3")
    assert summary.startswith("5/5 instances")
    assert Path(plain).read_bytes() != Path(grounded).read_bytes()  # the control reached the pipeline
    rgb, seg = example
    label_file = client.predict(handle_file(str(rgb)), "label map", handle_file(str(seg)), "", "",
                                api_name="/segment")[0]
    with pytest.raises(Exception, match="not in the list of choices"):  # presets only: no server paths
        client.predict(handle_file(str(rgb)), handle_file(label_file), 2, 3.0, 5, "default", "/etc/passwd",
                       api_name="/generate")


def test_two_clients_at_once_get_their_own_results(server, example, tmp_path):
    rgb, seg = example
    labels = np.asarray(Image.open(seg))
    three = tmp_path / "three.png"  # the same image with only instances 1-3 labelled
    Image.fromarray(np.where(labels <= 3, labels, 0).astype(np.uint8)).save(three)
    results: dict[str, object] = {}

    def run(name: str, label_map: Path) -> None:
        try:
            results[name] = _generate(_client(server), rgb, label_map)[1]
        except Exception as err:  # reported below
            results[name] = err

    threads = [threading.Thread(target=run, args=("five", seg)), threading.Thread(target=run, args=("three", three))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(isinstance(r, Exception) for r in results.values()), results
    assert len(_instances(results["five"][1])) == 5
    assert len(_instances(results["three"][1])) == 3
    assert results["five"][1] != results["three"][1]


@pytest.mark.parametrize("case", ["not-an-image", "too-many-bytes", "too-many-pixels", "wrong-size-labels"])
def test_bad_uploads_get_a_clear_message_and_the_demo_keeps_serving(case, server, example, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    rgb, seg = example
    client = _client(server)
    if case == "not-an-image":
        bad = tmp_path / "notes.png"
        bad.write_text("this is text, not a picture")
        args, expected = (handle_file(str(bad)), "automatic", None, "", ""), "notes.png: not an image"
    elif case == "too-many-bytes":  # refused by Gradio's upload limit before our code runs
        bad = tmp_path / "huge.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (800, 800, 3), dtype=np.uint8)).save(bad)
        args, expected = (handle_file(str(bad)), "automatic", None, "", ""), "huge.png exceeds the maximum file size"
    elif case == "too-many-pixels":
        bad = tmp_path / "wide.png"
        Image.new("RGB", (1500, 40), "white").save(bad)
        args, expected = (handle_file(str(bad)), "automatic", None, "", ""), \
            "wide.png: image of 1500x40 pixels exceeds the 1024-pixel side limit"
    else:
        bad = tmp_path / "small_seg.png"
        Image.open(seg).resize((64, 64), Image.NEAREST).save(bad)
        args, expected = (handle_file(str(rgb)), "label map", handle_file(str(bad)), "", ""), \
            "small_seg.png: label map is 64x64 but the image is"
    with pytest.raises(Exception) as caught:
        client.predict(*args, api_name="/segment")
    assert isinstance(caught.value, (AppError, ValueError))
    assert expected in str(caught.value)
    assert _generate(client, rgb, seg)[0] == "5 instance(s)"  # still serving


def test_sequential_generations_leave_no_temporary_files_behind(server, example):
    client = _client(server)
    work = Path(server["work"])

    def files() -> int:
        return sum(1 for p in work.rglob("*") if p.is_file())

    for seed in range(4):  # more than a session keeps (SessionFolders.keep = 3)
        _generate(client, *example, seed=seed)
    bounded = files()
    for seed in range(4, 7):
        _generate(client, *example, seed=seed)
    assert files() <= bounded  # each session keeps its 3 latest results, no more (older ones may also expire)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (scripts/setup.sh installs it)")
def test_browser_upload_generate_view_download(server, example):
    from playwright.sync_api import expect, sync_playwright

    from midi3d.demo.browser import generate_in_page, launch_browser

    rgb, seg = example
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = launch_browser(playwright, CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            generate_in_page(page, server["url"], rgb, seg)
            link = page.locator("#scene-download a").first
            href = link.get_attribute("href")
            body = page.request.get(href if href.startswith("http") else server["url"].rstrip("/") + href).body()
            glb = ARTIFACTS / "browser-scene.glb"
            glb.write_bytes(body)
            assert _instances(str(glb)) == [f"instance_{i}" for i in range(1, 6)]
            page.screenshot(path=str(ARTIFACTS / "demo-browser.png"), full_page=True)

            # A bad upload shows its message in the page, and the server keeps serving a new page.
            bad = ARTIFACTS / "not-an-image.png"
            bad.write_text("plain text")
            page.reload()
            page.locator("#image-file input[type=file]").set_input_files(str(bad))
            expect(page.get_by_text("not-an-image.png: not an image").first).to_be_visible(timeout=30_000)
        finally:
            browser.close()


SMALL_LAYOUT = """size: [96, 64]
prompt: a living room with a sofa and a lamp
instances:
  - box: [5, 10, 50, 60]
    description: a red sofa
    category: sofa
  - box: [60, 5, 90, 40]
    description: a white lamp
"""


@pytest.fixture(scope="module")
def layout_server(tmp_path_factory):
    from tiny_flux import build_tiny_flux

    from midi3d.demo.app import DemoConfig, launch
    from midi3d.demo.session import DemoLimits
    from midi3d.models.factory import PipelineSpec, build_pipeline

    pipe = build_pipeline(PipelineSpec(**TEST_SPEC))
    pipe.set_progress_bar_config(disable=True)
    flux = build_tiny_flux(tmp_path_factory.mktemp("flux") / "tiny-flux")
    config = DemoConfig(DemoLimits(max_upload_mb=0.5, max_side=1024, max_instances=8, queue_size=4),
                        work_dir=tmp_path_factory.mktemp("layout-work"), resolution=64, image_model=flux,
                        image_steps=2)
    port = _free_port()
    page = launch(config, host="127.0.0.1", port=port, prevent_thread_lock=True, pipe=pipe)
    yield {"url": f"http://127.0.0.1:{port}/", "page": page}
    page.close()


def test_the_layout_tab_composes_an_image_that_then_generates(layout_server):
    from gradio_client import handle_file

    client = _client(layout_server)
    composed, overlay, status, image, mode, label_file, current = client.predict(SMALL_LAYOUT, "3dis", 0,
                                                                                 api_name="/compose")
    assert Image.open(composed).size == (96, 64) and mode == "label map"
    assert set(np.unique(np.asarray(Image.open(current)))) == {0, 1, 2}
    assert "layout boxes" in status
    viewer, scene_glb, download, summary, _ = client.predict(handle_file(image), handle_file(current), 2, 3.0, 1,
                                                             "default", "default", api_name="/generate")
    assert summary.startswith("2/2 instances")
    with pytest.raises(Exception, match="masks are not accepted"):
        client.predict(SMALL_LAYOUT.replace("category: sofa", "mask: /etc/passwd"), "3dis", 0, api_name="/compose")
    with pytest.raises(Exception, match="zero area"):
        client.predict(SMALL_LAYOUT.replace("[5, 10, 50, 60]", "[5, 10, 5, 60]"), "3dis", 0, api_name="/compose")


def test_the_layout_tab_says_when_there_is_no_image_model(server):
    with pytest.raises(Exception, match="no image model"):
        _client(server).predict(SMALL_LAYOUT, "3dis", 0, api_name="/compose")
