"""Atomic file writes: a file appears under its final name complete, or not at all."""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from .errors import OutputError


def temporary_sibling(path: Path) -> Path:
    """A fresh, not yet existing name next to ``path`` for writing before an atomic rename."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to ``path`` through a temporary file in the same folder, then rename.

    The file gets the usual permissions (``0o666`` minus the umask), unlike ``mkstemp``'s 0600.
    On any failure nothing is left under either name; an :class:`OSError` (no permission, full
    disk) becomes an :class:`~midi3d.io.errors.OutputError` naming ``path``.
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        _remove_quietly(tmp)
        if isinstance(err, OSError):
            raise output_error(path, err) from None
        raise


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # e.g. a read-only file system, where nothing was created anyway
        pass


def output_error(path: Path, err: OSError):
    """The one-line :class:`~midi3d.io.errors.OutputError` for a failed write of ``path``."""
    reason = err.strerror or type(err).__name__
    return OutputError(f"{path}: cannot write ({reason})")


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be written there (before long work starts)."""
    folder = Path(folder)
    probe = temporary_sibling(folder / "write-probe")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:
        raise output_error(folder, err) from None
    probe.unlink()


def replace_folder(staged: Path, target: Path) -> None:
    """Put the finished folder ``staged`` at ``target`` (same file system). An existing ``target``
    is renamed away first and removed afterwards, so it is never seen half-replaced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        backup = temporary_sibling(target)
        target.rename(backup)
        staged.rename(target)
        shutil.rmtree(backup)
    else:
        staged.rename(target)


def write_folder_atomic(folder: Path, fill: Callable[[Path], None]) -> None:
    """Let ``fill`` write a temporary sibling folder, then swap it in for ``folder``; on any
    failure the temporary is removed and ``folder`` is left as it was."""
    folder = Path(folder)
    tmp = temporary_sibling(folder)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporaries (``.NAME.<12 hex>.tmp`` files or folders) that a killed writer left
    in ``folder``; returns how many. Only names of exactly that pattern are touched."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.iterdir() if _TEMPORARY.match(p.name)]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            _remove_quietly(path)
    return len(stale)
