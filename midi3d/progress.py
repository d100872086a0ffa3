"""The one progress mechanism: tqdm bars on stderr (the pipeline's own bars are diffusers' tqdm,
and the demo's ``gr.Progress(track_tqdm=True)`` follows them all)."""

from __future__ import annotations

from collections.abc import Iterable

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 disable: bool = False) -> tqdm:
    """A bar that disappears when done; ``disable`` is ``--quiet``."""
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, dynamic_ncols=True)


def say(message: str, bar: tqdm | None = None) -> None:
    """Print a line to stderr without breaking a running bar."""
    import sys

    tqdm.write(message, file=sys.stderr)
