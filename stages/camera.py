"""Camera-motion removal: bring every frame's track positions into the window's marked frame.

Magma fits, per frame, a homography from that frame's track positions to the marked frame's
(``frame_pos``, ``stages.marked_frame``; RANSAC, 4 px), for the frames after it and those before
alike, and applies them when more than 80 % of the traces kept from ``frame_pos`` on move over
1 px per frame from there, or always for egocentric sources (docs/magma-som-tom.md §Video loader
step 5, §Homography, §Camera-motion rule). We do the same, with the checks the released code lacks
(docs/magma-som-tom.md §Defects 1):
each fit uses only points seen in both frames, records its inlier ratio and inlier RMS error, and
a frame whose fit is missing or implausible stays uncompensated, flagged in ``homography_ok`` and
named in ``camera_status``.

The raw tracks are not stored: where ``homography_ok[t]``, raw = H_t⁻¹ applied to ``tracks[t]``;
elsewhere ``tracks[t]`` is the raw position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import cv2
import numpy as np
from annotated_types import Ge, Gt, Interval

from .base import Column, Row, Stage, StageError
from .marked_frame import frame_pos
from .track import TRACKS


@dataclass(frozen=True)
class CameraConfig:
    """How camera motion is detected and removed (defaults: Magma's video loader)."""

    #: compensate every window, whatever the motion rule says (manifests set it for egocentric video)
    force: bool = False
    #: a trace "moves" when its mean step exceeds this many pixels per frame (loaders: 1, demo: 0.5)
    global_motion_px: Annotated[float, Ge(0)] = 1.0
    #: the camera is taken to move when more than this fraction of kept traces moves
    global_motion_fraction: Annotated[float, Interval(ge=0, le=1)] = 0.8
    #: traces visible in more than this fraction of the frames from frame_pos on are the ones the motion rule counts
    min_visible_fraction: Annotated[float, Interval(ge=0, le=1)] = 0.5
    #: RANSAC reprojection threshold in pixels (cv2.findHomography)
    reprojection_threshold_px: Annotated[float, Gt(0)] = 4.0
    #: fewer points seen in both frames than this and the frame is not fitted (4 is the bare minimum)
    min_fit_points: Annotated[int, Ge(4)] = 8
    #: a fit whose RANSAC inliers are a smaller share of its points is treated as failed
    min_inlier_ratio: Annotated[float, Interval(ge=0, le=1)] = 0.25
    #: a fit that scales the image area by more than this factor (or less than its inverse) is implausible
    max_area_change: Annotated[float, Ge(1)] = 4.0


def in_frame_visibility(
    tracks: np.ndarray, visibility: np.ndarray, width: int, height: int
) -> np.ndarray:
    """[T, N] bool: the tracker sees the point and it lies inside [0, W) x [0, H).

    Trackers extrapolate points that leave the image; those positions are guesses, so they
    count as invisible everywhere downstream.
    """
    x, y = tracks[..., 0], tracks[..., 1]
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    return np.asarray(visibility, dtype=bool) & inside


def usable_points(row: Row) -> np.ndarray:
    """[T, N] bool: positions later stages may trust, given the camera stage's output.

    In a compensated window a frame whose homography failed is in different coordinates from
    the rest, so none of its points are usable.
    """
    usable = in_frame_visibility(
        row["tracks"], row["visibility"], row["image_width"], row["image_height"]
    )
    if row["camera_motion"]:
        usable &= np.asarray(row["homography_ok"], dtype=bool)[:, None]
    return usable


def mean_step_length(tracks: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """[N] mean per-frame displacement in pixels over the steps whose both ends are usable.

    Magma averages over every step, so a point that leaves the frame or loses its track moves by
    the tracker's guesses; counting only trusted steps keeps those points static. A point with
    no trusted step has length 0.
    """
    steps = np.linalg.norm(np.diff(tracks.astype(np.float64), axis=0), axis=-1)
    trusted = usable[1:] & usable[:-1]
    count = trusted.sum(axis=0)
    total = np.where(trusted, steps, 0.0).sum(axis=0)
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def raw_tracks(tracks: np.ndarray, homography: np.ndarray, homography_ok: np.ndarray) -> np.ndarray:
    """[T, N, 2] the tracker's positions before compensation: H_t⁻¹ applied to ``tracks[t]`` where
    ``homography_ok[t]``; elsewhere the stored positions are the raw ones."""
    tracks = np.asarray(tracks, np.float64)
    raw = tracks.copy()
    for frame in np.flatnonzero(np.asarray(homography_ok, bool)):
        raw[frame] = apply_homography(tracks[frame], np.linalg.inv(np.asarray(homography[frame], np.float64)))
    return raw.astype(np.float32)


def apply_homography(points: np.ndarray, homography: np.ndarray) -> np.ndarray:
    """[N, 2] points mapped through a 3x3 homography, in float64."""
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ homography.T
    return homogeneous[:, :2] / homogeneous[:, 2:3]


@dataclass(frozen=True)
class _Fit:
    homography: np.ndarray
    inlier_ratio: float
    reprojection_error: float


CAMERA_COLUMNS = (
    Column("homography", "float32", ("T", 3, 3), group="camera",
           doc="frame t -> the marked frame (frame_pos); identity where not applied"),
    Column("homography_ok", "bool", ("T",),
           doc="frame t is aligned to the marked frame (all false when not compensated)", group="camera"),
    Column("inlier_ratio", "float32", ("T",), doc="share of RANSAC inliers of frame t's fit; 0 where not fitted",
           group="camera"),
    Column("reprojection_error", "float32", ("T",), doc="inlier RMS of frame t's fit in pixels; NaN where not fitted",
           group="camera"),
    Column("camera_motion", "bool", doc="the window is compensated: the motion rule fired, or compensation is forced",
           group="camera"),
    Column("moving_fraction", "float32", group="camera",
           doc="share of the traces kept from frame_pos on that move over global_motion_px, before compensation"),
    Column("camera_status", "string", group="camera",
           doc='"static", "applied", "forced" or "fallback: frames ... could not be fitted (reasons)"'),
)


class CameraStage(Stage):
    """Removes camera motion from a window's tracks with per-frame homographies to the marked frame.

    Replaces ``tracks`` (now in the coordinates of frame ``frame_pos`` where aligned) and adds the
    fits and their quality (``CAMERA_COLUMNS``). The motion rule reads the frames from
    ``frame_pos`` on, as Magma's does; every other frame, before it or after, is fitted.
    """

    name = "camera"
    columns = (TRACKS, *CAMERA_COLUMNS)

    def __init__(self, config: CameraConfig | None = None):
        self.config = config or CameraConfig()

    def __call__(self, row: Row) -> Row:
        cfg = self.config
        tracks = np.asarray(row["tracks"], dtype=np.float32)
        width, height = int(row["image_width"]), int(row["image_height"])
        _check_shapes(tracks, np.asarray(row["visibility"]))
        visible = in_frame_visibility(tracks, row["visibility"], width, height)
        num_frames, reference = len(tracks), frame_pos(row)
        if not 0 <= reference < num_frames - 1:
            raise StageError(f"frame_pos {reference} is outside the window's first {num_frames - 1} frames; "
                             "check the track stage's draw")

        future, future_visible = tracks[reference:], visible[reference:]
        kept = future_visible.sum(axis=0) > cfg.min_visible_fraction * len(future)
        lengths = mean_step_length(future, future_visible)[kept]
        moving_fraction = float((lengths > cfg.global_motion_px).mean()) if kept.any() else 0.0
        rule_fires = moving_fraction > cfg.global_motion_fraction

        homography = np.tile(np.eye(3, dtype=np.float32), (num_frames, 1, 1))
        homography_ok = np.zeros(num_frames, bool)
        inlier_ratio = np.zeros(num_frames, np.float32)
        reprojection_error = np.full(num_frames, np.nan, np.float32)
        camera_motion = bool(rule_fires or cfg.force)
        compensated = tracks.copy()
        failures: dict[int, str] = {}

        if camera_motion:
            homography_ok[reference], inlier_ratio[reference], reprojection_error[reference] = True, 1.0, 0.0
            for frame in range(num_frames):
                if frame == reference:
                    continue
                fit = self._fit(tracks, visible, frame, reference, width, height)
                if isinstance(fit, str):
                    failures[frame] = fit
                    continue
                homography[frame] = fit.homography.astype(np.float32)
                homography_ok[frame] = True
                inlier_ratio[frame] = fit.inlier_ratio
                reprojection_error[frame] = fit.reprojection_error
                compensated[frame] = apply_homography(tracks[frame], homography[frame])

        if not camera_motion:
            status = "static"
        elif failures:
            frames = ",".join(str(frame) for frame in failures)
            reasons = "; ".join(f"{frame}: {reason}" for frame, reason in failures.items())
            status = f"fallback: frames {frames} could not be fitted ({reasons})"
        else:
            status = "forced" if cfg.force else "applied"

        return {
            "tracks": compensated,
            "homography": homography,
            "homography_ok": homography_ok,
            "inlier_ratio": inlier_ratio,
            "reprojection_error": reprojection_error,
            "camera_motion": np.bool_(camera_motion),
            "moving_fraction": np.float32(moving_fraction),
            "camera_status": status,
        }

    def _fit(
        self, tracks: np.ndarray, visible: np.ndarray, frame: int, reference: int, width: int, height: int
    ) -> _Fit | str:
        """The homography from ``frame`` to ``reference``, or why there is none."""
        cfg = self.config
        both = visible[frame] & visible[reference]
        count = int(both.sum())
        if count < cfg.min_fit_points:
            return f"{count} points visible in frames {reference} and {frame}, need {cfg.min_fit_points}"
        source, target = tracks[frame, both], tracks[reference, both]
        try:
            homography, mask = cv2.findHomography(
                source, target, cv2.RANSAC, cfg.reprojection_threshold_px
            )
        except cv2.error:
            homography = None
        if homography is None:
            return "degenerate point configuration"
        inliers = mask.ravel().astype(bool)
        ratio = inliers.mean()
        if ratio < cfg.min_inlier_ratio:
            return f"inlier ratio {ratio:.2f} below {cfg.min_inlier_ratio:.2f}"
        implausible = self._implausible(homography, width, height)
        if implausible:
            return implausible
        residual = apply_homography(source[inliers], homography) - target[inliers]
        rms = float(np.sqrt((residual**2).sum(axis=1).mean()))
        return _Fit(homography, float(ratio), rms)

    def _implausible(self, homography: np.ndarray, width: int, height: int) -> str | None:
        """Why the homography cannot be a camera motion within one window, or None."""
        corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64)
        depth = np.concatenate([corners, np.ones((4, 1))], axis=1) @ homography[2]
        if (depth <= 0).any():
            return "homography sends image corners behind the camera"
        quad = apply_homography(corners, homography)
        edges = np.roll(quad, -1, axis=0) - quad
        following = np.roll(edges, -1, axis=0)
        turns = edges[:, 0] * following[:, 1] - edges[:, 1] * following[:, 0]
        if not (turns > 0).all():
            return "homography folds or mirrors the image"
        shoelace = quad[:, 0] * np.roll(quad[:, 1], -1) - quad[:, 1] * np.roll(quad[:, 0], -1)
        area_change = abs(shoelace.sum()) / 2 / (width * height)
        if not 1 / self.config.max_area_change <= area_change <= self.config.max_area_change:
            return f"homography scales the image area by {area_change:.2f}"
        return None


def _check_shapes(tracks: np.ndarray, visibility: np.ndarray) -> None:
    if tracks.ndim != 3 or tracks.shape[-1] != 2:
        raise StageError(f"tracks must be [T, N, 2], got shape {tracks.shape}; check the tracker")
    if visibility.shape != tracks.shape[:2]:
        raise StageError(
            f"visibility {visibility.shape} does not match tracks {tracks.shape[:2]}; "
            "check the tracker"
        )
    if len(tracks) < 2:
        raise StageError(
            f"window has {len(tracks)} frame(s); camera motion needs at least 2 "
            "(raise the window length)"
        )
