"""Instance-control settings as validated data: a YAML file, a preset name or a mapping.

Step ranges are fractions of the run: a rule with ``until: u`` acts on the first ``ceil(u * n)``
of ``n`` steps (see :func:`~midi3d.control.schedule.active_steps`), so one file means the same
thing at 25 and at 50 steps.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..io.configfile import read_yaml, validation_message
from ..models.layer_spec import check_layer_spec

Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Place = Literal["instances", "image"]
MI_LAYERS = "mi"  # the layers whose self-attention is multi-instance


def _check_layers(value):
    if isinstance(value, str) and value.strip().lower() == MI_LAYERS:
        return MI_LAYERS
    check_layer_spec(value)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Rule(_Strict):
    place: Place              # "instances": MI self-attention; "image": DINOv2 cross-attention
    layers: str | list[int] = MI_LAYERS  # "mi" (the MI layers), or the layer grammar ("all", "2-4", …)

    _layers = field_validator("layers")(classmethod(lambda cls, value: _check_layers(value)))


class ReweightRule(_Rule):
    """AST's specialty tuning on one place: ``P <- rownorm(P * exp(s * w * tau * (M - P)))``.

    ``M`` is 1 on the ``target`` keys: ``own`` = the query's own instance (its tokens, for
    ``instances``; the condition's patches inside its mask and the class token, for ``image``),
    ``others`` = the rest. ``tau = (t / 1000) ** decay``; ``s = 1 - own area / total`` when
    ``size_factor`` (else 1). A negative ``weight`` pushes away from the target.
    """

    weight: Annotated[float, Field(allow_inf_nan=False)]
    target: Literal["own", "others"] = "own"
    start: Fraction = 0.0
    until: Fraction = 0.5
    decay: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] = 3.0
    size_factor: bool = True

    @model_validator(mode="after")
    def _ordered(self):
        if self.until < self.start:
            raise ValueError(f"until ({self.until}) is before start ({self.start})")
        return self


class IsolationRule(_Rule):
    """3DIS's hard masks on one place until a step threshold: an instance's queries see only
    their own instance's tokens (``instances``) or only the condition's patches inside their
    mask and the class token (``image``)."""

    until: Fraction


class ControlConfig(_Strict):
    """Every instance control of one generation; the defaults change nothing."""

    grounding_ratio: Fraction = 1.0  # MI attention only in the first ceil(ratio * n) steps
    grounding_layers: str | list[int] = MI_LAYERS
    reweight: tuple[ReweightRule, ...] = ()
    isolation: tuple[IsolationRule, ...] = ()
    max_chunk_elements: Annotated[int, Field(ge=1024)] = 2**25  # reweighting: probabilities held at once

    _layers = field_validator("grounding_layers")(classmethod(lambda cls, value: _check_layers(value)))

    def to_data(self) -> dict:
        """Plain data (for ``model_index.json``, summaries and YAML)."""
        return self.model_dump(mode="json")


def control_from_data(data: object, source: str) -> ControlConfig:
    """A validated config from plain data; ``ValueError`` with one line naming the key otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of control settings (got {type(data).__name__})")
    try:
        return ControlConfig.model_validate(data)
    except ValidationError as err:
        raise ValueError(validation_message(err, source)) from None


def _preset_folder():
    return resources.files("midi3d.configs").joinpath("control")


def control_presets() -> list[str]:
    """Names of the presets shipped in ``configs/control``."""
    return sorted(p.name.removesuffix(".yaml") for p in _preset_folder().iterdir() if p.name.endswith(".yaml"))


def load_control(spec: ControlConfig | dict | str | Path | None) -> ControlConfig | None:
    """A config from a config, a mapping, a YAML path or a preset name; ``None`` stays ``None``."""
    if spec is None or isinstance(spec, ControlConfig):
        return spec
    if isinstance(spec, dict):
        return control_from_data(spec, "control")
    path = Path(spec)
    if not path.is_file():
        preset = _preset_folder().joinpath(f"{str(spec).removesuffix('.yaml')}.yaml")
        if not preset.is_file():
            raise ValueError(f"{spec}: no such control file or preset (presets: {', '.join(control_presets())})")
        path = Path(str(preset))
    return control_from_data(read_yaml(path) or {}, str(path))
