"""Output names taken from input files (scene names, room ids) must stay inside their folder."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError

_FORBIDDEN = set('/\\\x00')


def safe_name(name: str, source: str | Path) -> str:
    """``name`` if it is usable as one file name inside a folder, else :class:`InputError`.

    Refused: empty names, ``.`` and ``..``, path separators, NUL and other control characters.
    ``source`` is the file the name came from (for the message).
    """
    if not isinstance(name, str) or not name or name in (".", "..") or any(
            c in _FORBIDDEN or ord(c) < 32 for c in name):
        raise InputError(f"{source}: name {name!r} cannot be used as a file name (path separators, "
                         "'..' or control characters)")
    return name


def child_path(folder: str | Path, name: str, source: str | Path) -> Path:
    """``folder / name`` after checking that it cannot leave ``folder``."""
    folder = Path(folder)
    path = folder / safe_name(name, source)
    if path.resolve().parent != folder.resolve():  # e.g. a symlinked name: still refuse to leave
        raise InputError(f"{source}: output name {name!r} would leave {folder}")
    return path


def relative_inside(root: str | Path, relative: str, source: str | Path) -> Path:
    """``root / relative`` for a relative path read from a dataset file (e.g. ``house/room``),
    refusing absolute paths and ``..`` components that would leave ``root``."""
    if not isinstance(relative, str):
        raise InputError(f"{source}: entry {relative!r} is not a path")
    parts = relative.replace("\\", "/").split("/")
    if relative.startswith(("/", "\\")) or any(p in ("", ".", "..") for p in parts) or any(
            ord(c) < 32 for c in relative):
        raise InputError(f"{source}: entry {relative!r} is not a relative path inside {root}")
    return Path(root).joinpath(*parts)


def refuse_overwriting_inputs(output: str | Path, *inputs: str | Path | None) -> None:
    """:class:`InputError` when ``output`` is one of ``inputs`` (the same file, through any path)."""
    target = Path(output).resolve()
    for source in inputs:
        if source is not None and Path(source).resolve() == target:
            raise InputError(f"{output}: is also an input ({source}); choose another output name")
