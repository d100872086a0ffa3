"""The demo's library side without a browser: session folders, messages, segmentation results."""

from __future__ import annotations

import numpy as np
import pytest

from midi3d.demo.app import public_message
from midi3d.demo.backend import DemoBackend, DemoConfig
from midi3d.demo.session import DemoLimits, SessionFolders
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
