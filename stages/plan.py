"""Plan: cut each clip into fixed-length windows, the unit of work everything after it counts.

A window is ``window_len`` frames taken every ``window_stride`` samples, at the video's native
frame rate or resampled to ``fps``. Frame indices are native indices, so a row maps back to the
source video. Clips that cannot hold one window are reported, never silently dropped. Given a
shot detector (``stages.shots``), windows are laid inside each shot of a clip, so none spans a
cut; a shot too short to hold a window is a filtered unit (rule ``ShotTooShort``).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from annotated_types import Ge, Gt

from magma_data.dropped import FILTERED, Dropped, dropped_unit
from magma_data.sources.base import Clip, ClipProblem
from magma_data.stages.base import Column, StageError
from magma_data.stages.decode import decord_reader
from magma_data.stages.shots import shot_spans

#: What the planner asks for a clip's cuts: ``(video_path, start, end, fps) -> cut frame numbers``
#: inside the native frame range ``[start, end)`` (``stages.shots.ShotDetector``).
ShotFinder = Callable[[str, int, int, float], Sequence[int]]

#: The columns of a planned window, before any stage: where its frames are and what it is about.
PLAN_COLUMNS = (
    Column("unit_id", "string", doc="the unit's key in the ledger: source, clip and start frame"),
    Column("sample_id", "string", doc="stable hash of source, clip, start and window geometry", group="identity"),
    Column("source", "string", doc="the source (manifest) name", group="identity"),
    Column("video_uid", "string", doc="the source's id of the whole video (robot: the episode)", group="identity"),
    Column("clip_id", "string", doc="the clip within the source (narration, segment, file, episode)",
           group="identity"),
    Column("video_path", "string", group="identity",
           doc="the video file, relative to the run's root (`root` in .magma/<source>/config.json); robot: the "
               "RLDS dataset folder; magma_video_tom: relative to the first --videos folder holding it (`videos`)"),
    Column("frame_index", "int64", doc="the window's first frame, in the video's native frames", group="identity"),
    Column("frame_indices", "int64", ("T",), doc="every frame of the window, native numbering", group="identity"),
    Column("fps", "float32", doc="the video's frame rate (robot: 0, steps have none)", group="identity"),
    Column("window_fps", "float32", doc="the rate the window samples frames at", group="identity"),
    Column("window_len", "int32", doc="frames per window", group="identity"),
    Column("task", "string", doc="narration, label or instruction; empty when the source has none", group="text"),
)


@dataclass(frozen=True)
class PlanConfig:
    window_len: Annotated[int, Ge(2)] = 16  # frames per window (Magma: 16 future frames); a trace needs two
    window_stride: Annotated[int, Ge(1)] = 16  # samples between window starts
    fps: Annotated[float, Gt(0)] | None = None  # resample to this rate; None = the video's native rate
    max_windows_per_clip: Annotated[int, Ge(1)] | None = None  # evenly spaced subset of a long clip's windows


class ClipTooShort(StageError):
    pass


class VideoUnreadable(StageError):
    pass


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    num_frames: int


def probe_video(path: str) -> VideoInfo:
    """Frame rate and frame count from the container, without decoding frames."""
    try:
        reader = decord_reader(path)
        info = VideoInfo(float(reader.get_avg_fps()), len(reader))
        del reader
    except Exception:  # decord cannot open every codec (AV1, some webm): ask PyAV
        info = _probe_with_pyav(path)
    if not info.num_frames or not math.isfinite(info.fps) or info.fps <= 0:
        raise VideoUnreadable(f"{path}: no frames or no frame rate in the container ({info})")
    return info


def _probe_with_pyav(path: str) -> VideoInfo:
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoUnreadable(f"{path}: no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            frames = stream.frames
            if not frames:  # containers such as webm do not store a count: count packets
                frames = sum(1 for packet in container.demux(stream) if packet.size)
            return VideoInfo(fps, int(frames))
    except VideoUnreadable:
        raise
    except Exception as error:
        raise VideoUnreadable(
            f"{path}: neither decord nor PyAV can open it ({type(error).__name__}: {error}); "
            "check that the file is a complete video"
        ) from error


def sample_id_for(source: str, clip_id: str, frame_index: int, config: PlanConfig) -> str:
    """A stable id for one window: the same clip, start and window geometry give the same id."""
    key = f"{source}\x00{clip_id}\x00{frame_index}\x00{config.window_len}\x00{config.window_stride}\x00{config.fps}"
    return hashlib.sha1(key.encode()).hexdigest()[:20]


def clip_frames(clip: Clip, info: VideoInfo) -> tuple[int, int]:
    """The clip's native frame range ``[start, end)`` in its video."""
    start_frame = 0 if clip.start_sec is None else int(round(clip.start_sec * info.fps))
    end_frame = info.num_frames if clip.end_sec is None else int(round(clip.end_sec * info.fps))
    return start_frame, min(end_frame, info.num_frames)


def _samples(span: int, step: float) -> int:
    """How many frames a span of ``span`` native frames holds at one sample every ``step`` frames."""
    return int(math.floor((span - 1) / step)) + 1 if span > 0 else 0


