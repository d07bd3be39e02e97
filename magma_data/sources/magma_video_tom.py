"""Magma's released traces (``MagmaAI/Magma-Video-ToM``) with the user's own videos: windows that need no tracking.

Layout of a local copy (``hf download MagmaAI/Magma-Video-ToM --repo-type dataset``; ``--root``)::

    ego4d/ sthv2/ instruct_videos/      each a ``datasets`` save_to_disk folder:
        data-00000-of-00015.arrow ...   records: dataset_name, video_name, task_string,
        dataset_info.json, state.json   trace, trace_visibility, frame_index

What is established about the records, and from where (the card documents the field names only;
the release as a whole: docs/magma-data-format.md §Magma-Video-ToM):

- ``trace`` / ``trace_visibility`` are CoTracker's raw output for one window (no camera
  compensation, no foreground/background split): Magma's maintainer in microsoft/Magma#66, who
  points to ``tools/som_tom/demo.py`` for how they become marks. Layout ``[T, N, 2]`` and
  ``[T, N]`` (time first, as CoTracker returns them); a leading batch axis of 1 is accepted.
- ``frame_index`` is the window's first frame within the video segment ``video_name`` at the
  video's native frame rate (#66). The card says the traces cover the 16 frames after each frame.
- The pixel frame of ``trace`` is not documented. Magma's demo (the code #66 names) tracks frames
  resized to 512 pixels high, width ``int(W * 512 / H)``, and returns tracks in those pixels; the
  training loader quantises traces with the size of the frames it reads. The default is therefore
  ``released.trace_height: 512``; ``null`` takes the video's native pixels. ``magma-data check``
  prints how far the traces reach, to test the assumption on a real copy.
- Segment names: Magma's preprocessing cuts segments into files named
  ``start_{s}___end_{e}___...`` (seconds, ``tools/video_preprocessing``); Ego4D segments are
  ``<video_uid>...start_{s}___end_{e}___...``.

Each record's video is looked up under the ``videos`` folders (``--videos``): first as the
segment file itself (``<video_name>.<ext>``), then as the whole video the segment was cut from,
named by the text before ``start_`` (its first frame then being ``round(s * fps)``), then by the
name's last part (SSv2 clips are whole videos). A record whose video is not there is an error row
naming the video to download. Records are read by address; the traces stay in the Arrow files
until a worker reads them (``magma_data.stages.released_traces``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from magma_data.sources.base import VIDEO_SUFFIXES, ClipProblem, Coverage, TracesSource

#: The record fields the card lists (and issue #66 discusses).
RECORD_FIELDS = ("dataset_name", "video_name", "task_string", "trace", "trace_visibility", "frame_index")
_SEGMENT = re.compile(r"start_(?P<start>\d+(?:\.\d+)?)___end_(?P<end>\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class ReleasedWindow:
    """One released record and the user's video it belongs to."""

    unit_id: str
    folder: str  # the save_to_disk folder holding the record
    row: int  # its row there
    dataset_name: str
    video_name: str
    task: str
    frame_index: int  # Magma's: the window's first frame within the segment, native fps
    video_path: str
    video_uid: str
    segment_start_sec: float  # where the segment starts in video_path (0 when the file is the segment)
    fps: float | None = None  # the planner probes the video
    num_frames: int | None = None

    @property
    def clip_id(self) -> str:
        return f"{self.dataset_name}/{self.video_name}"


def release_folders(root: Path, folders: Sequence[str] = ()) -> list[Path]:
    """The save_to_disk folders under ``root`` (or ``root`` itself when it is one), sorted."""
    root = Path(root).resolve()
    if (root / "state.json").is_file():
        return [root]
    found = [root / name for name in folders] if folders else sorted(p.parent for p in root.glob("*/state.json"))
    missing = [str(p) for p in found if not (p / "state.json").is_file()]
    if missing or not found:
        raise FileNotFoundError(
            f"no Magma-Video-ToM folder (a save_to_disk folder with state.json) at {', '.join(missing) or root}; "
            "point --root at the local copy (hf download MagmaAI/Magma-Video-ToM --repo-type dataset --local-dir ...)")
    return found


