"""What a source hands the planner: clips of real videos, or problems that say why a unit is unusable.

A source reads a dataset in place, from its own metadata (narrations, segment CSVs, label JSON,
a folder walk). It never decodes frames; it only says which span of which video is a clip and
what text goes with it. Anything it cannot turn into a clip comes out as a ``ClipProblem`` so the
run records it in the errors table instead of losing it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi")


@dataclass(frozen=True)
class Clip:
    """A span of one video with its text; the planner cuts it into windows."""

    clip_id: str  # unique and stable within the source; part of every window's unit id
    video_uid: str  # the source's own id for the whole video
    video_path: str  # absolute path, already checked to lie inside the source root
    task: str = ""  # narration / label / instruction; "" when the source has none
    start_sec: float | None = None  # span inside the video; None = from the start
    end_sec: float | None = None  # None = to the end
    fps: float | None = None  # from metadata when the source records it; probed otherwise
    num_frames: int | None = None
    extra: dict[str, str] = field(default_factory=dict)  # source-specific, carried into the row


@dataclass(frozen=True)
class ClipProblem:
    """A unit the source could not turn into a clip (missing video, unusable metadata row)."""

    unit_id: str
    error_class: str
    message: str
    video_path: str = ""


class Source(Protocol):
    name: str

    def clips(self) -> Iterator[Clip | ClipProblem]:
        """Every unit of the source, in a stable order."""
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
