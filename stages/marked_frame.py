"""The marked frame: the frame of a window that Magma's marks sit on, drawn per sample, and its pixels.

Magma's video loader does not mark the window's first frame: per sample it draws ``frame_pos``
uniformly in ``[0, frame_rightmost)``, where ``frame_rightmost`` counts the steps before half of
the window's motion has happened (the mean step of all points, its cumulative share under
``step_rightmost_ratio`` 0.5, kept within [1, T - 1]); the visibility filter, camera compensation,
the marks and the ToM future all start there, and the marks are drawn on that frame
(docs/magma-som-tom.md §Video loader, steps 3-8). Its robot loader uses frame 0.

The draw needs the tracks, and its frame must be kept while the decoded frames still exist, so
the stage that makes the tracks draws it as it hands its frames on (``TrackStage``,
``ReleasedTracesStage``), seeded by the run seed and the sample id; rows store it as
``frame_pos``. With the rule "first" (``marks.frame_pos=first``: the robot loader, and runs made
before the draw existed) ``frame_pos`` is 0 and rows keep the columns they had without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .base import Column, Row, seeded_rng

#: How the marked frame is chosen: "magma" draws it by the video loader's rule, "first" pins it to 0.
FramePosRule = Literal["magma", "first"]

FRAME_POS = Column("frame_pos", "int32", group="marks",
                   doc="the window frame the marks sit on, drawn by Magma's rule (uniform below frame_rightmost); "
                       "image, som_image, marks, the visibility filter, camera compensation and the ToM future "
                       "start there (absent with marks.frame_pos=first: 0)")
MARKED_FRAME = Column("marked_frame", "uint8", ("H", "W", 3), doc="the frame at frame_pos, kept for rendering")


@dataclass(frozen=True)
class MarkedFrame:
    """Which frame of a window is marked: the rule, Magma's ratio, and the run seed the draw derives from."""

    rule: FramePosRule = "magma"
    step_rightmost_ratio: float = 0.5
    seed: int = 0

    @property
    def columns(self) -> tuple[Column, ...]:
        """The written column the draw adds: ``frame_pos``, unless it is pinned to 0."""
        return (FRAME_POS,) if self.rule == "magma" else ()

    def draw(self, tracks: np.ndarray, row: Row) -> int:
        """The ``frame_pos`` of the row's window, whose tracks are ``tracks``: 0 with the rule "first"; else
        uniform below ``frame_rightmost``, seeded by the run seed and the row's sample id."""
        if self.rule == "first" or len(tracks) < 2:
            return 0
        rightmost = frame_rightmost(tracks, self.step_rightmost_ratio)
        return int(seeded_rng(self.seed, str(row["sample_id"]), "frame_pos").integers(0, rightmost))

    def columns_for(self, frame_pos: int) -> Row:
        """The row's ``frame_pos`` column, when the rule writes one."""
        return {FRAME_POS.name: np.int32(frame_pos)} if self.rule == "magma" else {}


#: The marked frame before issue 24, and Magma's robot loader's: frame 0, no column.
FIRST_FRAME = MarkedFrame(rule="first")


def frame_rightmost(tracks: np.ndarray, ratio: float = 0.5) -> int:
    """Magma's ``frame_rightmost``: the steps whose cumulative share of the window's motion is under ``ratio``.

    The motion of a step is the mean distance every point moves (visibility ignored, as Magma's
    ``track_length``), on the tracker's raw positions; the count is kept within [1, T - 1].
    """
    steps = np.linalg.norm(np.diff(np.asarray(tracks, np.float64), axis=0), axis=-1).mean(axis=1)
    share = np.cumsum(steps) / (1e-5 + steps.sum())
    return min(max(1, int((share < ratio).sum())), len(tracks) - 1)


def frame_pos(row: Row) -> int:
    """The row's marked frame: its ``frame_pos``, or 0 where the rule pinned it (no column)."""
    return int(row.get(FRAME_POS.name, 0))
