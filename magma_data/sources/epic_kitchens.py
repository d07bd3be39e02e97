"""EPIC-KITCHENS-100 read in place: each narrated action segment is one clip.

Layout (``--root`` holds the downloader's output and a clone of the annotations repository)::

    EPIC-KITCHENS/P01/videos/P01_01.MP4                               (epic_downloader.py --videos)
    epic-kitchens-100-annotations/EPIC_100_train.csv                  (narration_id, participant_id, video_id,
    epic-kitchens-100-annotations/EPIC_100_validation.csv              start_timestamp, stop_timestamp, narration, ...)
    epic-kitchens-100-annotations/EPIC_100_video_info.csv             (video_id, duration, fps, resolution)

Spans come from ``start_timestamp``/``stop_timestamp``, never ``start_frame``/``stop_frame``: the
frame columns count the released ~60 fps RGB dumps, not the native frames of 50, 59.94, 29.97 or
90 fps videos (docs/sources.md §EPIC-KITCHENS-100).

The task is the segment's narration, an action ("open door"), so rows ask the question an action
answers, Ego4D's; Magma asked EPIC items what they show and answered with GPT-4o descriptions that
are not released (docs/magma-som-tom.md §Deviations).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from magma_data.sources.base import Clip, ClipProblem, PathEscapesRoot, Source, resolve_inside
from magma_data.sources.metadata import metadata_file, read_text_lenient, text_problem, video_file

_TIMESTAMP = re.compile(r"^(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)$")

REQUIRED_COLUMNS = ("narration_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp", "narration")


def parse_timestamp(text: str) -> float | None:
    """``HH:mm:ss.SS`` -> seconds; None when the text is not a timestamp."""
    match = _TIMESTAMP.match(text.strip())
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


class EpicKitchensSource(Source):
    """Clips from the EPIC-KITCHENS-100 action segments; see the module docstring for the layout."""

    def __init__(
        self,
        root: Path,
        name: str,
        annotations: Sequence[str] = (
            "epic-kitchens-100-annotations/EPIC_100_train.csv",
            "epic-kitchens-100-annotations/EPIC_100_validation.csv",
        ),
        video_info: str | None = "epic-kitchens-100-annotations/EPIC_100_video_info.csv",
        video_template: str = "EPIC-KITCHENS/{participant_id}/videos/{video_id}.MP4",
    ):
        """
        Args:
            root: folder holding the videos and the annotations clone.
            name: the source's name (its manifest's); it begins every unit id.
            annotations: segment CSVs relative to ``root``, read in this order.
            video_info: per-video frame rates relative to ``root``; None or a missing file means
                frame rates are probed from the videos.
            video_template: a video's path relative to ``root``, filled from the CSV row.
        """
        self.root = Path(root).resolve()
        self.name = name
        self.annotation_paths = [metadata_file(self.root, name, "annotations") for name in annotations]
        self.video_info_path = self._optional(video_info)
        self.video_template = video_template

    def _optional(self, relative: str | None) -> Path | None:
        if not relative:
            return None
        try:
            path = resolve_inside(self.root, relative)
        except PathEscapesRoot as error:
            raise ValueError(f"option video_info: {error}") from error
        return path if path.is_file() else None

    def clips(self) -> Iterator[Clip | ClipProblem]:
        info = self._video_info()
        seen: set[str] = set()
        videos: dict[str, Path | ClipProblem] = {}  # by relative path
        for csv_path in self.annotation_paths:
            reader = csv.DictReader(io.StringIO(read_text_lenient(csv_path), newline=""))
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{csv_path} lacks the columns {missing}; is it an EPIC-KITCHENS-100 action CSV?")
            for line, row in enumerate(reader, start=2):
                yield self._clip(row, f"{csv_path.name}:{line}", info, seen, videos)

    def _clip(self, row, where, info, seen, videos) -> Clip | ClipProblem:
        narration_id = (row.get("narration_id") or "").strip() or where
        unit = f"{self.name}/{narration_id}"
        video_id = (row.get("video_id") or "").strip()
        if narration_id in seen:  # the unit id names the row: the first one already owns the plain id
            return ClipProblem(f"{unit}@{where}", "DuplicateId",
                               f"{where}: narration_id {narration_id} appears twice; list each annotation CSV once")
        seen.add(narration_id)
        if info is not None and video_id not in info:
            return ClipProblem(unit, "UnknownVideoId",
                               f"{where}: video_id {video_id!r} is not in {self.video_info_path.name}; "
                               "use annotation files from the same release")
        relative = self.video_template.format(**{k: (v or "").strip() for k, v in row.items() if k})
        if relative not in videos:  # one stat per video, not per segment
            videos[relative] = video_file(self.root, unit, relative)
        path = videos[relative]
        if isinstance(path, ClipProblem):
            return ClipProblem(unit, path.error_class, f"{where}: {path.message}", path.video_path)
        start = parse_timestamp(row.get("start_timestamp") or "")
        stop = parse_timestamp(row.get("stop_timestamp") or "")
        if start is None or stop is None:
            return ClipProblem(unit, "BadTimestamp",
                               f"{where}: start/stop timestamps {row.get('start_timestamp')!r}, "
                               f"{row.get('stop_timestamp')!r} are not HH:mm:ss.SS", str(path))
        if stop <= start:
            return ClipProblem(unit, "ZeroLengthWindow",
                               f"{where}: segment {row['start_timestamp']}-{row['stop_timestamp']} spans no time",
                               str(path))
        task = row.get("narration") or ""
        problem = text_problem(unit, task, f"{where}: narration", str(path))
        if problem:
            return problem
        return Clip(
            clip_id=narration_id,
            video_uid=video_id,
            video_path=str(path),
            task=task.strip(),
            start_sec=start,
            end_sec=stop,
            fps=info.get(video_id) if info else None,
            extra={key: (row.get(key) or "") for key in ("participant_id", "verb", "noun")},
        )

    def _video_info(self) -> dict[str, float | None] | None:
        if self.video_info_path is None:
            return None
        rates: dict[str, float | None] = {}
        for row in csv.DictReader(io.StringIO(read_text_lenient(self.video_info_path), newline="")):
            try:
                fps = float(row.get("fps") or "")
            except ValueError:
                fps = None
            rates[(row.get("video_id") or "").strip()] = fps if fps and fps > 0 else None
        return rates
