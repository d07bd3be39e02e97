"""The run's typed config: one frozen dataclass per stage, composed, with a stable hash.

Precedence: stage defaults (Magma's video setting) < the source manifest's ``defaults`` < CLI
options. The hash covers everything that changes the bytes of the output and nothing that does
not (batch sizes, devices, addresses), so a resumed run on other hardware continues the same
dataset while a run with other settings is refused in the same folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Any

from magma_data.sink import SinkConfig
from magma_data.stages.action_tokens import ActionConfig
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
    seed: int = 0  # every random choice derives from (seed, sample_id, purpose)
    limit: int | None = None  # stop planning after this many windows (quick looks at big sources)
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
    hints = typing.get_type_hints(type(current))
    names = {f.name for f in dataclasses.fields(current)}
    typed = {}
    for name, value in values.items():
        if name not in names:
            raise ValueError(f"unknown option {section}.{name}; {section} has: {', '.join(sorted(names))}")
        if isinstance(value, list) and "tuple" in str(hints[name]):
            value = tuple(value)
        typed[name] = value
    return dataclasses.replace(current, **typed)


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
