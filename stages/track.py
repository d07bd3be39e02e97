"""Track: follow a grid of points from each window's first frame through the window.

Any point tracker plugs in through ``PointTracker``: a batch of equal-shape windows in, tracks
and visibility out. The registry ``TRACKERS`` is the one place that says, per tracker, which
module implements it, whether it needs weights and where it runs; adding a tracker means adding
one entry and one module. ``lk`` (pyramidal Lucas-Kanade, below) needs no weights and runs inside
the CPU tasks; ``cotracker3`` (``magma_data.models.cotracker3_predictor``) is the tracker Magma
used and runs batched in one actor per GPU. ``released`` stands for Magma's own CoTracker3 traces, which
come with the windows of ``--input magma_video_tom`` (``magma_data.stages.released_traces``), so
nothing is tracked. ``resolve_tracker`` turns ``auto`` into the tracker that will run, with its
weights' digest for the config hash.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal, Protocol

import cv2
import numpy as np
from annotated_types import Ge

from magma_data.stages.base import Column, Row, Stage
from magma_data.stages.decode import FRAMES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackConfig:
    #: "auto" (a tracker whose weights are found, else one that needs none) or a TRACKERS name
    tracker: TrackerName = "auto"
    #: grid_size x grid_size query points on the window's first frame (Magma: 15)
    grid_size: Annotated[int, Ge(1)] = 15
    checkpoint: str | None = None  # the tracker's weights; see TRACKERS and the tracker's find_weights
    variant: Literal["offline", "online"] = "offline"  # CoTracker3's (Magma: offline)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast on GPU
    #: windows per tracker call; None: the tracker chooses (CoTracker3 on a GPU from its free
    #: memory, see ``PointTracker.batch_size``; ``DEFAULT_BATCH_SIZE`` elsewhere)
    batch_size: Annotated[int, Ge(1)] | None = None
    device: str | None = None  # None = CUDA when available


#: Windows per tracker call when neither the config nor the device says otherwise.
DEFAULT_BATCH_SIZE = 8
#: The most windows a tracker call may hold, whatever the device's memory allows: a bound on the
#: host memory of a Ray batch and on the latency of one call.
MAX_WINDOWS_PER_CALL = 64


class PointTracker(Protocol):
    name: str

    def batch_size(self, frames: int, height: int, width: int) -> int:
        """How many windows of this shape one ``track`` call should take on this tracker's device."""
        ...

    def track(self, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """video uint8 [B, T, 3, H, W] RGB, equal shapes -> tracks float32 [B, T, N, 2] (x, y)
        in input pixels and visibility bool [B, T, N]; queries: the grid on frame 0."""
        ...


def grid_points(grid_size: int, height: int, width: int) -> np.ndarray:
    """The query grid [N, 2] (x, y), row by row, inset by width/64 as CoTracker3's reference grid is.

    The one grid every tracker queries (CoTracker3's predictor included), so N = grid_size².
    """
    if grid_size == 1:
        return np.array([[width / 2, height / 2]], np.float32)
    margin = width / 64
    ys = np.linspace(margin, height - margin, grid_size)
    xs = np.linspace(margin, width - margin, grid_size)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=-1).astype(np.float32)


