"""One writer per output folder: an advisory lock file that a second run finds taken."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError

LOCK_NAME = ".midi3d.lock"


@contextlib.contextmanager
def folder_lock(folder: Path, command: str) -> Iterator[None]:
    """Hold ``folder/.midi3d.lock`` while ``command`` writes into ``folder``; another holder (a
    second run, or an earlier one still running) is refused with one line. The lock is released
    by the kernel when the process ends, so a killed run never leaves it taken."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{folder}: another {command} is writing here; wait for it or use another "
                             "output folder") from None
        yield
    finally:
        os.close(handle)
