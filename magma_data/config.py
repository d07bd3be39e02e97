"""The run's typed config: one frozen dataclass per stage, composed, with a stable hash.

Precedence: stage defaults (Magma's video setting) < the source manifest's ``defaults`` < CLI
options. The hash covers everything that changes the bytes of the output and nothing that does
not (batch sizes, devices, addresses, where the input lies), so a resumed run on other hardware,
or on the same data in another folder, continues the same dataset while a run with other
settings is refused in the same folder.

``.magma/<source>/config.json`` records the config with its format (``CONFIG_FORMAT``), as
LeRobot's ``meta/info.json`` records its ``codebase_version``. A field added later is registered
in ``ADDED`` with the value that makes the rows older configs made: a config.json written before
the field existed loads with that value, and a config holding that value hashes as it did before
the field existed, so its output folders stay resumable (a new stage's section whose default is
"off" changes no existing run's hash).

Every field declares its type and allowed range once, beside its default in the stage's config
(``window_len: Annotated[int, Ge(2)] = 16``). A ``RunConfig`` checks every field when it is
made, and ``with_overrides`` converts what it is given to the field's type (pydantic, in its lax
mode: ``"2"`` or ``2.0`` is an int, ``"maybe"`` is no bool), so a value that cannot work is refused
before any work, by the CLI's options, ``--set``, a manifest and a Python caller alike.
"""

from __future__ import annotations

import copy
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
from magma_data.stages.quality import QualityConfig
from magma_data.stages.released_traces import ReleasedConfig
from magma_data.stages.render import RenderConfig
from magma_data.stages.shots import ShotsConfig
from magma_data.stages.text_alignment import AlignmentConfig
from magma_data.stages.track import TrackConfig, tracks_from_source

#: Fields that change how fast a run goes or where its input lies, not what it writes (the
#: weights a checkpoint holds are hashed as their digest: ``tracker_weights``, ``alignment_weights``).
NOT_HASHED = ("track.batch_size", "track.device", "track.checkpoint", "alignment.checkpoint", "alignment.batch_size",
              "alignment.device", "root", "videos")

#: The format ``to_json`` writes. A config.json without ``format_version`` is format 1 (before
#: ``root`` and ``videos`` were recorded); format 3 added the curation sections, format 4 Magma's
#: shot-detector rules and its draw of the marked frame (``ADDED``); ``migrated`` reads every format
#: up to this one.
CONFIG_FORMAT = 4


@dataclass(frozen=True)
class Added:
    """A config field added after format 1: ``name`` is ``section.field``, a top-level field or a
    whole section; ``before`` is its value that makes the rows the configs before it made (for a
    section, that section's config object, e.g. one whose feature is off)."""

    name: str
    format: int  # the first config.json format that has it
    before: Any


#: Fields added since format 1, oldest first; a new field whose ``before`` value is not its
#: default still loads old folders right: their config.json lacks it and gets ``before``.
ADDED: tuple[Added, ...] = (
    # the curation stages (issue 18), each off before it existed
    Added("shots", 3, ShotsConfig()),
    Added("alignment", 3, AlignmentConfig()),
    Added("alignment_weights", 3, ""),
    Added("quality", 3, QualityConfig()),
    # PySceneDetect as 0.6 ran it for Magma (issue 24); shots made before it used 0.7's defaults
    Added("shots.filter_mode", 4, "merge"),
    Added("shots.downscale", 4, "exact"),
    # Magma's per-sample draw of the marked frame (issue 24); rows made before it mark frame 0
    Added("marks.frame_pos", 4, "first"),
    Added("marks.step_rightmost_ratio", 4, 0.5),
    # a tracker's input resolution (issue 26, TAPNext++'s 256 or 512); None: the tracker's own
    Added("track.resolution", 4, None),
)

#: Sections of stages a pipeline leaves out while they are off (``enabled`` false): their other
#: fields then change no row, so the hash leaves the whole section out.
OPTIONAL_SECTIONS = ("shots", "alignment", "quality")


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
    #: curation (off unless a manifest or the user turns them on): windows inside shots, CLIP
    #: text-frame alignment before tracking, quality rules after it
    shots: ShotsConfig = field(default_factory=ShotsConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    tracker_weights: str = ""  # digest of the tracker's weights (stages.track.resolve_tracker), when it has any
    #: digest of the CLIP weights (stages.text_alignment.checkpoint_digest), when alignment is on
    alignment_weights: str = ""
    #: the folder the source was read from (``--root``, or the release found inside it); rows name
    #: their video relative to it (``video_file``). Set by the run, not hashed.
    root: str | None = None
    #: the folders of the user's videos (``--videos``) when the source takes them: rows name their
    #: video relative to the first of them that holds it. Set by the run, not hashed.
    videos: tuple[str, ...] = ()

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

    def to_json(self) -> str:
        """``.magma/<source>/config.json``: every field, and the format it is written in."""
        return json.dumps({"format_version": CONFIG_FORMAT, **self.to_dict()}, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """The config ``to_dict`` or ``to_json`` gave, of any format up to ``CONFIG_FORMAT``."""
        data = migrated(data)
        hints = _hints(cls)
        top = {name: _validated(hints[name], value, name) if name in hints else value
               for name, value in data.items() if not isinstance(value, dict)}
        return cls(**top).with_overrides({name: value for name, value in data.items() if isinstance(value, dict)})

    def hashed(self) -> dict[str, Any]:
        """What the hash covers: every field that changes what the run writes, as it was written
        before later fields were added (an ``ADDED`` field at its ``before`` value is left out)."""
        data = self.to_dict()
        for name in NOT_HASHED:
            _pop(data, name)
        if not tracks_from_source(self.track):  # only runs on released traces read the section
            data.pop("released")
        for section in OPTIONAL_SECTIONS:
            if not getattr(self, section).enabled:
                data.pop(section)
        for added in ADDED:
            if _get(data, added.name) == _plain(added.before):
                _pop(data, added.name)
        return data

    def hash(self) -> str:
        canonical = json.dumps(self.hashed(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def video_roots(self) -> tuple[str, ...]:
        """The folders a row's relative ``video_path`` is under, in the order they are tried."""
        return self.videos or ((self.root,) if self.root else ())


def migrated(data: dict[str, Any]) -> dict[str, Any]:
    """A config.json's content in the current format: the fields added since its format take the
    value that makes the rows it made (``ADDED``)."""
    data = copy.deepcopy(data)
    version = data.pop("format_version", 1)
    if not isinstance(version, int) or version > CONFIG_FORMAT:
        raise ValueError(f"the config is format {version!r}, newer than this magma-data reads ({CONFIG_FORMAT}); "
                         "upgrade magma-data to read it")
    for added in ADDED:
        if added.format > version and _get(data, added.name) is _MISSING:
            _set(data, added.name, _plain(added.before))
    return data


_MISSING = object()


def _get(data: dict[str, Any], name: str) -> Any:
    section, _, key = name.rpartition(".")
    holder = data.get(section, {}) if section else data
    return holder.get(key, _MISSING) if isinstance(holder, dict) else _MISSING


def _set(data: dict[str, Any], name: str, value: Any) -> None:
    section, _, key = name.rpartition(".")
    (data.setdefault(section, {}) if section else data)[key] = value


def _pop(data: dict[str, Any], name: str) -> None:
    section, _, key = name.rpartition(".")
    (data.get(section, {}) if section else data).pop(key, None)


def _plain(value: Any) -> Any:
    """``value`` as ``to_dict`` holds it: a config section as a dict."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


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