def plan_windows(clip: Clip, info: VideoInfo, source: str, config: PlanConfig,
                 shots: ShotFinder | None = None) -> list[dict]:
    """The windows of one clip, as rows carrying everything later stages need to find the frames.

    With ``shots``, the clip is cut at the cuts it finds and windows are tiled inside each shot
    as they would be in a clip of its own, so no window spans a cut; a shot that cannot hold one
    window comes back as a filtered unit, so the frames it covers are accounted for.
    """
    start_frame, end_frame = clip_frames(clip, info)
    step = 1.0 if config.fps is None else info.fps / config.fps
    samples = _samples(end_frame - start_frame, step)
    if samples < config.window_len:
        raise ClipTooShort(
            f"clip {clip.clip_id} has {max(samples, 0)} frames at the sampling rate, fewer than one "
            f"window of {config.window_len}; lower --window-len or --fps to keep it"
        )
    cuts = shots(clip.video_path, start_frame, end_frame, info.fps) if shots is not None else ()
    starts: list[tuple[int, int]] = []  # each window's shot start (native) and first sample in the shot
    short_shots: list[dict] = []
    for shot_start, shot_end in shot_spans(cuts, start_frame, end_frame):
        shot_samples = _samples(shot_end - shot_start, step)
        if shot_samples < config.window_len:
            short_shots.append(_short_shot(clip, source, shot_start, shot_end, shot_samples, config))
            continue
        firsts = range(0, shot_samples - config.window_len + 1, config.window_stride)
        starts += [(shot_start, first) for first in firsts]
    if config.max_windows_per_clip and len(starts) > config.max_windows_per_clip:
        keep = np.linspace(0, len(starts) - 1, config.max_windows_per_clip).round().astype(int)
        starts = [starts[i] for i in keep]
    rows = []
    for shot_start, first in starts:
        positions = shot_start + (first + np.arange(config.window_len)) * step
        frame_indices = np.minimum(np.round(positions).astype(np.int64), info.num_frames - 1)
        frame_index = int(frame_indices[0])
        rows.append(
            {
                "unit_id": f"{source}/{clip.clip_id}/{frame_index:08d}",
                "sample_id": sample_id_for(source, clip.clip_id, frame_index, config),
                "source": source,
                "video_uid": clip.video_uid,
                "clip_id": clip.clip_id,
                "video_path": clip.video_path,
                "task": clip.task,
                "frame_index": frame_index,
                "frame_indices": frame_indices,
                "fps": float(info.fps),
                "window_fps": float(config.fps or info.fps),
                "window_len": config.window_len,
            }
        )
    return sorted(rows + short_shots, key=lambda unit: unit["frame_index"])


def _short_shot(clip: Clip, source: str, start: int, end: int, samples: int, config: PlanConfig) -> dict:
    """The filtered unit that stands for a shot too short to hold one window."""
    dropped = Dropped(FILTERED, "shots", "ShotTooShort",
                      f"the shot at frames {start}..{end - 1} holds {samples} frames at the sampling rate, fewer "
                      f"than one window of {config.window_len}; a window there would span a cut (shots.threshold "
                      "and shots.min_scene_len set where cuts are found)", value=samples)
    unit = dropped_unit(f"{source}/{clip.clip_id}/shot-{start:08d}", source, dropped,
                        clip_id=clip.clip_id, video_path=clip.video_path)
    return {**unit, "frame_index": start}


class VideoProbes:
    """Frame rate and frame count of each video, read from its container once however many clips
    (or callers: ``magma-data check`` shares the planner's) ask; a failure is remembered and
    raised again for every clip of the video."""

    def __init__(self):
        self.found: dict[str, VideoInfo | Exception] = {}
        self._locks: dict[str, threading.Lock] = {}

    def __call__(self, path: str) -> VideoInfo:
        with self._locks.setdefault(path, threading.Lock()):
            if path not in self.found:
                try:
                    self.found[path] = probe_video(path)
                except Exception as error:
                    self.found[path] = error
        found = self.found[path]
        if isinstance(found, Exception):
            raise found
        return found


def plan_source(clips, source: str, config: PlanConfig, limit: int | None = None, threads: int = 8,
                probes: VideoProbes | None = None, shots: ShotFinder | None = None) -> list[dict]:
    """All units of a source in a stable order: window rows, and dropped units for clips that yield none.

    Videos are probed in a thread pool (header reads, no decoding) unless the source's metadata
    already gives the frame rate and frame count. Each video is probed once, however many clips
    it holds (an EPIC-KITCHENS video has hundreds of narration segments). ``shots`` finds each
    clip's cuts (it decodes the clip, in the same pool), and windows are planned inside shots.
    """
    probe = probes or VideoProbes()

    def windows_of(item) -> list[dict]:
        if isinstance(item, ClipProblem):
            return [item.planned(source)]
        try:
            info = VideoInfo(item.fps, item.num_frames) if item.fps and item.num_frames else probe(item.video_path)
            return plan_windows(item, info, source, config, shots)
        except Exception as error:
            return [dropped_unit(f"{source}/{item.clip_id}", source, Dropped.failure("plan", error),
                                 clip_id=item.clip_id, video_path=item.video_path)]

    return plan_in_threads(clips, windows_of, limit, threads)


def plan_in_threads(items, windows_of, limit: int | None = None, threads: int = 8) -> list[dict]:
    """``windows_of`` each item in a thread pool (video probes are header reads), the rows in item
    order; stops once ``limit`` rows are planned, reading only a bounded look-ahead past them."""
    from concurrent.futures import ThreadPoolExecutor

    units: list[dict] = []
    items = iter(items)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        while chunk := list(itertools.islice(items, 4 * threads)):
            for rows in pool.map(windows_of, chunk):
                units.extend(rows)
                if limit is not None and len(units) >= limit:
                    return units[:limit]
    return units