class LucasKanadeTracker:
    """Pyramidal Lucas-Kanade from frame to frame, with a forward-backward consistency check.

    A point whose backward track misses its start by more than ``fb_threshold`` pixels, or that
    leaves the frame, is lost: invisible from then on, its position held where it was last seen.
    Chaining frame to frame keeps each step's motion small, which LK needs.
    """

    name = "lk"

    def __init__(self, grid_size: int = 15, fb_threshold: float = 1.0, window: int = 21, levels: int = 3):
        self.grid_size = grid_size
        self.fb_threshold = fb_threshold
        self.params = dict(
            winSize=(window, window),
            maxLevel=levels,
            criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
        )

    def batch_size(self, frames: int, height: int, width: int) -> int:
        return DEFAULT_BATCH_SIZE

    def track(self, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        results = [self._track_window(window) for window in video]
        return np.stack([r[0] for r in results]), np.stack([r[1] for r in results])

    def _track_window(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames, _, height, width = window.shape  # T 3 H W
        gray = [cv2.cvtColor(np.ascontiguousarray(f.transpose(1, 2, 0)), cv2.COLOR_RGB2GRAY) for f in window]
        points = grid_points(self.grid_size, height, width)
        tracks = np.empty((frames, len(points), 2), np.float32)
        visible = np.empty((frames, len(points)), bool)
        tracks[0], visible[0] = points, True
        alive = np.ones(len(points), bool)
        for t in range(1, frames):
            previous = tracks[t - 1].reshape(-1, 1, 2)
            forward, status, _ = cv2.calcOpticalFlowPyrLK(gray[t - 1], gray[t], previous, None, **self.params)
            backward, status_back, _ = cv2.calcOpticalFlowPyrLK(gray[t], gray[t - 1], forward, None, **self.params)
            forward, backward = forward.reshape(-1, 2), backward.reshape(-1, 2)
            consistent = np.linalg.norm(backward - tracks[t - 1], axis=1) < self.fb_threshold
            inside = (forward[:, 0] >= 0) & (forward[:, 0] < width) & (forward[:, 1] >= 0) & (forward[:, 1] < height)
            alive &= status.ravel().astype(bool) & status_back.ravel().astype(bool) & consistent & inside
            tracks[t] = np.where(alive[:, None], forward, tracks[t - 1])
            visible[t] = alive
        return tracks, visible


def point_tracker(config: TrackConfig, weights: Path | None) -> LucasKanadeTracker:
    """The ``lk`` entry's tracker (this module is its implementation)."""
    return LucasKanadeTracker(grid_size=config.grid_size)


@dataclass(frozen=True)
class TrackerSpec:
    """One tracker: how the run names and reports it, the module that implements it, what it needs.

    ``module`` provides ``point_tracker(config, weights) -> PointTracker`` and, when
    ``needs_weights``, ``find_weights(config) -> Path | None`` (None when no file is found; a path
    the user named that does not exist raises FileNotFoundError), ``weights_missing(config) -> str``
    (what to tell the user then) and ``check_weights(config, weights)`` (raises ValueError saying what
    is wrong with a file that is not the network's weights: the driver calls it before any work, so
    a bad file never reaches a worker). ``placement`` "tasks": plain CPU tasks that Ray fuses with
    decode, so frames never leave the worker that made them; "actors": one actor per GPU (one CPU
    actor without GPUs) that loads the weights once and batches many windows per forward; "source":
    the tracks come with the source's windows and the pipeline reads them instead of tracking (the
    module provides the stage that does).
    """

    name: str
    label: str
    module: str
    needs_weights: bool = False
    placement: Literal["tasks", "actors", "source"] = "tasks"
    citation: str = ""  # BibTeX, for the dataset card

    def implementation(self):
        return importlib.import_module(self.module)  # CoTracker3's imports torch: only when it is asked for


COTRACKER3_CITATION = """@inproceedings{karaev24cotracker3,
  title     = {CoTracker3: Simpler and Better Point Tracking by Pseudo-Labelling Real Videos},
  author    = {Nikita Karaev and Iurii Makarov and Jianyuan Wang and Natalia Neverova and Andrea Vedaldi and Christian Rupprecht},
  booktitle = {Proc. {arXiv:2410.11831}},
  year      = {2024}
}"""

#: Every tracker the pipelines can run; ``auto`` prefers, in this order, one whose weights are found.
TRACKERS = {
    spec.name: spec
    for spec in (
        TrackerSpec("lk", "Lucas-Kanade on CPU", "magma_data.stages.track", citation="""@inproceedings{lucas1981iterative,
  title     = {An Iterative Image Registration Technique with an Application to Stereo Vision},
  author    = {Bruce D. Lucas and Takeo Kanade},
  booktitle = {Proc. IJCAI},
  pages     = {674--679},
  year      = {1981}
}"""),
        TrackerSpec("cotracker3", "CoTracker3", "magma_data.models.cotracker3_predictor", needs_weights=True,
                    placement="actors", citation=COTRACKER3_CITATION),
        TrackerSpec("released", "Magma's released CoTracker3 traces (no tracking)", "magma_data.stages.released_traces",
                    placement="source", citation=COTRACKER3_CITATION),
    )
}


#: What ``TrackConfig.tracker`` takes: auto or a registered tracker.
TrackerName = Literal[("auto", *TRACKERS)]


def tracks_from_source(config: TrackConfig) -> bool:
    """The run reads tracks that come with the source's windows instead of tracking (``released``)."""
    spec = TRACKERS.get(config.tracker)
    return spec is not None and spec.placement == "source"


class TrackerUnavailable(Exception):
    """The tracker asked for cannot run: it needs weights and none were found, or the file named is not its weights."""


@dataclass(frozen=True)
class ResolvedTracker:
    """The tracker a run uses: its config (a registered name, the weights' path), their digest, and
    the line that tells the user what was picked."""

    config: TrackConfig
    weights_digest: str
    note: str

    @property
    def spec(self) -> TrackerSpec:
        return TRACKERS[self.config.tracker]


def file_digest(path: Path) -> str:
    """sha256 of a weights file, as the config hash names it (16 hex digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def resolve_tracker(config: TrackConfig) -> ResolvedTracker:
    """The tracker ``config`` asks for, with its weights found and digested.

    ``auto`` takes the first registered tracker with weights whose weights are found, else the
    first that needs none. Resolving a resolved config gives it back unchanged, so the runner and
    any caller before it agree on the config hash.
    """
    if config.tracker == "auto":
        return _resolve_auto(config)
    spec = TRACKERS.get(config.tracker)
    if spec is None:
        names = list(TRACKERS)
        raise ValueError(f"unknown tracker {config.tracker!r}; use auto, {', '.join(names[:-1])} or {names[-1]}")
    if not spec.needs_weights:
        return ResolvedTracker(config, "", f"tracker: {spec.label}")
    weights = _find_weights(spec, config)
    if weights is None:
        raise TrackerUnavailable(spec.implementation().weights_missing(config))
    return _with_weights(spec, config, weights)


def _find_weights(spec: TrackerSpec, config: TrackConfig) -> Path | None:
    try:
        return spec.implementation().find_weights(config)
    except FileNotFoundError as error:  # a file the user named is not there
        raise TrackerUnavailable(str(error)) from None


def _resolve_auto(config: TrackConfig) -> ResolvedTracker:
    not_found = []
    for spec in TRACKERS.values():
        if spec.needs_weights:
            weights = _find_weights(spec, config)
            if weights is not None:
                return _with_weights(spec, config, weights)
            not_found.append(spec.label)
    fallback = next(spec for spec in TRACKERS.values() if not spec.needs_weights and spec.placement != "source")
    why = f" (no {' or '.join(not_found)} checkpoint found; --checkpoint to use one)" if not_found else ""
    return ResolvedTracker(replace(config, tracker=fallback.name), "", f"tracker: {fallback.label}{why}")


def _with_weights(spec: TrackerSpec, config: TrackConfig, weights: Path) -> ResolvedTracker:
    resolved = replace(config, tracker=spec.name, checkpoint=str(weights))
    try:
        spec.implementation().check_weights(resolved, weights)
    except ValueError as error:
        raise TrackerUnavailable(str(error)) from None
    return ResolvedTracker(resolved, file_digest(weights), f"tracker: {spec.label} {config.variant} from {weights}")


def make_tracker(config: TrackConfig) -> PointTracker:
    """The tracker the config asks for, built by its registry entry's module.

    A resolved config (a run's: a registered name, the weights' path) is built as it is, since the
    driver has checked it; ``auto``, or a tracker without its weights' path, is resolved first.
    """
    spec = TRACKERS.get(config.tracker)
    if spec is None or (spec.needs_weights and not config.checkpoint):
        resolved = resolve_tracker(config)
        log.info(resolved.note)
        config, spec = resolved.config, resolved.spec
    weights = Path(config.checkpoint) if spec.needs_weights else None
    return spec.implementation().point_tracker(config, weights)


def _is_out_of_memory(error: BaseException) -> bool:
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


TRACKER = Column("tracker", "string", group="traces",
                 doc="the tracker that made the tracks (lk, cotracker3; released: Magma's Magma-Video-ToM traces)")
TRACKS = Column("tracks", "float32", ("T", "N", 2), group="traces",
                doc="x, y of every grid point in every frame, in pixels of the working frames; after the camera "
                    "stage, in the window's first frame wherever homography_ok")
VISIBILITY = Column("visibility", "bool", ("T", "N"), doc="the tracker sees the point in that frame", group="traces")
FRAME0 = Column("frame0", "uint8", ("H", "W", 3), doc="the window's first frame, kept for rendering")
TRACK_OOM_HALVINGS = Column("track_oom_halvings", "int32",
                            doc="how often the window's batch was halved after running out of memory (run summary)")


class TrackStage(Stage):
    """Batches windows of equal shape through the tracker; keeps the first frame for rendering.

    On out-of-memory the batch is halved and retried (the rows record how often); a batch that
    fails otherwise is retried window by window, so one bad window fails alone. The tracker is
    built on first use (``setup`` in an actor), so the stage itself is cheap to make and to ship.
    """

    name = "track"
    columns = (TRACKER, TRACKS, VISIBILITY, FRAME0, TRACK_OOM_HALVINGS)
    consumes = (FRAMES.name,)

    def __init__(self, config: TrackConfig, tracker: PointTracker | None = None):
        self.config = config
        self._tracker = tracker

    @property
    def tracker(self) -> PointTracker:
        if self._tracker is None:
            self._tracker = make_tracker(self.config)
        return self._tracker

    def setup(self) -> None:
        self.tracker  # noqa: B018  (loads the weights)

    def __call__(self, row: Row) -> Row:
        [result] = self.process([row])
        if isinstance(result, Exception):
            raise result
        return result

    def process(self, rows: list[Row]) -> list[Row | Exception]:
        """One result per row: its new columns, or the exception that failed it."""
        results: list[Row | Exception | None] = [None] * len(rows)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, row in enumerate(rows):
            by_shape.setdefault(row["frames"].shape, []).append(i)
        for shape, indices in by_shape.items():
            frames, height, width, _ = shape
            size = self.config.batch_size or self.tracker.batch_size(frames, height, width)
            for start in range(0, len(indices), size):
                self._track_group(rows, indices[start : start + size], results, 0)
        return results

    def _track_group(self, rows, indices, results, halvings: int) -> None:
        video = np.stack([rows[i]["frames"].transpose(0, 3, 1, 2) for i in indices])  # B T 3 H W
        try:
            tracks, visibility = self.tracker.track(video)
        except Exception as error:
            if _is_out_of_memory(error) and len(indices) > 1:
                middle = len(indices) // 2
                self._track_group(rows, indices[:middle], results, halvings + 1)
                self._track_group(rows, indices[middle:], results, halvings + 1)
            elif len(indices) > 1:
                for i in indices:
                    self._track_group(rows, [i], results, halvings)
            else:
                results[indices[0]] = error
            return
        for k, i in enumerate(indices):
            results[i] = {
                "tracker": self.tracker.name,
                "tracks": tracks[k].astype(np.float32),
                "visibility": visibility[k].astype(bool),
                "frame0": rows[i]["frames"][0],
                "track_oom_halvings": np.int32(halvings),
            }
