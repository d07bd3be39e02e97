"""Track: follow a grid of points from each window's first frame through the window.

Any point tracker plugs in through two small classes: a ``PointTracker`` (a batch of equal-shape
windows in, tracks and visibility out) and its registry entry, a ``Tracker`` registered by name
with ``@register_tracker`` beside its class, as timm registers models. The entry is the one place
that says how the run names and cites the tracker, which licence its tracks carry, whether it
needs weights (found, checked on the driver before any work, digested for the config hash) and
where it runs (``placement``: the pipeline's track step takes it from there). ``lk`` (pyramidal
Lucas-Kanade, below) needs no weights and runs inside the CPU tasks; ``cotracker3`` (the network
in ``magma_data.models``, weights CC-BY-NC) is the tracker Magma used and ``tapnextpp`` (TAPNext++,
code and weights Apache-2.0) one whose tracks a company may use; both run batched in one actor per
GPU. ``released`` stands for Magma's own
CoTracker3 traces, which come with the windows of ``--input magma_video_tom``
(``magma_data.stages.released_traces``), so nothing is tracked. A tracker defined elsewhere (a
test's, a plug-in's) registers the same way when its module is imported. ``resolve_tracker``
turns ``auto`` into the tracker that will run, with its weights' digest for the config hash.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Protocol

import cv2
import numpy as np
from annotated_types import Ge

from magma_data.models.point_tracking import DEFAULT_BATCH_SIZE, MAX_WINDOWS_PER_CALL, grid_points
from magma_data.registry import Registry
from magma_data.stages.base import Column, OneOf, Placement, Row, Stage, update_with_file
from magma_data.stages.decode import FRAMES
from magma_data.stages.marked_frame import FIRST_FRAME, MARKED_FRAME, MarkedFrame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackConfig:
    #: "auto" (a tracker whose weights are found, else one that needs none) or a TRACKERS name
    tracker: TrackerName = "auto"
    #: grid_size x grid_size query points on the window's first frame (Magma: 15)
    grid_size: Annotated[int, Ge(1)] = 15
    checkpoint: str | None = None  # the tracker's weights; see TRACKERS and the tracker's find_weights
    variant: Literal["offline", "online"] = "offline"  # CoTracker3's (Magma: offline)
    #: the side of the square a tracker resizes frames to, where it has a choice (TAPNext++: 256 for
    #: tapnextpp_ckpt.pt, 512 for tapnextpp_512.ckpt); None: the tracker's own (CoTracker3's is fixed)
    resolution: Annotated[int, Ge(8)] | None = None
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast on GPU
    #: windows per tracker call; None: the tracker chooses (CoTracker3 on a GPU from its free
    #: memory, see ``PointTracker.batch_size``; ``DEFAULT_BATCH_SIZE`` elsewhere)
    batch_size: Annotated[int, Ge(1)] | None = None
    device: str | None = None  # None = CUDA when available


class PointTracker(Protocol):
    name: str

    def batch_size(self, frames: int, height: int, width: int) -> int:
        """How many windows of this shape one ``track`` call should take on this tracker's device."""
        ...

    def track(self, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """video uint8 [B, T, 3, H, W] RGB, equal shapes -> tracks float32 [B, T, N, 2] (x, y)
        in input pixels and visibility bool [B, T, N]; queries: the grid on frame 0."""
        ...


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


class Tracker(Protocol):
    """A tracker the pipelines can run: the registry entry of one ``PointTracker``.

    ``label`` and ``citation`` are how the run and the dataset card name it; ``placement`` is where
    its track step runs ("tasks": in the CPU tasks, fused with decode, for trackers without a model
    to load; "actors": one actor per GPU, or one CPU actor, that loads the weights once and batches
    many windows per forward); ``from_source``: the tracks come with the source's windows and the
    pipeline reads them instead of tracking (``released``). A tracker that ``needs_weights`` finds
    them (``find_weights``: None when no file is found; a path the user named that does not exist
    raises FileNotFoundError), says what to do when there are none (``weights_missing``) and checks
    a file (``check_weights`` raises ValueError saying what is wrong: the driver calls it before any
    work, so a bad file never reaches a worker). Subclass it to inherit the defaults below.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    citation: ClassVar[str] = ""  # BibTeX, for the dataset card
    #: the licence the tracks carry from what made them (a card's licence id: the weights' licence, or
    #: the released traces' own); None: no weights made them, so no licence of theirs applies
    tracks_license: ClassVar[str | None] = None
    placement: ClassVar[Placement] = "tasks"
    needs_weights: ClassVar[bool] = False
    #: ``auto`` may pick it when its weights are found
    in_auto: ClassVar[bool] = True
    from_source: ClassVar[bool] = False

    def describe(self, config: TrackConfig) -> str:
        """How the run names the tracker with its settings (the line that says what was picked)."""
        return self.label

    def check_config(self, config: TrackConfig) -> None:
        """Raises ValueError when ``config`` asks what this tracker cannot do (the driver asks before any work)."""
        if config.resolution is not None:
            raise ValueError(f"the {self.label} tracker has no resolution to choose; leave track.resolution unset")

    def find_weights(self, config: TrackConfig) -> Path | None:
        return None

    def weights_missing(self, config: TrackConfig) -> str:
        return f"no weights found for the {self.label} tracker; pass --checkpoint"

    def check_weights(self, config: TrackConfig, weights: Path) -> None:
        """Raises ValueError when ``weights`` are not this tracker's."""

    def point_tracker(self, config: TrackConfig, weights: Path | None) -> PointTracker:
        """The tracker itself, built where it runs (``weights``: the checked file, when it needs one)."""
        ...


#: Every tracker the pipelines can run, by name; ``auto`` prefers, in this order, one whose weights are found.
TRACKERS: Registry[Tracker] = Registry("tracker")
#: Class decorator: the tracker becomes ``--tracker <its name>``.
register_tracker = TRACKERS.register


#: What ``TrackConfig.tracker`` takes: auto or a registered tracker (asked when a value is checked,
#: so trackers registered later count too).
TrackerName = Annotated[str, OneOf(lambda: ("auto", *TRACKERS))]


@register_tracker
class LucasKanade(Tracker):
    name = "lk"
    label = "Lucas-Kanade on CPU"
    citation = """@inproceedings{lucas1981iterative,
  title     = {An Iterative Image Registration Technique with an Application to Stereo Vision},
  author    = {Bruce D. Lucas and Takeo Kanade},
  booktitle = {Proc. IJCAI},
  pages     = {674--679},
  year      = {1981}
}"""

    def point_tracker(self, config: TrackConfig, weights: Path | None) -> LucasKanadeTracker:
        return LucasKanadeTracker(grid_size=config.grid_size)


COTRACKER3_CITATION = """@inproceedings{karaev24cotracker3,
  title     = {CoTracker3: Simpler and Better Point Tracking by Pseudo-Labelling Real Videos},
  author    = {Nikita Karaev and Iurii Makarov and Jianyuan Wang and Natalia Neverova and Andrea Vedaldi and Christian Rupprecht},
  booktitle = {Proc. {arXiv:2410.11831}},
  year      = {2024}
}"""


@register_tracker
class CoTracker3(Tracker):
    """Our CoTracker3 network (``magma_data.models.cotracker3_predictor``), imported only when it is
    asked for: it imports torch, which CPU workers of a Lucas-Kanade run never need."""

    name = "cotracker3"
    label = "CoTracker3"
    citation = COTRACKER3_CITATION
    tracks_license = "cc-by-nc-4.0"
    placement = "actors"
    needs_weights = True

    def describe(self, config: TrackConfig) -> str:
        return f"{self.label} {config.variant}"

    def find_weights(self, config: TrackConfig) -> Path | None:
        """``config.checkpoint``, else the environment, else the hub cache."""
        from magma_data.models.cotracker3_predictor import find_checkpoint

        return find_checkpoint(config.checkpoint, variant=config.variant)

    def weights_missing(self, config: TrackConfig) -> str:
        from magma_data.models.cotracker3_predictor import checkpoint_missing

        return checkpoint_missing(config.variant)

    def check_weights(self, config: TrackConfig, weights: Path) -> None:
        """Every tensor's name and shape against the variant's network."""
        from magma_data.models.cotracker3_predictor import read_weights

        read_weights(weights, config.variant)

    def point_tracker(self, config: TrackConfig, weights: Path | None):
        from magma_data.models.cotracker3_predictor import CoTracker3PointTracker

        return CoTracker3PointTracker(weights, variant=config.variant, grid_size=config.grid_size,
                                      device=config.device, precision=config.precision)


@register_tracker
class TAPNextPP(Tracker):
    """Our TAPNext++ network (``magma_data.models.tapnextpp_predictor``): code and weights Apache-2.0, so
    its tracks carry no non-commercial condition. ``auto`` never picks it: it stays CoTracker3 when
    that checkpoint is found, else Lucas-Kanade."""

    name = "tapnextpp"
    label = "TAPNext++"
    citation = """@inproceedings{jung2026tapnextpp,
  title     = {TAPNext++: What's Next for Tracking Any Point (TAP)?},
  author    = {Sebastian Jung and Artem Zholus and Martin Sundermeyer and Carl Doersch and Ross Goroshin and David Joseph Tan and Sarath Chandar and Rudolph Triebel and Federico Tombari},
  booktitle = {Proc. CVPR Findings},
  pages     = {8429--8438},
  year      = {2026}
}"""
    tracks_license = "apache-2.0"
    placement = "actors"
    needs_weights = True
    in_auto = False

    @staticmethod
    def resolution(config: TrackConfig) -> int:
        from magma_data.models.tapnextpp_predictor import DEFAULT_RESOLUTION

        return config.resolution or DEFAULT_RESOLUTION

    def describe(self, config: TrackConfig) -> str:
        side = self.resolution(config)
        return f"{self.label} at {side}x{side}"

    def check_config(self, config: TrackConfig) -> None:
        from magma_data.models.tapnextpp_predictor import check_resolution

        check_resolution(self.resolution(config))

    def find_weights(self, config: TrackConfig) -> Path | None:
        """``config.checkpoint``, else the environment, else the resolution's released file in the cache."""
        from magma_data.models.tapnextpp_predictor import find_checkpoint

        return find_checkpoint(config.checkpoint, self.resolution(config))

    def weights_missing(self, config: TrackConfig) -> str:
        from magma_data.models.tapnextpp_predictor import checkpoint_missing

        return checkpoint_missing(self.resolution(config))

    def check_weights(self, config: TrackConfig, weights: Path) -> None:
        """Every tensor's name and shape against the network (the file mapped, not read)."""
        from magma_data.models.tapnextpp_predictor import read_weights

        read_weights(weights, mmap=True)

    def point_tracker(self, config: TrackConfig, weights: Path | None):
        from magma_data.models.tapnextpp_predictor import TAPNextPPPointTracker

        return TAPNextPPPointTracker(weights, resolution=self.resolution(config), grid_size=config.grid_size,
                                     device=config.device, precision=config.precision)


@register_tracker
class ReleasedTraces(Tracker):
    """Magma's released traces: the windows of ``--input magma_video_tom`` carry them."""

    name = "released"
    label = "Magma's released CoTracker3 traces (no tracking)"
    citation = COTRACKER3_CITATION
    tracks_license = "mit"  # Magma-Video-ToM's licence, under which Microsoft released them
    from_source = True

    def point_tracker(self, config: TrackConfig, weights: Path | None) -> PointTracker:
        raise ValueError("the released traces come with the windows of --input magma_video_tom; nothing tracks them")


def tracks_from_source(config: TrackConfig) -> bool:
    """The run reads tracks that come with the source's windows instead of tracking (``released``)."""
    tracker = TRACKERS.get(config.tracker)
    return tracker is not None and tracker.from_source


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
    def tracker(self) -> Tracker:
        return TRACKERS[self.config.tracker]


def file_digest(path: Path) -> str:
    """sha256 of a weights file, as the config hash names it (16 hex digits)."""
    digest = hashlib.sha256()
    update_with_file(digest, path)
    return digest.hexdigest()[:16]


def resolve_tracker(config: TrackConfig) -> ResolvedTracker:
    """The tracker ``config`` asks for, with its weights found and digested.

    ``auto`` takes the first registered tracker with weights whose weights are found, else the
    first that needs none. Resolving a resolved config gives it back unchanged, so the runner and
    any caller before it agree on the config hash.
    """
    if config.tracker == "auto":
        return _resolve_auto(config)
    tracker = TRACKERS.get(config.tracker)
    if tracker is None:
        names = list(TRACKERS)
        raise ValueError(f"unknown tracker {config.tracker!r}; use auto, {', '.join(names[:-1])} or {names[-1]}")
    _check_config(tracker, config)
    if not tracker.needs_weights:
        return ResolvedTracker(config, "", f"tracker: {tracker.describe(config)}")
    weights = _find_weights(tracker, config)
    if weights is None:
        raise TrackerUnavailable(tracker.weights_missing(config))
    return _with_weights(tracker, config, weights)


def _find_weights(tracker: Tracker, config: TrackConfig) -> Path | None:
    try:
        return tracker.find_weights(config)
    except FileNotFoundError as error:  # a file the user named is not there
        raise TrackerUnavailable(str(error)) from None


def _check_config(tracker: Tracker, config: TrackConfig) -> None:
    try:
        tracker.check_config(config)
    except ValueError as error:
        raise TrackerUnavailable(str(error)) from None


def _resolve_auto(config: TrackConfig) -> ResolvedTracker:
    not_found = []
    for tracker in TRACKERS.values():
        if tracker.needs_weights and tracker.in_auto:
            weights = _find_weights(tracker, config)
            if weights is not None:
                _check_config(tracker, config)
                return _with_weights(tracker, config, weights)
            not_found.append(tracker.label)
    fallback = next(t for t in TRACKERS.values() if not t.needs_weights and not t.from_source)
    _check_config(fallback, config)
    why = f" (no {' or '.join(not_found)} checkpoint found; --checkpoint to use one)" if not_found else ""
    return ResolvedTracker(replace(config, tracker=fallback.name), "", f"tracker: {fallback.describe(config)}{why}")


def _with_weights(tracker: Tracker, config: TrackConfig, weights: Path) -> ResolvedTracker:
    resolved = replace(config, tracker=tracker.name, checkpoint=str(weights))
    try:
        tracker.check_weights(resolved, weights)
    except ValueError as error:
        raise TrackerUnavailable(str(error)) from None
    return ResolvedTracker(resolved, file_digest(weights), f"tracker: {tracker.describe(config)} from {weights}")


def make_tracker(config: TrackConfig, tracker: Tracker | None = None) -> PointTracker:
    """The point tracker the config asks for, built by its registry entry (``tracker``, else the
    registered one of ``config.tracker``).

    A resolved config (a run's: a registered name, the weights' path) is built as it is, since the
    driver has checked it; ``auto``, or a tracker without its weights' path, is resolved first.
    """
    tracker = tracker or TRACKERS.get(config.tracker)
    if tracker is None or (tracker.needs_weights and not config.checkpoint):
        resolved = resolve_tracker(config)
        log.info(resolved.note)
        config, tracker = resolved.config, resolved.tracker
    weights = Path(config.checkpoint) if tracker.needs_weights else None
    return tracker.point_tracker(config, weights)


def _is_out_of_memory(error: BaseException) -> bool:
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


TRACKER = Column("tracker", "string", group="traces",
                 doc="the tracker that made the tracks (lk, cotracker3, tapnextpp; released: Magma's Magma-Video-ToM "
                     "traces)")
TRACKS = Column("tracks", "float32", ("T", "N", 2), group="traces",
                doc="x, y of every grid point in every frame, in pixels of the working frames; after the camera "
                    "stage, in the marked frame's coordinates (frame_pos) wherever homography_ok")
VISIBILITY = Column("visibility", "bool", ("T", "N"), doc="the tracker sees the point in that frame", group="traces")
TRACK_OOM_HALVINGS = Column("track_oom_halvings", "int32",
                            doc="how often the window's batch was halved after running out of memory (run summary)")


class TrackStage(Stage):
    """Batches windows of equal shape through the tracker; keeps the marked frame for rendering.

    On out-of-memory the batch is halved and retried (the rows record how often); a batch that
    fails otherwise is retried window by window, so one bad window fails alone. The tracker is
    built on first use (``setup`` in an actor), so the stage itself is cheap to make and to ship.
    Which frame is marked (``frame_pos``) needs the tracks, and the decoded frames go no further
    than this stage, so it is drawn here (``stages.marked_frame``).
    """

    name = "track"
    consumes = (FRAMES.name,)

    def __init__(self, config: TrackConfig, tracker: PointTracker | None = None,
                 marked_frame: MarkedFrame = FIRST_FRAME):
        """``tracker``: a point tracker to use as it is (tests); else the registered one of ``config.tracker``,
        built on first use. The stage keeps its registry entry, so a worker builds it without the registry.
        ``marked_frame``: how the frame the marks sit on is drawn (the pipelines pass the run's; frame 0 else)."""
        self.config = config
        self.entry = TRACKERS.get(config.tracker)  # None while ``auto``: resolved on first use
        self._tracker = tracker
        self.marked_frame = marked_frame
        self.columns = (TRACKER, TRACKS, VISIBILITY, MARKED_FRAME, TRACK_OOM_HALVINGS, *marked_frame.columns)

    @property
    def placement(self) -> Placement:
        """Where the stage runs: where its tracker's registry entry says."""
        return self.entry.placement if self.entry is not None else "tasks"

    @property
    def batch_size(self) -> int:
        """Windows a Ray batch hands the stage: a tracker call's (``--batch-size``); without it, in actors,
        as many as the largest call may hold (the tracker fills its own batch from the device's memory),
        in tasks ``DEFAULT_BATCH_SIZE``."""
        if self.config.batch_size:
            return self.config.batch_size
        return MAX_WINDOWS_PER_CALL if self.placement == "actors" else DEFAULT_BATCH_SIZE

    @property
    def tracker(self) -> PointTracker:
        if self._tracker is None:
            self._tracker = make_tracker(self.config, self.entry)
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
            frame_pos = self.marked_frame.draw(tracks[k], rows[i])
            results[i] = {
                "tracker": self.tracker.name,
                "tracks": tracks[k].astype(np.float32),
                "visibility": visibility[k].astype(bool),
                "marked_frame": rows[i]["frames"][frame_pos],
                "track_oom_halvings": np.int32(halvings),
                **self.marked_frame.columns_for(frame_pos),
            }
