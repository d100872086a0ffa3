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