class VideoIndex:
    """The user's videos under the ``--videos`` folders, found by relative path or by file stem."""

    def __init__(self, roots: Sequence[Path], suffixes: Sequence[str] = VIDEO_SUFFIXES):
        self.roots = [Path(r).resolve() for r in roots]
        self.by_relative: dict[str, Path] = {}
        self.by_stem: dict[str, Path] = {}
        for root in self.roots:
            if not root.is_dir():
                raise FileNotFoundError(f"--videos {root} is not a directory")
            for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file()):
                relative = path.relative_to(root).with_suffix("").as_posix()
                self.by_relative.setdefault(relative, path)
                self.by_stem.setdefault(path.stem, path)

    def locate(self, video_name: str) -> tuple[Path, float] | str:
        """(video file, second the segment starts at in it), or the id of the video to download."""
        name = video_name.strip("/")
        if Path(name).suffix.lower() in VIDEO_SUFFIXES:
            name = name[: -len(Path(name).suffix)]
        if name in self.by_relative:  # the segment file itself
            return self.by_relative[name], 0.0
        segment = _SEGMENT.search(name)
        if segment:  # a segment of a whole video named before "start_"
            uid = name[: segment.start()].rstrip("/_").rsplit("/", 1)[-1]
            if uid in self.by_stem:
                return self.by_stem[uid], float(segment.group("start"))
            return uid or name
        last = name.rsplit("/", 1)[-1]  # a whole clip (SSv2)
        return (self.by_stem[last], 0.0) if last in self.by_stem else last


class MagmaVideoTomSource(TracesSource):
    """The released windows under ``root`` with their videos under ``videos``; see the module docstring.
    Its windows come with their traces: the planner reads them with the released-traces tracker."""

    def __init__(self, root: Path, name: str, videos: Sequence[str | Path] = (), folders: Sequence[str] = (),
                 suffixes: Sequence[str] = VIDEO_SUFFIXES):
        """
        Args:
            root: the local copy of MagmaAI/Magma-Video-ToM, or one of its folders.
            name: the source's name (its manifest's); it begins every unit id.
            videos: folders holding the user's videos (``--videos``), searched recursively.
            folders: release folders to read (e.g. ``[sthv2]``); empty = all of them.
            suffixes: video file suffixes to look for.
        """
        self.root, self.name = Path(root).resolve(), name
        self.folders = release_folders(self.root, folders)
        if not videos:
            raise ValueError("--input magma_video_tom needs the videos the traces were made from: pass --videos "
                             "<folder> (repeatable), e.g. your Ego4D full_scale and SSv2 folders")
        self.index = VideoIndex([Path(v) for v in videos], tuple(s.lower() for s in suffixes))
        self._coverage: dict[str, Coverage] = defaultdict(Coverage)

    def video_roots(self) -> list[Path]:
        """The ``--videos`` folders: the videos lie there, not in the release."""
        return self.index.roots

    def coverage(self) -> dict[str, Coverage]:
        """Per dataset_name, of the records read so far: how many, how many found their video, and the
        videos that were missing (``magma-data check`` reports it)."""
        return dict(self._coverage)

    def clips(self) -> Iterator[ReleasedWindow | ClipProblem]:
        """Every record of every folder, in order: a window, or the problem that its video is missing."""
        for folder in self.folders:
            yield from self._folder_windows(folder)

    def _folder_windows(self, folder: Path) -> Iterator[ReleasedWindow | ClipProblem]:
        records = open_release(folder)
        missing = [name for name in RECORD_FIELDS if name not in records.column_names]
        if missing:
            yield ClipProblem(f"{self.name}/{folder.name}", "ReleaseLayout",
                              f"{folder} has no field(s) {missing} (it has {records.column_names}); is it a "
                              "Magma-Video-ToM folder?", str(folder))
            return
        identity = records.data.table.select(["dataset_name", "video_name", "task_string", "frame_index"])
        row = 0  # the traces stay unread in the memory-mapped files
        for batch in identity.to_batches():
            for record in batch.to_pylist():
                yield self._window(folder, row, record)
                row += 1

    def _window(self, folder: Path, row: int, record: dict) -> ReleasedWindow | ClipProblem:
        video_name, dataset = str(record["video_name"]), str(record["dataset_name"])
        unit = f"{self.name}/{folder.name}/{row:09d}"
        found = self.index.locate(video_name)
        coverage = self._coverage[dataset]
        coverage.records += 1
        if isinstance(found, str):
            coverage.missing_videos.add(found)
            return ClipProblem(unit, "VideoMissing",
                               f"{dataset} video {found!r} (segment {video_name!r}) is not under --videos "
                               f"{', '.join(map(str, self.index.roots))}; download it"
                               f"{_how_to_download(dataset, found)} or pass the folder that holds it")
        path, start = found
        coverage.found += 1
        return ReleasedWindow(unit_id=unit, folder=str(folder), row=row, dataset_name=dataset, video_name=video_name,
                              task=str(record["task_string"] or "").strip(), frame_index=int(record["frame_index"]),
                              video_path=str(path), video_uid=path.stem, segment_start_sec=start)

def open_release(folder: Path):
    """A release folder as a memory-mapped ``datasets.Dataset`` (nothing is read until asked for)."""
    import datasets

    return datasets.load_from_disk(str(folder))


def _how_to_download(dataset: str, video: str) -> str:
    if dataset == "ego4d":
        return f" (ego4d --datasets full_scale --video_uids {video})"
    if dataset == "sthv2":
        return " (Something-Something v2, 20bn-something-something-v2/)"
    return ""
