"""The demo's library side without a browser: session folders, messages, segmentation results."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from midi3d.demo.app import public_message
from midi3d.demo.backend import DemoBackend, DemoConfig
from midi3d.demo.session import DemoLimits, SessionFolders, expire_tracked_files
from midi3d.io.errors import InputError


def test_a_session_keeps_its_latest_results_while_the_next_one_runs(tmp_path):
    """Concurrent requests of one session: the result already reported stays downloadable."""
    folders = SessionFolders.create(tmp_path)
    made = []
    for _ in range(5):
        folder = folders.fresh("session-a")
        (folder / "scene.glb").write_bytes(b"glb")
        made.append(folder)
    assert [f.is_dir() for f in made] == [False, False, True, True, True]
    other = folders.fresh("session-b")
    assert other.is_dir() and made[-1].is_dir()  # sessions do not touch each other
    import os

    for folder in made[2:4]:  # results older than the cache time go, the newest of each session stays
        os.utime(folder, (0, 0))
    assert folders.expire(60) == 2
    assert [f.is_dir() for f in made] == [False, False, False, False, True] and other.is_dir()
    folders.release("session-a")
    assert not any(f.exists() for f in made) and other.is_dir()


def test_page_messages_never_show_server_folders():
    assert public_message("/tmp/gradio/0af3/room_seg.png: label map is 3x4") == "room_seg.png: label map is 3x4"
    assert public_message("cannot write '/srv/midi3d/work/a/b.glb' (full)") == "cannot write 'b.glb' (full)"
    assert public_message("steps must be between 1 and 100, got 500") == "steps must be between 1 and 100, got 500"


def test_segmentation_that_finds_nothing_is_an_error(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((40, 40, 3), 255, np.uint8)).save(tmp_path / "blank.png")  # nothing on white
    backend = DemoBackend(DemoConfig(DemoLimits(), work_dir=tmp_path / "work"), pipe=object())
    with pytest.raises(InputError, match="found no object"):
        backend.segment_page("s", str(tmp_path / "blank.png"), "automatic", None, "", "")


def test_tracked_uploads_expire_even_while_new_uploads_arrive(tmp_path):
    """Gradio's own clean-up iterates its file sets as uploads add to them and dies at the first
    clash; the demo's sweeper copies each set first, removes only old files, keeps the kept ones."""
    old = [tmp_path / f"old-{i}.png" for i in range(2000)]
    for path in old:
        path.write_bytes(b"x")
    time.sleep(1.5)
    fresh, kept, gone = tmp_path / "fresh.png", old[0], tmp_path / "gone.png"
    fresh.write_bytes(b"x")
    uploads = {str(path) for path in old} | {str(fresh), str(gone)}
    stop = threading.Event()

    def upload_loop() -> None:  # uploads arriving meanwhile (never older than the limit)
        i = 0
        while not stop.is_set():
            path = tmp_path / f"new-{i}.png"
            path.write_bytes(b"x")
            uploads.add(str(path))
            i += 1

    uploader = threading.Thread(target=upload_loop)
    uploader.start()
    try:
        removed = expire_tracked_files([uploads], keep={str(kept)}, older_than_s=0.75)
    finally:
        stop.set()
        uploader.join()
    assert removed == len(old) - 1
    assert not any(path.exists() for path in old[1:]) and not any(str(path) in uploads for path in old[1:])
    assert kept.exists() and str(kept) in uploads
    assert fresh.exists() and str(fresh) in uploads
    assert str(gone) not in uploads  # already gone from disk: forgotten
    arrived = sorted(str(path) for path in tmp_path.glob("new-*.png"))
    assert arrived and set(arrived) <= uploads  # fresh: all still tracked


def test_layout_canvas_adds_boxes_from_two_clicks_and_draws_them():
    import yaml

    from midi3d.compose import layout_from_data
    from midi3d.demo.layout_canvas import add_box, draw_layout
    from midi3d.io.errors import InputError

    text = "size: [1024, 512]\nprompt: a room\ninstances: []\n"
    canvas = draw_layout(text)
    assert canvas.shape == (256, 512, 3) and (canvas == 255).all()  # scaled to 512 wide, blank
    text = add_box(text, (300, 200), (100, 50), "a red sofa")  # corners in either order, canvas pixels
    data = yaml.safe_load(text)
    assert data["instances"] == [{"box": [200, 100, 600, 400], "description": "a red sofa"}]  # layout pixels
    layout = layout_from_data(data)
    assert layout.instances[0].box == (200 / 1024, 100 / 512, 600 / 1024, 400 / 512)
    drawn = draw_layout(text)
    assert (drawn[50, 150:250] != 255).any(-1).all()  # the box's top edge: layout row 100 = canvas row 50
    assert (drawn[120, 200] == 255).all()  # an outline, not a fill
    with pytest.raises(InputError, match="description"):
        add_box(text, (0, 0), (10, 10), " ")
    normalized = add_box("size: [256, 256]\nprompt: x\nunits: normalized\ninstances: []\n", (0, 0), (128, 64), "a")
    assert yaml.safe_load(normalized)["instances"][0]["box"] == [0.0, 0.0, 0.5, 0.25]
