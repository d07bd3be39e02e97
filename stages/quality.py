"""Quality: rules after tracking that cost nothing extra, each off unless asked for; their figures are columns.

Magma's motion rule stays where Magma applies it, implicitly: a window with no moving mark gets
no ToM turn but the SoM-only fallback (the render stage); it is not dropped. Peer engines drop
more before their costly steps (Cosmos-Curate and NeMo Curator filter on motion, Data-Juicer on
a Farneback motion score; docs/peers.md §Curation filters). Here the tracks already hold what
such rules measure, so this stage reads them, after the camera stage and before marks:

- ``mean_motion_px``: the mean per-frame step, after camera compensation, of the traces Magma's
  visibility filter keeps (the motion the marks stage thresholds); 0 when none is kept.
  Rule ``MotionBelowMinimum`` when under ``min_mean_motion_px``.
- ``invisible_fraction``: the share of the N grid points that visibility filter drops (usable in
  at most ``marks.min_visible_fraction`` of the frames). Rule ``TooManyInvisiblePoints`` when over
  ``max_invisible_fraction``.
- camera fallback: a compensated window with frames the camera stage could not align
  (``camera_status`` "fallback: ..."; its figure is the count of those frames). Rule
  ``CameraFallback`` with ``drop_camera_fallback``.

Magma applied none of the three, so all are off by default. When several fire, one names the
drop, in this order: camera fallback (unaligned frames make the other two figures unreliable),
invisible points, motion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from annotated_types import Ge, Interval

from .base import Column, Filtered, Row, Stage
from .camera import mean_step_length, usable_points
from .marked_frame import frame_pos
from .marks import MarksConfig


@dataclass(frozen=True)
class QualityConfig:
    """Rules that drop tracked windows on purpose; None or false is off (Magma applied none)."""

    #: drop a window whose kept traces move less than this on average, in pixels per frame after
    #: camera compensation
    min_mean_motion_px: Annotated[float, Ge(0)] | None = None
    #: drop a window where more than this share of the grid points fails the visibility filter
    max_invisible_fraction: Annotated[float, Interval(ge=0, le=1)] | None = None
    #: drop a compensated window with frames the camera stage could not align
    drop_camera_fallback: bool = False

    @property
    def enabled(self) -> bool:
        """Any rule is on (a pipeline runs the stage only then, so rows of other runs keep their columns)."""
        return (self.min_mean_motion_px is not None or self.max_invisible_fraction is not None
                or self.drop_camera_fallback)


def quality_note(config: QualityConfig) -> str:
    """The line a run says once when a quality rule is on: which."""
    rules = [f"mean motion >= {config.min_mean_motion_px:g} px" if config.min_mean_motion_px is not None else "",
             f"invisible share <= {config.max_invisible_fraction:g}" if config.max_invisible_fraction is not None
             else "", "no camera fallback" if config.drop_camera_fallback else ""]
    return f"quality rules after tracking: {', '.join(rule for rule in rules if rule)}"


MEAN_MOTION = Column("mean_motion_px", "float32", group="quality",
                     doc="mean per-frame step of the traces kept for marks, after camera compensation, pixels")
INVISIBLE_FRACTION = Column("invisible_fraction", "float32", group="quality",
                            doc="share of the grid points too rarely visible to be marked")

#: The rules, by the name the filtered table gives them.
CAMERA_FALLBACK, TOO_MANY_INVISIBLE = "CameraFallback", "TooManyInvisiblePoints"
MOTION_BELOW_MINIMUM = "MotionBelowMinimum"
#: The figure each rule judges: a row it filters carries that figure as its ``value`` (the camera
#: fallback's, the count of unaligned frames, is no column).
RULE_FIGURES = {MOTION_BELOW_MINIMUM: MEAN_MOTION, TOO_MANY_INVISIBLE: INVISIBLE_FRACTION}


def figure_thresholds(config: QualityConfig) -> dict[str, float | None]:
    """The threshold of each figure a rule judges, as ``config`` sets it (None: the rule is off)."""
    return {MEAN_MOTION.name: config.min_mean_motion_px, INVISIBLE_FRACTION.name: config.max_invisible_fraction}


class QualityStage(Stage):
    """Measures each tracked window's motion and visibility, and filters it when a rule that is on fires."""

    name = "quality"
    columns = (MEAN_MOTION, INVISIBLE_FRACTION)

    def __init__(self, config: QualityConfig, marks: MarksConfig | None = None):
        self.config = config
        #: the visibility filter is the marks stage's, so "kept" means what it means there
        self.min_visible_fraction = (marks or MarksConfig()).min_visible_fraction

    def __call__(self, row: Row) -> Row | Filtered:
        figures = self.figures(row)
        rule = self._first_rule(row, figures)
        return rule if rule is not None else figures

    def figures(self, row: Row) -> Row:
        start = frame_pos(row)  # the frames the marks stage reads: from the marked one on
        tracks = np.asarray(row["tracks"], np.float32)[start:]
        usable = usable_points(row)[start:]
        kept = usable.sum(axis=0) > self.min_visible_fraction * len(tracks)
        motion = mean_step_length(tracks, usable)[kept]
        return {MEAN_MOTION.name: np.float32(motion.mean() if kept.any() else 0.0),
                INVISIBLE_FRACTION.name: np.float32(1.0 - kept.mean() if kept.size else 1.0)}

    def _first_rule(self, row: Row, figures: Row) -> Filtered | None:
        cfg = self.config
        unaligned = int((~np.asarray(row["homography_ok"], bool)).sum()) if bool(row["camera_motion"]) else 0
        if cfg.drop_camera_fallback and unaligned:
            return Filtered(CAMERA_FALLBACK, f"camera compensation could not align {unaligned} of the window's "
                            f"frames ({row['camera_status']}); quality.drop_camera_fallback=false keeps such windows",
                            value=unaligned)
        invisible = float(figures[INVISIBLE_FRACTION.name])
        if cfg.max_invisible_fraction is not None and invisible > cfg.max_invisible_fraction:
            return Filtered(TOO_MANY_INVISIBLE,
                            f"{invisible:.1%} of the grid points are visible in too few frames to be marked, over "
                            f"quality.max_invisible_fraction {cfg.max_invisible_fraction}", value=invisible)
        motion = float(figures[MEAN_MOTION.name])
        if cfg.min_mean_motion_px is not None and motion < cfg.min_mean_motion_px:
            return Filtered(MOTION_BELOW_MINIMUM,
                            f"the window's kept traces move {motion:.3f} px per frame on average after camera "
                            f"compensation, under quality.min_mean_motion_px {cfg.min_mean_motion_px}", value=motion)
        return None
