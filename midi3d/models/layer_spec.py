"""The one grammar for choosing transformer blocks (multi-instance layers), used by the CLI, the
training configs, the demo and the pipeline.

``"default"`` / ``None`` (the model's own choice), ``"all"``, ``"none"`` / ``"off"`` / ``[]``
(no block), ranges and lists: ``"8-12"``, ``"1,3"``, ``"1,4-6"``, or a list of integers.
"""

from __future__ import annotations

from collections.abc import Sequence

LayerSpec = str | Sequence[int] | None

ALL = "all"
GRAMMAR = "'default', 'all', 'none', a range '8-12', a list '1,3' or both '1,4-6'"


def parse_layer_list(spec: LayerSpec, num_layers: int | None = None) -> list[int] | None:
    """Block indices for ``spec``; ``None`` means the model's default.

    ``"all"`` needs ``num_layers`` (use :func:`check_layer_spec` to check the syntax before a
    model is loaded). Raises ``ValueError`` naming the grammar for anything else (a reversed or empty range, a
    negative index, an index ``>= num_layers``).
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("", "default"):
            return None
        if text in ("none", "off"):
            return []
        if text == ALL:
            if num_layers is None:
                raise ValueError("layers 'all': needs the model's number of blocks")
            return list(range(num_layers))
        layers = _parse_text(spec)
    else:
        if isinstance(spec, (bytes, dict)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
            raise ValueError(f"layers {spec!r}: expected {GRAMMAR}")
        layers = list(spec)
    if any(i < 0 for i in layers):
        raise ValueError(f"layers {spec!r}: block indices are >= 0")
    if num_layers is not None and any(i >= num_layers for i in layers):
        raise ValueError(f"layers {spec!r}: this transformer has blocks 0-{num_layers - 1}")
    return sorted(set(layers))


def _parse_text(text: str) -> list[int]:
    layers: list[int] = []
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise ValueError(f"layers {text!r}: empty item; expected {GRAMMAR}")
    for part in parts:
        low, sep, high = part.partition("-")
        try:
            if sep:
                first, last = int(low), int(high)
                if last < first:
                    raise ValueError
                layers.extend(range(first, last + 1))
            else:
                layers.append(int(part))
        except ValueError:
            raise ValueError(f"layers {text!r}: cannot read {part!r}; expected {GRAMMAR}") from None
    return layers


def check_layer_spec(spec: LayerSpec) -> None:
    """Raise ``ValueError`` if ``spec`` is not in the grammar (no model needed)."""
    if not (isinstance(spec, str) and spec.strip().lower() == ALL):
        parse_layer_list(spec)


def is_default(spec: LayerSpec) -> bool:
    """Whether ``spec`` asks for the model's own layers (``None``, ``""`` or ``"default"``)."""
    return spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "default"))
