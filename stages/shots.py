"""Shots: where a clip's camera cuts are, so that windows are planned inside shots and no trace spans a cut.

Magma split every annotated segment with PySceneDetect's ``detect(path, ContentDetector())`` before
tracing it (docs/magma-data-format.md §Preprocessing): a window across a cut makes every trace jump.
Magma's data predates PySceneDetect 0.7 and names no version. We run 0.7's ``ContentDetector`` set
to behave as 0.6 did before its flash filter existed (0.6.0 to 0.6.3): threshold 27; a frame over
the threshold closer than ``min_scene_len`` (15) frames to the last cut is dropped
(``FlashFilter.Mode.SUPPRESS``, 0.6's rule), where 0.7's default (``MERGE``, 0.6.4's too) folds it
into the run of frames over the threshold, so a real cut a few frames after shaky frames is lost
and a window spans it; and frames shrunk by 0.6's ``SceneManager`` before scoring: by the integer
factor ``width // 256``, bilinear, where 0.7 shrinks to 256 px exactly. Both are 0.7's own
classes and arguments (``ContentDetector(filter_mode=...)``, ``cv2.resize`` as the scene manager
calls it); the only code of our own is the factor, one line. Frames come from our own decoding,
through the decode stage's readers, rather than scenedetect's backends. The cuts are then numbered
as the planner and the decode stage number frames (decord's indices, or PyAV counting decoded
frames), whatever the container's timestamps claim; a file the pipeline can decode is a file
detection can decode; and the detector sees the span of the clip only, as Magma's saw one segment
at a time. ``SceneManager``'s own loop adds nothing here but a decode thread: ``find_cuts`` feeds
the detector as it does, downscale and interpolation included.

Detection decodes every frame of a clip, so it is the costly part of planning (figures in
``benchmarks/RESULTS.md``); ``ShotCache`` keeps each video's cuts so a resumed run plans the
same windows without decoding again. ``shot_spans`` turns cuts into the frame ranges windows are
planned in (``stages.plan.plan_windows``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import cv2
import numpy as np
from annotated_types import Ge, Gt

from magma_data.faults import crash_point

from .base import TRANSIENT_ERRORS, StageError
from .decode import DecodeConfig, DecodeStage


@dataclass(frozen=True)
class ShotsConfig:
    """Shot boundaries by PySceneDetect's ContentDetector as 0.6 ran Magma's ``detect(path, ContentDetector())``."""

    #: plan windows inside shots, as Magma did; off, windows are planned over whole clips
    enabled: bool = False
    #: a frame whose content score (mean change of hue, saturation and luma from the previous
    #: frame, 0-255) reaches this starts a new shot (ContentDetector's default)
    threshold: Annotated[float, Gt(0)] = 27.0
    #: frames: a cut must be at least this far from the previous one (and from the span's first
    #: frame), so a flash is not a shot (ContentDetector's default; 0 keeps every cut)
    min_scene_len: Annotated[int, Ge(0)] = 15
    #: what happens to a frame over the threshold closer than min_scene_len to the last cut:
    #: "suppress" drops it (PySceneDetect 0.6.0-0.6.3, the rule Magma's data was cut by);
    #: "merge" folds it into the run of frames over the threshold (0.6.4 and 0.7's default), which
    #: also hides a real cut that follows a few shaky frames
    filter_mode: Literal["suppress", "merge"] = "suppress"
    #: frames are shrunk before they are scored, with the longer side's width in mind: "integer"
    #: divides both sides by width // downscale_to (PySceneDetect 0.6's SceneManager); "exact" by
    #: max(width, height) / downscale_to (0.7's)
    downscale: Literal["integer", "exact"] = "integer"
    #: the width (longer side, for "exact") frames are shrunk towards (SceneManager's automatic downscale)
    downscale_to: Annotated[int, Ge(16)] = 256


def shots_note(config: ShotsConfig) -> str:
    """The line a run says once when shots are on: what planning now decodes."""
    return (f"shots: windows planned inside shots (PySceneDetect ContentDetector, threshold {config.threshold:g}, "
            f"min_scene_len {config.min_scene_len}, {config.filter_mode}); planning decodes every frame of every clip "
            "once, cached for a resumed run")


#: Frames decoded per read while a span is scanned: a bound on the memory of one detection.
DECODE_CHUNK = 16


class ShotDetectionFailed(StageError):
    pass


class ShotsUnavailable(ImportError):
    """scenedetect is not installed (it comes with the curate extra)."""


def require_scenedetect() -> None:
    """Raise ``ShotsUnavailable`` saying how to install scenedetect; a run calls it before any work."""
    try:
        import scenedetect  # noqa: F401
    except ImportError as error:
        raise ShotsUnavailable(f"shot detection needs PySceneDetect ({error}): pip install 'magma-data[curate]', "
                               "or turn shots off (--set shots.enabled=false)") from None


def find_cuts(frames: Iterable[np.ndarray], fps: float, config: ShotsConfig, first_frame: int = 0) -> list[int]:
    """The frame numbers at which a new shot starts, in ascending order, from RGB frames in display order.

    The first frame is numbered ``first_frame``; a cut is the number of the first frame of its
    new shot, so ``[start, cut)`` and ``[cut, end)`` are the shots on either side.
    """
    require_scenedetect()
    from scenedetect import ContentDetector, FrameTimecode
    from scenedetect.detector import FlashFilter

    mode = FlashFilter.Mode.SUPPRESS if config.filter_mode == "suppress" else FlashFilter.Mode.MERGE
    detector = ContentDetector(threshold=config.threshold, min_scene_len=config.min_scene_len, filter_mode=mode)
    cuts: list = []
    number = None
    for number, frame in enumerate(frames, start=first_frame):
        height, width = frame.shape[:2]
        factor = downscale_factor(width, height, config)
        if factor > 1:
            size = (max(1, round(width / factor)), max(1, round(height / factor)))
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
        cuts += detector.process_frame(FrameTimecode(number, fps), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    if number is not None:
        cuts += detector.post_process(FrameTimecode(number, fps))
    return sorted({cut.frame_num for cut in cuts})


def downscale_factor(width: int, height: int, config: ShotsConfig) -> float:
    """What frames are divided by before scoring: PySceneDetect 0.6's ``compute_downscale_factor(width)``,
    ``width // 256`` (an integer, so frames 256 to 511 wide are scored at full size), or 0.7's."""
    if config.downscale == "integer":
        return max(1, width // config.downscale_to)
    from scenedetect.scene_manager import compute_downscale_factor

    return compute_downscale_factor(max(width, height), config.downscale_to)


def shot_spans(cuts: Sequence[int], start: int, end: int) -> list[tuple[int, int]]:
    """The half-open frame ranges of the shots of ``[start, end)``: the span cut at every cut inside it."""
    bounds = [start, *sorted(cut for cut in set(cuts) if start < cut < end), end]
    return list(zip(bounds[:-1], bounds[1:]))


class ShotDetector:
    """The cuts of a clip's frame span, from the cache or by decoding every frame of the span.

    The planner calls it as ``detector(video_path, start, end, fps)`` from several threads at
    once. ``remote`` runs the detection somewhere else and returns its answer
    (``magma_data.execution.RemoteCalls``: a Ray task, so detection uses every CPU of the cluster);
    None detects in the calling thread. Either way the cache is read and written here, on the
    driver, where the run's output folder is.
    """

    def __init__(self, config: ShotsConfig, decode: DecodeConfig | None = None, cache: ShotCache | None = None,
                 remote: Callable[..., list[int]] | None = None):
        self.config = config
        self.decode = decode or DecodeConfig()
        self.cache = cache
        self.remote = remote
        self._detected = itertools.count(1)  # spans detected (not read from the cache) by this process

    def __call__(self, video_path: str, start: int, end: int, fps: float) -> list[int]:
        if self.cache is not None:
            cached = self.cache.get(video_path, start, end, self.config)
            if cached is not None:
                return cached
        args = (self.config, self.decode, video_path, start, end, fps)
        cuts = self.remote(detect_span, *args) if self.remote is not None else detect_span(*args)
        if self.cache is not None:
            self.cache.put(video_path, start, end, self.config, cuts)
            crash_point("shots_cached", next(self._detected))
        return cuts


def detect_span(config: ShotsConfig, decode: DecodeConfig, video_path: str, start: int, end: int,
                fps: float) -> list[int]:
    """The cuts of ``[start, end)`` of one video, decoding every frame of it.

    With the decode backend "auto", the span is read by decord and, when decord fails anywhere in
    it, again from its start by PyAV, so the cuts of one span never mix two backends' frame counts.
    """
    backends = ("decord", "pyav") if decode.backend == "auto" else (decode.backend,)
    errors = []
    for backend in backends:
        reader = DecodeStage(replace(decode, backend=backend))
        try:
            return find_cuts(span_frames(reader, video_path, start, end), fps, config, first_frame=start)
        except (*TRANSIENT_ERRORS, ShotsUnavailable):
            raise  # the file may be fine and its storage briefly not; or no detector is installed
        except Exception as error:  # the next backend reads the span again from its start
            errors.append(f"{type(error).__name__}: {error}")
        finally:
            reader.close()
    raise ShotDetectionFailed(
        f"cannot decode frames {start}..{end - 1} of {video_path} to find its shots ({'; '.join(errors)}); "
        "check the file, or turn shot detection off (--set shots.enabled=false)")


def span_frames(reader: DecodeStage, video_path: str, start: int, end: int) -> Iterator[np.ndarray]:
    """Every frame of ``[start, end)`` at native size, read ``DECODE_CHUNK`` at a time."""
    for first in range(start, end, DECODE_CHUNK):
        yield from reader.read(video_path, np.arange(first, min(first + DECODE_CHUNK, end)))


class ShotCache:
    """Each video's cuts in one JSON file under ``folder``, so a resumed run does not decode again.

    A file holds the video's path, size and modification time and the detector's settings, and
    the cuts of each span detected: ``{"video", "size", "mtime_ns", "detector", "spans":
    {"start-end": [cut, ...]}}``. An entry whose video has changed on disk, or that other
    settings made, is not used and is replaced at the next write. Writes replace the file
    atomically; threads of one process share a lock, and two processes writing one video's file
    at once lose nothing but a cache entry, found again when next needed.
    """

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self._lock = threading.Lock()

    def get(self, video_path: str, start: int, end: int, config: ShotsConfig) -> list[int] | None:
        with self._lock:
            cuts = self._entry(video_path, config)["spans"].get(_span_key(start, end))
        return None if cuts is None else [int(cut) for cut in cuts]

    def put(self, video_path: str, start: int, end: int, config: ShotsConfig, cuts: Sequence[int]) -> None:
        with self._lock:
            entry = self._entry(video_path, config)
            entry["spans"][_span_key(start, end)] = [int(cut) for cut in cuts]
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.path(video_path)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
            temporary.write_text(json.dumps(entry, sort_keys=True))
            os.replace(temporary, path)

    def path(self, video_path: str) -> Path:
        """The file that holds ``video_path``'s cuts."""
        return self.folder / f"{hashlib.sha1(os.path.abspath(video_path).encode()).hexdigest()[:20]}.json"

    def _entry(self, video_path: str, config: ShotsConfig) -> dict:
        """The video's cached entry, or a fresh one when there is none or it is stale."""
        stat = os.stat(video_path)
        fresh = {"video": os.path.abspath(video_path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                 "detector": _detector_settings(config), "spans": {}}
        try:
            entry = json.loads(self.path(video_path).read_text())
        except (FileNotFoundError, ValueError):
            return fresh
        same = all(entry.get(key) == fresh[key] for key in ("video", "size", "mtime_ns", "detector"))
        return entry if same and isinstance(entry.get("spans"), dict) else fresh


def _span_key(start: int, end: int) -> str:
    return f"{int(start)}-{int(end)}"


def _detector_settings(config: ShotsConfig) -> dict:
    """What changes the cuts (everything but ``enabled``)."""
    settings = asdict(config)
    settings.pop("enabled")
    return settings
