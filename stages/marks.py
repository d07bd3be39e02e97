"""Marks: pick the few traces a Set-of-Mark image labels, split into moving and static.

Magma keeps traces visible in more than half of the window's frames from the marked frame
(``frame_pos``) on, calls a trace moving when its mean step over those frames (after camera
compensation) exceeds a threshold, clusters the moving and the static traces
with k-means on their positions, keeps one trace per cluster and numbers all marks with a random
permutation so an id does not tell whether its mark moves (docs/magma-som-tom.md §Video loader,
§k-means). Every draw here is seeded from the run seed and the sample id; faiss's k-means replaces
kmeans_pytorch (docs/environment.md §k-means).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import faiss
import numpy as np
from annotated_types import Ge, Interval, Predicate

from .base import Column, Row, Stage, StageError, seeded_rng
from .camera import mean_step_length, usable_points
from .marked_frame import FramePosRule, frame_pos


def ascending(bounds: tuple[int, int]) -> bool:
    """low <= high"""
    return bounds[0] <= bounds[1]


#: An inclusive range [low, high] of cluster counts.
ClusterRange = Annotated[tuple[Annotated[int, Ge(1)], Annotated[int, Ge(1)]], Predicate(ascending)]


@dataclass(frozen=True)
class MarksConfig:
    """Which frame is marked and which traces become marks (defaults: Magma's video loader)."""

    #: the frame the marks sit on (``frame_pos``, stages.marked_frame): "magma" draws it per sample,
    #: uniform below frame_rightmost (the video loader); "first" pins it to 0 (the robot loader)
    frame_pos: FramePosRule = "magma"
    #: frame_rightmost counts the steps before this share of the window's motion (Magma's
    #: ``step_rightmost_ratio``)
    step_rightmost_ratio: Annotated[float, Interval(gt=0, le=1)] = 0.5
    #: keep traces usable in more than this fraction of the window's frames from frame_pos on
    min_visible_fraction: Annotated[float, Interval(ge=0, le=1)] = 0.5
    #: a trace moves when its mean compensated step exceeds this many pixels per frame
    #: (video loader 3, demo 2, robot 1; manifests override it per source)
    moving_threshold_px: Annotated[float, Ge(0)] = 3.0
    #: inclusive range the number of moving clusters is drawn from
    moving_clusters: ClusterRange = (2, 5)
    #: inclusive range the number of static clusters is drawn from
    static_clusters: ClusterRange = (6, 14)
    #: Lloyd iterations of faiss k-means; fixed so the result does not depend on convergence tests
    kmeans_iterations: Annotated[int, Ge(1)] = 50


class MarksStage(Stage):
    """Chooses the marked traces of one window and gives them shuffled ids 1..K, sorted by id.

    K = 0 is a valid answer (no trace visible long enough); a window with no usable point in any
    frame is an error, since the tracker then lost everything.
    """

    name = "marks"
    columns = (
        Column("mark_ids", "int32", ("K",), doc="1..K, ascending", group="marks"),
        Column("mark_xy", "float32", ("K", 2), doc="each mark's position in the marked frame (frame_pos), pixels",
               group="marks"),
        Column("mark_positive", "bool", ("K",), doc="the mark moves", group="marks"),
        Column("mark_track_index", "int32", ("K",), doc="each mark's trace: an index into the N tracks",
               group="marks"),
        Column("num_visible_points", "int32", doc="traces usable long enough to be marked", group="marks"),
        Column("num_moving_points", "int32", doc="of those, the traces that move", group="marks"),
    )

    def __init__(self, config: MarksConfig | None = None, seed: int = 0):
        self.config = config or MarksConfig()
        self.seed = seed

    def __call__(self, row: Row) -> Row:
        cfg = self.config
        sample_id = row["sample_id"]
        tracks = np.asarray(row["tracks"], dtype=np.float32)
        usable = usable_points(row)
        if not usable.any():
            raise StageError(
                "no tracked point is visible in any frame of the window; "
                "the tracker lost everything (check the decoded frames)"
            )
        start = frame_pos(row)
        future, future_usable = tracks[start:], usable[start:]
        kept = np.flatnonzero(future_usable.sum(axis=0) > cfg.min_visible_fraction * len(future))
        moving = mean_step_length(future, future_usable)[kept] > cfg.moving_threshold_px
        features = _cluster_features(future[:, kept], future_usable[:, kept])

        groups = []
        for is_moving, cluster_range in ((True, cfg.moving_clusters), (False, cfg.static_clusters)):
            purpose = "moving" if is_moving else "static"
            low, high = cluster_range
            k = int(seeded_rng(self.seed, sample_id, f"{purpose} cluster count").integers(low, high + 1))
            kmeans_seed = int(seeded_rng(self.seed, sample_id, f"{purpose} kmeans").integers(2**31))
            members = np.flatnonzero(moving == is_moving)
            chosen = _representatives(features[members], k, kmeans_seed, cfg.kmeans_iterations)
            groups.append((kept[members[chosen]], is_moving))

        track_index = np.concatenate([indices for indices, _ in groups]).astype(np.int32)
        positive = np.concatenate([np.full(len(indices), flag) for indices, flag in groups])
        ids = seeded_rng(self.seed, sample_id, "mark ids").permutation(len(track_index)) + 1
        order = np.argsort(ids)
        return {
            "mark_ids": ids[order].astype(np.int32),
            "mark_xy": tracks[start, track_index[order]].reshape(-1, 2),
            "mark_positive": positive[order].astype(bool),
            "mark_track_index": track_index[order],
            "num_moving_points": np.int32(moving.sum()),
            "num_visible_points": np.int32(len(kept)),
        }


def _cluster_features(tracks: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """[N, 2T] float32 absolute positions per trace, as Magma clusters them.

    An unusable step takes the nearest earlier usable position (or, before the first one, the
    first usable position): an occluded or lost point is taken to stay where it was last seen,
    so the tracker's guesses behind an occluder do not pull it into another cluster.
    """
    num_frames, num_points = usable.shape
    frame = np.arange(num_frames)[:, None]
    last_seen = np.maximum.accumulate(np.where(usable, frame, -1), axis=0)
    first_seen = np.argmax(usable, axis=0)
    source = np.where(last_seen >= 0, last_seen, first_seen[None, :])
    filled = tracks[source, np.arange(num_points)[None, :]]
    return np.ascontiguousarray(filled.transpose(1, 0, 2).reshape(num_points, 2 * num_frames), np.float32)


def _representatives(features: np.ndarray, k: int, seed: int, iterations: int) -> np.ndarray:
    """Indices into ``features`` of one trace per non-empty k-means cluster, in cluster order.

    With no more traces than clusters (Magma's min(k, n)), every trace is its own cluster.

    The representative is the member nearest its centroid rather than Magma's random member:
    the mark then shows the cluster's typical motion, not an outlier, and the choice needs no
    extra draw (the randomness Magma relies on is already in k and the k-means seed).

    k-means runs on one thread: a few hundred traces are a millisecond of work, and OpenMP
    threads on a busy machine (many pipeline workers) turned that into ~150 ms of contention.
    """
    count = len(features)
    if count <= k:
        return np.arange(count)
    kmeans = faiss.Kmeans(
        features.shape[1],
        k,
        niter=iterations,
        seed=seed,
        min_points_per_centroid=1,
        max_points_per_centroid=max(count, 256),
        verbose=False,
    )
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        kmeans.train(features)
    finally:
        faiss.omp_set_num_threads(threads)
    distances = ((features[:, None, :] - kmeans.centroids[None, :, :]) ** 2).sum(axis=-1)
    labels = distances.argmin(axis=1)
    chosen = []
    for cluster in range(k):
        members = np.flatnonzero(labels == cluster)
        if len(members):
            chosen.append(members[distances[members, cluster].argmin()])
    return np.asarray(chosen, np.int64)
