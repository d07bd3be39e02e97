"""What a source hands the planner: clips of real videos, or problems that say why a unit is unusable.

A source reads a dataset in place, from its own metadata (narrations, segment CSVs, label JSON,
a folder walk). It never decodes frames; it only says which span of which video is a clip and
what text goes with it. Anything it cannot turn into a clip comes out as a ``ClipProblem`` so the
run records it instead of losing it: in the errors table, or in the filtered table when a rule of
the recipe (Magma's Ego4D verb filter) dropped it on purpose.

A reader subclasses the protocol of what it supplies, so the pipelines and ``magma-data check``
ask its type, never probe its attributes: ``Source`` (video clips), ``TracesSource`` (windows
that come with their tracks) or ``RobotSource`` (episodes: ``magma_data.sources.robot``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from magma_data.dropped import ERROR, Dropped, dropped_unit

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi")


@dataclass(frozen=True)
class Clip:
    """A span of one video with its text; the planner cuts it into windows."""

    clip_id: str  # unique and stable within the source; part of every window's unit id
    video_uid: str  # the source's own id for the whole video
    video_path: str  # absolute path inside the source root (rows store it relative to the root)
    task: str = ""  # narration / label / instruction; "" when the source has none
    start_sec: float | None = None  # span inside the video; None = from the start
    end_sec: float | None = None  # None = to the end
    fps: float | None = None  # from metadata when the source records it; probed otherwise
    num_frames: int | None = None
    #: the source's own fields (narration pass, template, verb...), kept for inspection; rows do not
    #: carry them, since every source's rows share one schema
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClipProblem:
    """A unit the source did not turn into a clip: a problem (missing video, unusable metadata row),
    or with ``kind`` "filtered" a unit a rule of the recipe drops, ``error_class`` naming the rule
    and ``value`` the figure it judged (a span's length), if any."""

    unit_id: str
    error_class: str
    message: str
    video_path: str = ""
    kind: Literal["error", "filtered"] = ERROR
    value: float | None = None

    def planned(self, source: str) -> dict:
        """The planned unit that stands for this problem: it goes straight to the errors or filtered table."""
        dropped = Dropped(self.kind, "plan", self.error_class, self.message, value=self.value)
        return dropped_unit(self.unit_id, source, dropped, video_path=self.video_path)


class Source(Protocol):
    """A dataset read in place: every unit in a stable order, and where its videos may lie."""

    name: str  # the manifest's name, given to the reader by ``open_source``
    root: Path  # the folder it reads (absolute); its videos lie inside it, unless ``video_roots`` says otherwise
    #: what ``magma-data check`` calls the units
    unit_kind: ClassVar[str] = "clips"

    def clips(self) -> Iterator[Any]:
        """Every unit of the source, in a stable order: ``Clip`` (or the unit its protocol names) or ``ClipProblem``."""
        ...

    def video_roots(self) -> list[Path]:
        """The folders the source's videos must lie in, and rows name them relative to: its root, unless
        the source reads them elsewhere."""
        return [self.root]


@dataclass
class Coverage:
    """Of a dataset's records read so far: how many, how many found their video, the videos missing."""

    records: int = 0
    found: int = 0
    missing_videos: set[str] = field(default_factory=set)


@runtime_checkable
class TracesSource(Source, Protocol):
    """A source whose windows come with their tracks (Magma's released traces): the pipeline reads
    them instead of tracking, and ``check`` reports how many records found their video."""

    unit_kind: ClassVar[str] = "records"

    def coverage(self) -> Mapping[str, Coverage]:
        """Per dataset of the records read so far (``clips`` fills it as it goes)."""
        ...


class PathEscapesRoot(ValueError):
    """A manifest or metadata path points outside ``--root``."""


def resolve_inside(root: Path, relative: str | Path) -> Path:
    """Join ``relative`` to ``root`` and refuse the result when it escapes the root.

    Metadata files are input like any other: a ``../../etc/passwd`` in a CSV must not be read.
    """
    root = root.resolve()
    candidate = (root / relative).resolve()
    if candidate != root and root not in candidate.parents:
        raise PathEscapesRoot(
            f"{relative!s} resolves to {candidate}, outside the source root {root}; "
            "fix the metadata or pass the right --root"
        )
    return candidate


def relative_video_paths(units: list[dict], roots: list[Path]) -> list[dict]:
    """The units with each ``video_path`` relative to the first of ``roots`` that holds it, as rows
    store it: a dataset pushed to the Hub names no folder of the machine that made it, and the same
    data read from another folder makes the same rows. Messages name those files the same way."""
    folders = [form for root in roots for form in dict.fromkeys((Path(root), Path(root).resolve()))]
    relative = []
    for unit in units:
        path, message = unit.get("video_path") or "", unit.get("drop_message") or ""
        changed = {}
        folder = next((f for f in folders if path and Path(path).is_absolute() and Path(path).is_relative_to(f)), None)
        if folder is not None:
            changed["video_path"] = Path(path).relative_to(folder).as_posix()
        for prefix in (f"{folder}{os.sep}" for folder in folders):
            if prefix in message:
                message = changed["drop_message"] = message.replace(prefix, "")
        relative.append({**unit, **changed} if changed else unit)
    return relative


def video_file(video_path: str, roots: Sequence[str | Path]) -> Path:
    """The file a row's ``video_path`` names: a relative one under the first of ``roots`` that holds
    it (the first root when none does, so an error says where it was looked for); an absolute one,
    as rows made before paths were relative hold, as it is."""
    path = Path(video_path)
    if path.is_absolute() or not roots:
        return path
    candidates = [Path(root) / path for root in roots]
    return next((candidate for candidate in candidates if candidate.exists()), candidates[0])


def refuse_paths_outside(units: list[dict], roots: list[Path]) -> list[dict]:
    """Units whose video lies outside every one of ``roots`` (a ``..`` in metadata, a symlink out) become
    plan errors.

    Defence in depth: every source checks its own paths, and the runner checks every planned one.
    """
    inside: dict[str, str | None] = {}
    checked = []
    for unit in units:
        path = unit.get("video_path") or ""
        if unit.get("drop_kind") or not path:
            checked.append(unit)
            continue
        if path not in inside:
            inside[path] = _outside_all(path, roots)
        if inside[path] is None:
            checked.append(unit)
        else:
            checked.append({**unit, **Dropped(ERROR, "plan", "PathEscapesRoot", inside[path]).columns()})
    return checked


def _outside_all(path: str, roots: list[Path]) -> str | None:
    """Why ``path`` is in none of ``roots``, or None."""
    errors = []
    for root in roots:
        try:
            resolve_inside(root, path)
            return None
        except PathEscapesRoot as error:
            errors.append(str(error))
    return "; ".join(errors)
