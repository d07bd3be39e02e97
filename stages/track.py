"""Track: follow a grid of points from each window's first frame through the window.

Any point tracker plugs in through ``PointTracker``: a batch of equal-shape windows in, tracks
and visibility out. ``LucasKanadeTracker`` needs no weights and runs anywhere;
CoTracker3 (``magma_data.models.cotracker3_predictor``) is the tracker Magma used and runs batched on GPU
actors. ``make_tracker`` picks one from the config and says which it picked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Protocol

import cv2
import numpy as np

from magma_data.stages.base import Row, StageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackConfig:
    tracker: str = "auto"  # "auto" (CoTracker3 when a checkpoint is found, else "lk") | "lk" | "cotracker3"
    grid_size: int = 15  # grid_size x grid_size query points on the window's first frame (Magma: 15)
    checkpoint: str | None = None  # CoTracker3 weights; see magma_data.models.cotracker3_predictor.find_checkpoint
    variant: str = "offline"  # CoTracker3 "offline" (Magma) | "online"
    precision: str = "fp32"  # "fp32" | "bf16" (autocast on GPU)
    batch_size: int = 8  # windows per tracker call
    device: str | None = None  # None = CUDA when available


class PointTracker(Protocol):
    name: str

    def track(self, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """video uint8 [B, T, 3, H, W] RGB, equal shapes -> tracks float32 [B, T, N, 2] (x, y)
        in input pixels and visibility bool [B, T, N]; queries: the grid on frame 0."""
        ...


class TrackFailed(StageError):
    pass


def grid_points(grid_size: int, height: int, width: int) -> np.ndarray:
    """The query grid [N, 2] (x, y), row by row, inset by width/64 as CoTracker3's grid is."""
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


def make_tracker(config: TrackConfig) -> PointTracker:
    """The tracker the config asks for; "auto" takes CoTracker3 when its weights can be found."""
    choice = config.tracker
    if choice not in ("auto", "lk", "cotracker3"):
        raise ValueError(f"unknown tracker {choice!r}; use auto, lk or cotracker3")
    checkpoint = None
    if choice in ("auto", "cotracker3"):
        from magma_data.models.cotracker3_predictor import find_checkpoint

        checkpoint = find_checkpoint(config.checkpoint, variant=config.variant)
        if choice == "cotracker3" and checkpoint is None:
            raise FileNotFoundError(
                "no CoTracker3 checkpoint found; pass --checkpoint, set MAGMA_COTRACKER3_CHECKPOINT, "
                f"or put scaled_{config.variant}.pth in the torch hub cache (~/.cache/torch/hub/checkpoints/)"
            )
    if checkpoint is not None:
        from magma_data.models.cotracker3_predictor import CoTracker3PointTracker

        log.info("tracker: CoTracker3 %s from %s", config.variant, checkpoint)
        return CoTracker3PointTracker(
            checkpoint, variant=config.variant, grid_size=config.grid_size,
            device=config.device, precision=config.precision,
        )
    log.info("tracker: Lucas-Kanade on CPU (no CoTracker3 checkpoint found)")
    return LucasKanadeTracker(grid_size=config.grid_size)


def _is_out_of_memory(error: BaseException) -> bool:
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


class TrackStage:
    """Batches windows of equal shape through the tracker; keeps the first frame for rendering.

    On out-of-memory the batch is halved and retried (the rows record how often); a batch that
    fails otherwise is retried window by window, so one bad window fails alone.
    """

    name: ClassVar[str] = "track"
    consumes: ClassVar[tuple[str, ...]] = ("frames",)

    def __init__(self, config: TrackConfig, tracker: PointTracker | None = None):
        self.config = config
        self.tracker = tracker or make_tracker(config)

    def placeholders(self) -> Row:
        return {
            "tracks": np.zeros((0, 0, 2), np.float32),
            "visibility": np.zeros((0, 0), bool),
            "frame0": np.zeros((0, 0, 3), np.uint8),
            "tracker": "",
            "track_oom_halvings": 0,
        }

    def track_rows(self, rows: list[Row]) -> list[Row | Exception]:
        """One result per row: its new columns, or the exception that failed it."""
        results: list[Row | Exception | None] = [None] * len(rows)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, row in enumerate(rows):
            by_shape.setdefault(row["frames"].shape, []).append(i)
        for indices in by_shape.values():
            for start in range(0, len(indices), self.config.batch_size):
                self._track_group(rows, indices[start : start + self.config.batch_size], results, 0)
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
                "tracks": tracks[k].astype(np.float32),
                "visibility": visibility[k].astype(bool),
                "frame0": rows[i]["frames"][0],
                "tracker": self.tracker.name,
                "track_oom_halvings": halvings,
            }
