"""The run's typed config: one frozen dataclass per stage, composed, with a stable hash.

Precedence: stage defaults (Magma's video setting) < the source manifest's ``defaults`` < CLI
options. The hash covers everything that changes the bytes of the output and nothing that does
not (batch sizes, devices, addresses), so a resumed run on other hardware continues the same
dataset while a run with other settings is refused in the same folder.

Every field declares its type and allowed range once, beside its default in the stage's config
(``window_len: Annotated[int, Ge(2)] = 16``). A ``RunConfig`` checks every field when it is
made, and ``with_overrides`` converts what it is given to the field's type (pydantic, in its lax
mode: ``"2"`` or ``2.0`` is an int, ``"maybe"`` is no bool), so a value that cannot work is refused
before any work, by the CLI's options, ``--set``, a manifest and a Python caller alike.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import annotated_types
import pydantic

from magma_data.sink import SinkConfig
from magma_data.stages.action_tokens import ActionConfig
from magma_data.stages.base import OneOf
from magma_data.stages.camera import CameraConfig
from magma_data.stages.decode import DecodeConfig
from magma_data.stages.marks import MarksConfig
from magma_data.stages.plan import PlanConfig
from magma_data.stages.released_traces import ReleasedConfig
from magma_data.stages.render import RenderConfig
from magma_data.stages.track import TrackConfig, tracks_from_source

#: Fields that change how fast a run goes, not what it writes.
NOT_HASHED = {"track": {"batch_size", "device", "checkpoint"}}


@dataclass(frozen=True)
class RunConfig:
    pipeline: str = "video_tom"
    source: str = "sample"
    seed: Annotated[int, annotated_types.Ge(0)] = 0  # every random choice derives from (seed, sample_id, purpose)
    #: stop planning after this many windows (quick looks at big sources)
    limit: Annotated[int, annotated_types.Ge(1)] | None = None
    plan: PlanConfig = field(default_factory=PlanConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    marks: MarksConfig = field(default_factory=MarksConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    action: ActionConfig = field(default_factory=ActionConfig)  # robot pipelines only
    released: ReleasedConfig = field(default_factory=ReleasedConfig)  # Magma's released traces only
    sink: SinkConfig = field(default_factory=SinkConfig)
    tracker_weights: str = ""  # digest of the tracker's weights (stages.track.resolve_tracker), when it has any

    def __post_init__(self):
        _check_fields(self, "")
        for section in _sections():
            _check_fields(getattr(self, section), f"{section}.")

    def with_overrides(self, overrides: dict[str, dict[str, Any]]) -> RunConfig:
        """A copy with ``{section: {field: value}}`` applied; unknown names are errors, not typos ignored."""
        changes = {}
        for section, values in overrides.items():
            current = getattr(self, section, None)
            if not dataclasses.is_dataclass(current):
                raise ValueError(f"unknown config section {section!r}; sections: {', '.join(_sections())}")
            changes[section] = _replace_typed(current, values, section)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """The config ``to_dict`` gave (``.magma/<source>/config.json``)."""
        top = {name: value for name, value in data.items() if not isinstance(value, dict)}
        return cls(**top).with_overrides({name: value for name, value in data.items() if isinstance(value, dict)})

    def hash(self) -> str:
        data = self.to_dict()
        for section, names in NOT_HASHED.items():
            for name in names:
                data[section].pop(name, None)
        if not tracks_from_source(self.track):  # only runs on released traces read the section
            data.pop("released")
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig) if f.default_factory is not dataclasses.MISSING]


def _replace_typed(current: Any, values: dict[str, Any], section: str) -> Any:
    hints = _hints(type(current))
    typed = {}
    for name, value in values.items():
        if name not in hints:
            raise ValueError(f"unknown option {section}.{name}; {section} has: {', '.join(sorted(hints))}")
        typed[name] = _validated(hints[name], value, f"{section}.{name}")
    return dataclasses.replace(current, **typed)


class ConfigValueError(ValueError):
    """A value its config field does not take: the message names the field, its type and range, and the value."""

    def __init__(self, field_name: str, expected: str, value: Any):
        super().__init__(f"{field_name} takes {expected}, not {value!r}")
        self.field_name = field_name


def _check_fields(config: Any, prefix: str) -> None:
    for name, hint in _hints(type(config)).items():
        _validated(hint, getattr(config, name), prefix + name)


def _validated(hint: Any, value: Any, field_name: str) -> Any:
    """``value`` as the field's type (``[2, 4]`` -> ``(2, 4)``, ``30`` -> ``30.0``), or ``ConfigValueError``."""
    try:
        return _adapter(hint).validate_python(value)
    except pydantic.ValidationError:
        raise ConfigValueError(field_name, expected(hint), value) from None


@functools.cache
def _hints(config_type: type) -> dict[str, Any]:
    return typing.get_type_hints(config_type, include_extras=True)


@functools.cache
def _adapter(hint: Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(hint)


def expected(hint: Any) -> str:
    """What a field takes, in words: ``an integer >= 2``, ``true or false``, ``one of fp32, bf16``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        choices = next((rule for rule in hint.__metadata__ if isinstance(rule, OneOf)), None)
        if choices is not None:
            return "one of " + ", ".join(choices.choices())
        size = next((rule for rule in hint.__metadata__ if isinstance(rule, annotated_types.Len)), None)
        words = _list_words(args[0], size.min_length) if size else expected(args[0])
        return "".join([words, *(_limit(rule) for rule in hint.__metadata__ if rule is not size)])
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if arg is type(None) else expected(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(str(arg) for arg in args)
    if origin is tuple:
        return _list_words(hint, None if args[-1] is Ellipsis else len(args))
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(hint, str(hint))


def _list_words(hint: Any, size: int | None) -> str:
    item = typing.get_args(hint)[0]
    return f"a list of {size} items, each {expected(item)}" if size else f"a list, each item {expected(item)}"


def _limit(rule: Any) -> str:
    """One annotated_types rule in words: `` >= 2``, `` from 0 to 1``, ``, with low <= high``."""
    if isinstance(rule, annotated_types.Predicate):
        return f", with {(rule.func.__doc__ or rule.func.__name__).strip()}"
    symbols = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
    bounds = {symbol: getattr(rule, name, None) for name, symbol in symbols}
    if bounds[">="] is not None and bounds["<="] is not None:
        return f" from {bounds['>=']} to {bounds['<=']}"
    return " and".join(f" {symbol} {bound}" for symbol, bound in bounds.items() if bound is not None) or f" {rule}"


def parse_assignments(assignments: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``("marks.moving_threshold_px=2", ...)`` -> ``{"marks": {"moving_threshold_px": 2}}`` (YAML values)."""
    import yaml

    overrides: dict[str, dict[str, Any]] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"--set expects section.field=value, got {assignment!r}")
        overrides.setdefault(section, {})[name] = yaml.safe_load(raw)
    return overrides
