"""Render: the Set-of-Mark image, the Trace-of-Mark targets and Magma's conversation text.

Follows Magma's recipe (docs/magma-som-tom.md §Video loader step 9, §Mark rendering; docs/magma-text.md)
with its data defects fixed (docs/magma-som-tom.md §Defects 3, 4):
grid coordinates are rounded, not truncated; a point is invisible when the tracker lost it, the
camera stage could not align its frame, or it lies outside [0, 256) on any side; inputs are never
modified; the SoM-only fallback reuses the clustered marks instead of drawing traces again.

Choices where Magma's code leaves room, in one place:

- Rounding: grid coordinates are ``floor(256·x/W + 0.5)``, clipped to 255 (a point just inside
  the right or bottom edge would otherwise round onto 256, off the grid).
- Invisible points are dropped before thinning (Magma thins first, so a lost point could be the
  "last kept" one and suppress a real point after it).
- ``tom_targets`` holds, per ToM mark, its whole thinned trace as ``[[x, y], ...]`` Python ints,
  the start point first; the conversation's future list is that trace without its first point.
- The SoM-only coordinates use the same rounding as the ToM targets.
- An empty task (folder videos often have none) drops the semantic turn and the sentence
  "The person is doing: {task}." from the ToM question; the rest of the template is kept word
  for word, so the text stays in Magma's distribution. A task's own final period is dropped
  there, so the sentence does not end in "..".
- A window with no marks gets no SoM/ToM turn; a video window left with no turn at all fails.
- ``<image>`` placeholders refer, in order, to ``image`` (semantic turn, when present) and then
  ``som_image``; the "robot" style has no semantic turn (its action turn is added elsewhere).
- Both images are the marked frame (``frame_pos``), with and without the marks; Magma's semantic
  turn shows the window's first frame. Keeping the unmarked frame the marks sit on is what lets
  ``magma-train --redraw-marks`` draw new ones, and a third image a row would cost about as much
  again as the two it holds (docs/magma-som-tom.md §Deviations).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Literal

import numpy as np
from annotated_types import Ge, Gt, Interval
from PIL import Image, ImageDraw, ImageFont

from magma_data.magma_text import GRID_SIZE, semantic_turn, som_turn, tom_turn

from .base import Column, Row, Stage, StageError
from .camera import usable_points
from .marked_frame import MARKED_FRAME, frame_pos

#: Magma's chat turns; the action stage of robot pipelines puts its turn first.
CONVERSATIONS = Column("conversations", "turn", ("turns",), group="text",
                       doc="Magma chat turns, ready to train: the semantic turn, then the ToM turn or the SoM-only "
                           "fallback; each `<image>` refers, in order, to image, then som_image")


@dataclass(frozen=True)
class RenderConfig:
    """How marks are drawn and the training text is written (defaults: Magma's video loader)."""

    #: "video": semantic turn + person ToM turn; "robot": robot ToM turn only (docs/magma-text.md)
    style: Literal["video", "robot"] = "video"
    #: JPEG quality of ``image`` and ``som_image``
    jpeg_quality: Annotated[int, Interval(ge=1, le=100)] = 95
    #: a ToM mark whose mean speed on the grid is below this (grid units per kept point) is
    #: dropped (ego4d 2, epic 1, robot 1)
    speed_threshold: Annotated[float, Ge(0)] = 2.0
    #: thinning: a trace point is kept only this far (grid units) from the last kept one
    min_point_distance: Annotated[float, Ge(0)] = 2.0
    #: a ToM mark needs more than T // this many kept points; None for no minimum (robot loader)
    min_points_divisor: Annotated[int, Ge(1)] | None = 4
    #: side of the square grid the conversation's coordinates live on
    grid_size: Annotated[int, Ge(2)] = GRID_SIZE
    #: mark font size: the smallest whose "55" box reaches this fraction of the image width
    font_width_fraction: Annotated[float, Interval(gt=0, le=1)] = 0.03


class RenderStage(Stage):
    """Draws the marks on the marked frame and writes the SoM/ToM conversation."""

    name = "render"
    columns = (
        Column("image", "image", doc="the marked frame (frame_pos; the window's first frame when pinned)",
               group="images"),
        Column("som_image", "image", doc="the marked frame with the numbered marks drawn", group="images"),
        CONVERSATIONS,
        Column("tom_mark_ids", "int32", ("M",), doc="ids of the marks with a ToM trace, ascending", group="ToM"),
        Column("tom_targets", "int32", ("M", "L", 2), ragged=True, group="ToM",
               doc="each ToM mark's thinned trace on the 256 grid, start point first"),
        Column("tom_steps", "int32", doc="future steps the ToM question asks for; 0 without a ToM turn",
               group="ToM"),
    )
    consumes = (MARKED_FRAME.name,)

    def __init__(self, config: RenderConfig | None = None):
        self.config = config or RenderConfig()

    def __call__(self, row: Row) -> Row:
        cfg = self.config
        frame = np.asarray(row["marked_frame"])
        width, height = int(row["image_width"]), int(row["image_height"])
        if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
            raise StageError(
                f"marked_frame is {frame.dtype} {frame.shape}, expected uint8 ({height}, {width}, 3) "
                "to match image_width/image_height; check the decode stage"
            )
        ids = np.asarray(row["mark_ids"], dtype=np.int64)
        mark_xy = np.asarray(row["mark_xy"], dtype=np.float64)
        positive = np.asarray(row["mark_positive"], dtype=bool)

        picture = Image.fromarray(frame)
        marked = draw_marks(picture, ids, mark_xy, mark_font(width, cfg.font_width_fraction))

        tom_ids, targets = self._tom_targets(row, ids, positive, width, height)
        task = str(row["task"]).strip()
        conversations = []
        if cfg.style == "video" and task:
            conversations += semantic_turn(task)
        if len(tom_ids):
            conversations += tom_turn(cfg.style, task, ids, tom_ids, targets, cfg.grid_size)
        elif len(ids):
            grid_xy = to_grid(mark_xy, width, height, cfg.grid_size)
            conversations += som_turn(ids, grid_xy, cfg.grid_size)
        if cfg.style == "video" and not conversations:
            raise StageError(
                "window has no marks and no task text, so no conversation can be written; "
                "give the source a task text or check the tracks of this window"
            )

        return {
            "image": _jpeg(picture, cfg.jpeg_quality),
            "som_image": _jpeg(marked, cfg.jpeg_quality),
            "tom_mark_ids": tom_ids.astype(np.int32),
            "tom_targets": [target.tolist() for target in targets],
            "tom_steps": np.int32(max((len(target) - 1 for target in targets), default=0)),
            "conversations": conversations,
        }

    def _tom_targets(
        self, row: Row, ids: np.ndarray, positive: np.ndarray, width: int, height: int
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Ids (ascending) and grid traces of the moving marks that survive Magma's rules.

        Fewer than two moving marks is Magma's static fallback: no ToM, SoM only.
        """
        if positive.sum() < 2:
            return np.zeros(0, np.int64), []
        start = frame_pos(row)  # the ToM future: the frames from the marked one on
        tracks = np.asarray(row["tracks"], dtype=np.float64)[start:]
        usable = usable_points(row)[start:]
        track_index = np.asarray(row["mark_track_index"], dtype=np.int64)
        kept_ids, targets = [], []
        for mark in np.argsort(ids):
            if not positive[mark]:
                continue
            point = track_index[mark]
            target = self._grid_trace(tracks[:, point], usable[:, point], width, height)
            if target is not None:
                kept_ids.append(ids[mark])
                targets.append(target)
        return np.asarray(kept_ids, np.int64), targets

    def _grid_trace(
        self, trace: np.ndarray, usable: np.ndarray, width: int, height: int
    ) -> np.ndarray | None:
        """[L, 2] int32 thinned grid trace of one mark, or None when Magma would skip it."""
        cfg = self.config
        grid = quantise(trace, width, height, cfg.grid_size)
        on_grid = usable & ((grid >= 0) & (grid < cfg.grid_size)).all(axis=1)
        points = thin(grid[on_grid], cfg.min_point_distance)
        if cfg.min_points_divisor and len(points) <= len(trace) // cfg.min_points_divisor:
            return None
        if len(points) < 2:
            return None
        speed = np.linalg.norm(np.diff(points, axis=0), axis=1).mean()
        if speed < cfg.speed_threshold:
            return None
        return round_to_grid(points, cfg.grid_size)


def quantise(xy: np.ndarray, width: int, height: int, grid_size: int) -> np.ndarray:
    """Pixel positions [..., 2] to float grid positions: x' = size·x/W, y' = size·y/H."""
    return np.asarray(xy, dtype=np.float64) * (grid_size / np.array([width, height], np.float64))


def round_to_grid(grid_xy: np.ndarray, grid_size: int) -> np.ndarray:
    """Float grid positions to the nearest integer cell, clipped to [0, size - 1]."""
    return np.clip(np.floor(grid_xy + 0.5), 0, grid_size - 1).astype(np.int32)


def to_grid(xy: np.ndarray, width: int, height: int, grid_size: int) -> np.ndarray:
    """Pixel positions to integer grid cells."""
    return round_to_grid(quantise(xy, width, height, grid_size), grid_size)


def thin(points: np.ndarray, min_distance: float) -> np.ndarray:
    """Keep a point only if it is at least ``min_distance`` from the last kept one (first kept)."""
    if len(points) == 0:
        return points
    kept = [points[0]]
    for point in points[1:]:
        if np.linalg.norm(point - kept[-1]) >= min_distance:
            kept.append(point)
    return np.asarray(kept)


@lru_cache(maxsize=32)
def mark_font(image_width: int, width_fraction: float = 0.03) -> ImageFont.FreeTypeFont:
    """The smallest bundled font whose "55" reaches ``width_fraction`` of the image width.

    Magma's rule (docs/magma-som-tom.md §Mark rendering) with Pillow's scalable default font in place of Arial: the size grows
    from 1 until min(right, bottom) of textbbox((0, 0), "55") is at least the target.
    """
    target = width_fraction * image_width
    size = 1
    while True:
        font = ImageFont.load_default(size=size)
        if min(_text_size("55", font)) >= target:
            return font
        size += 1


def draw_marks(
    image: Image.Image, ids: np.ndarray, xy: np.ndarray, font: ImageFont.FreeTypeFont
) -> Image.Image:
    """A copy of ``image`` with a filled red disc and the white id at each mark (docs/magma-som-tom.md §Mark rendering)."""
    marked = image.copy()
    draw = ImageDraw.Draw(marked)
    for mark_id, (x, y) in zip(ids, xy):
        text = str(int(mark_id))
        text_w, text_h = _text_size(text, font)
        radius = max(text_w, text_h) // 2 + 1
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill="red")
        draw.text((x - text_w // 2, y - text_h // 2 - 3), text, fill="white", font=font)
    return marked


def _text_size(text: str, font: ImageFont.FreeTypeFont) -> tuple[int, int]:
    """Right and bottom of the text box drawn at the origin, as Magma measures text."""
    _, _, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox(
        (0, 0), text, font=font
    )
    return right, bottom


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
