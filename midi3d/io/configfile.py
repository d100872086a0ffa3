"""Reading YAML configuration files safely."""

from __future__ import annotations

from pathlib import Path

import yaml


def read_yaml(source: str | Path, text: str | None = None):
    """Plain YAML data (``yaml.safe_load``: tags such as ``!!python/object`` are refused, never
    constructed); errors are one line naming ``source``."""
    try:
        return yaml.safe_load(Path(source).read_text() if text is None else text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{source}: invalid YAML{where} ({problem})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{source}: unreadable config ({err})") from None


def validation_message(err, source: str) -> str:
    """The first problem of a pydantic ``ValidationError`` as one line:
    ``SOURCE: key: message (got VALUE)[; N more problem(s)]``."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "config"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    got = "" if first["type"] == "missing" else f" (got {first.get('input')!r})"
    more = f"; {len(err.errors()) - 1} more problem(s)" if len(err.errors()) > 1 else ""
    return f"{source}: {key}: {message}{got}{more}"
