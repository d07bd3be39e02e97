"""Released traces: Magma's own CoTracker3 traces (Magma-Video-ToM) in place of decoding and tracking.

The ``video_tom`` pipeline runs this stage instead of decode and track when the tracker is
``released`` (``--input magma_video_tom``): a window's tracks come from its released record, read
by address from the Arrow files on the worker, and only the window's marked frame is decoded from
the user's video, for the SoM image (``frame_pos``, drawn from the traces as the track stage draws
it: ``stages.marked_frame``). The rest of the pipeline (camera, marks, render) is the
same as for tracked windows, so released windows become rows of the same schema, plus the
record's identity (``RELEASED_COLUMNS``) so an export gives the record back.

The released traces are in pixels of frames ``trace_height`` high (``ReleasedConfig``; the
evidence is in ``magma_data.sources.magma_video_tom``); they are scaled to the working frames the
rest of the pipeline sees (``decode.height``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from annotated_types import Ge

from magma_data.dropped import Dropped, dropped_unit
from magma_data.sources.base import ClipProblem
from magma_data.sources.magma_video_tom import ReleasedWindow, open_release
from magma_data.stages.base import Column, Row, Stage, StageError
from magma_data.stages.decode import IMAGE_HEIGHT, IMAGE_WIDTH, DecodeConfig, DecodeStage, resize_frames
from magma_data.stages.marked_frame import FIRST_FRAME, MARKED_FRAME, MarkedFrame
from magma_data.stages.plan import PlanConfig, VideoProbes, plan_in_threads, sample_id_for
from magma_data.stages.track import TRACKER, TRACKS, VISIBILITY


#: Magma's demo tracks frames resized to this height (width ``int(W * 512 / H)``) and returns tracks
#: in their pixels: the frame Magma-Video-ToM's traces are taken to be in, and ``export`` writes.
MAGMA_TRACE_HEIGHT = 512


@dataclass(frozen=True)
class ReleasedConfig:
    """How released traces are read (``--input magma_video_tom``)."""

    #: height of the frames the released traces are in pixels of, width ``int(W * h / H)``; None:
    #: the video's own pixels
    trace_height: Annotated[int, Ge(16)] | None = MAGMA_TRACE_HEIGHT


#: The released record a row was made from, so an export can give it back unchanged.
RELEASED_COLUMNS = (
    Column("released_dataset", "string", doc="Magma-Video-ToM's dataset_name of the record", group="identity"),
    Column("released_video_name", "string", doc="Magma-Video-ToM's video_name (the segment)", group="identity"),
    Column("released_frame_index", "int64", doc="Magma-Video-ToM's frame_index: first frame within the segment",
           group="identity"),
)
#: Where a planned window's record is; the stage reads it and drops these.
RELEASE_ADDRESS = ("release_folder", "release_row")


class TraceShapeMismatch(StageError):
    pass


class WindowPastVideoEnd(StageError):
    pass


def plan_released(windows, source: str, config: PlanConfig, limit: int | None = None, threads: int = 8,
                  probes: VideoProbes | None = None) -> list[dict]:
    """Planned rows of released windows, in record order; problems (a missing video, a window past
    the video's end) become dropped units. Frames are native: the traces were made at native fps."""
    if config.fps is not None:
        raise ValueError("released traces are at the videos' native frame rate; leave --fps out")
    probe = probes or VideoProbes()

    def windows_of(item: ReleasedWindow | ClipProblem) -> list[dict]:
        if isinstance(item, ClipProblem):
            return [item.planned(source)]
        try:
            return [_released_row(item, probe(item.video_path), source, config)]
        except Exception as error:
            return [dropped_unit(item.unit_id, source, Dropped.failure("plan", error), clip_id=item.clip_id,
                                 video_path=item.video_path)]

    return plan_in_threads(windows, windows_of, limit, threads)


def _released_row(window: ReleasedWindow, info, source: str, config: PlanConfig) -> dict:
    start = int(round(window.segment_start_sec * info.fps)) + window.frame_index
    frames = start + np.arange(config.window_len, dtype=np.int64)
    if frames[-1] >= info.num_frames:
        raise WindowPastVideoEnd(
            f"the released window needs frames {frames[0]}..{frames[-1]} of {window.video_path}, which has "
            f"{info.num_frames}; is it the video (and the version of it) the traces were made from?")
    return {
        "unit_id": window.unit_id,
        "sample_id": sample_id_for(source, window.clip_id, window.frame_index, config),
        "source": source,
        "video_uid": window.video_uid,
        "clip_id": window.clip_id,
        "video_path": window.video_path,
        "task": window.task,
        "frame_index": int(start),
        "frame_indices": frames,
        "fps": float(info.fps),
        "window_fps": float(info.fps),
        "window_len": config.window_len,
        "release_folder": window.folder,
        "release_row": window.row,
    }


class ReleasedTracesStage(Stage):
    """Reads a window's released traces and decodes its marked frame: the columns decode and track add."""

    name = "released_traces"
    consumes = RELEASE_ADDRESS

    def __init__(self, decode: DecodeConfig, config: ReleasedConfig, points: int, roots: Sequence[str] = (),
                 marked_frame: MarkedFrame = FIRST_FRAME):
        """``points``: tracked points the run's rows hold (grid size squared); ``roots``: the ``--videos``
        folders a row's ``video_path`` is relative to; ``marked_frame``: how ``frame_pos`` is drawn."""
        self.config, self.points = config, points
        self.decode = DecodeStage(decode, roots)
        self.marked_frame = marked_frame
        self.columns = (IMAGE_WIDTH, IMAGE_HEIGHT, TRACKER, TRACKS, VISIBILITY, MARKED_FRAME, *RELEASED_COLUMNS,
                        *marked_frame.columns)
        self._releases: dict[str, object] = {}

    def __call__(self, row: Row) -> Row:
        record = self._record(str(row["release_folder"]), int(row["release_row"]))
        trace, visibility = _trace_arrays(record["trace"], record["trace_visibility"])
        expected = (int(row["window_len"]), self.points)
        if trace.shape[:2] != expected:
            raise TraceShapeMismatch(
                f"the released trace is {list(trace.shape)}, this run expects [{expected[0]}, {expected[1]}, 2]; "
                f"run with --window-len {trace.shape[0]} and --grid-size {round(trace.shape[1] ** 0.5)}")
        video, indices = str(row["video_path"]), np.asarray(row["frame_indices"])
        native = self.decode.read(video, indices[:1])[0]
        frame = resize_frames(native[None], self.decode.config.height)[0]
        traced = traced_size(native.shape[1], native.shape[0], self.config)
        scale = np.array([frame.shape[1] / traced[0], frame.shape[0] / traced[1]], np.float32)
        tracks = (trace * scale).astype(np.float32)
        frame_pos = self.marked_frame.draw(tracks, row)
        if frame_pos:
            frame = resize_frames(self.decode.read(video, indices[frame_pos : frame_pos + 1]), frame.shape[0])[0]
        return {
            "image_width": np.int32(frame.shape[1]),
            "image_height": np.int32(frame.shape[0]),
            "tracker": "released",
            "tracks": tracks,
            "visibility": visibility,
            "marked_frame": frame,
            "released_dataset": str(record["dataset_name"]),
            "released_video_name": str(record["video_name"]),
            "released_frame_index": np.int64(record["frame_index"]),
            **self.marked_frame.columns_for(frame_pos),
        }

    def _record(self, folder: str, row: int) -> dict:
        if folder not in self._releases:
            self._releases[folder] = open_release(Path(folder))
        return release_record(self._releases[folder], row)


def release_record(records, row: int) -> dict:
    """One record of a release folder as Python values, read straight from its Arrow table
    (``datasets``' NumPy formatting of nested lists costs ~100 ms a record; this, ~1 ms)."""
    return records.data.table.slice(row, 1).to_pylist()[0]


def _trace_arrays(trace, visibility) -> tuple[np.ndarray, np.ndarray]:
    """[T, N, 2] float32 and [T, N] bool, from the record's arrays with any axes of size 1 around them."""
    trace = np.asarray(trace, np.float32)
    visibility = np.asarray(visibility)
    if trace.ndim == 4 and trace.shape[0] == 1:  # CoTracker's batch axis
        trace = trace[0]
    while visibility.ndim > 2 and 1 in (visibility.shape[0], visibility.shape[-1]):
        visibility = visibility[0] if visibility.shape[0] == 1 else visibility[..., 0]
    if trace.ndim != 3 or trace.shape[-1] != 2 or visibility.shape != trace.shape[:2]:
        raise TraceShapeMismatch(f"trace {list(trace.shape)} and trace_visibility {list(visibility.shape)} are not "
                                 "[T, N, 2] and [T, N]; is this a Magma-Video-ToM record?")
    return trace, visibility.astype(bool)


def traced_size(width: int, height: int, config: ReleasedConfig) -> tuple[int, int]:
    """(width, height) of the frames a video's released traces are in pixels of."""
    if config.trace_height is None:
        return width, height
    return int(width * config.trace_height / height), config.trace_height


def trace_reach(rows: list[dict], config: ReleasedConfig) -> dict:
    """How far the visible points of these planned windows' traces reach in the frame ``config``
    assumes: the largest x and y as a share of its width and height, and the share of points
    outside it. Reads the records and the videos' headers only."""
    import av

    if not rows:
        return {}
    releases: dict[str, object] = {}
    reach_x, reach_y, outside, total = 0.0, 0.0, 0, 0
    for row in rows:
        folder = str(row["release_folder"])
        if folder not in releases:
            releases[folder] = open_release(Path(folder))
        record = release_record(releases[folder], int(row["release_row"]))
        trace, visibility = _trace_arrays(record["trace"], record["trace_visibility"])
        with av.open(str(row["video_path"])) as container:
            stream = container.streams.video[0]
            width, height = traced_size(stream.width, stream.height, config)
        points = trace[visibility] / np.array([width, height], np.float32)
        if len(points):
            reach_x, reach_y = max(reach_x, float(points[:, 0].max())), max(reach_y, float(points[:, 1].max()))
            outside += int(((points < 0) | (points >= 1)).any(axis=1).sum())
            total += len(points)
    frame = "native" if config.trace_height is None else f"{config.trace_height} high"
    return {"windows": len(rows), "frame": frame, "max_x": reach_x, "max_y": reach_y,
            "outside": outside / total if total else 0.0}
