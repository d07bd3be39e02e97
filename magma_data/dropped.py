"""A unit that did not become a row: it failed (``error``) or a rule of the recipe dropped it (``filtered``).

Nothing is lost: every planned unit ends as a data row, an error row or a filtered row. ``Dropped``
is the one record of why, wherever that is decided (a source's reader, the planner, a stage,
Ray, the sink). In the stream it travels as the ``drop_*`` columns of the unit's row, since Ray
batches hold plain columns; ``record`` turns it into a row of the ``errors`` or ``filtered`` table.
"""

from __future__ import annotations

import hashlib
import math
import traceback
from dataclasses import dataclass
from typing import Any, Literal

ERROR: Literal["error"] = "error"
FILTERED: Literal["filtered"] = "filtered"

#: The columns a unit's row carries for its drop in the stream; all empty while it is healthy
#: (``drop_value`` NaN: no figure).
NOT_DROPPED: dict[str, Any] = {"drop_kind": "", "drop_stage": "", "drop_reason": "", "drop_message": "",
                               "drop_attempt": 0, "drop_value": math.nan}
#: What every errors or filtered row says about the unit, taken from its row.
UNIT_KEYS = ("unit_id", "sample_id", "source", "clip_id", "video_path", "frame_index")


@dataclass(frozen=True)
class Dropped:
    """Why a unit is not a data row.

    ``stage`` is where it was decided ("plan" for the source and the planner, a stage's name,
    "ray" for a task Ray gave up on, "sink" for a row the shard format cannot hold); ``reason``
    is the error class, or the name of the rule that filtered the unit; ``attempt`` says how many
    tries the stage had; ``value`` is the figure a rule judged (a CLIP score, a shot's length in
    frames), None where it judged none (an idle verb) and for errors.
    """

    kind: Literal["error", "filtered"]
    stage: str
    reason: str
    message: str
    attempt: int = 1
    value: float | None = None

    @classmethod
    def failure(cls, stage: str, error: BaseException, attempt: int = 1) -> Dropped:
        message = str(error) or "".join(traceback.format_exception_only(type(error), error)).strip()
        return cls(ERROR, stage, type(error).__name__, message, attempt)

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> Dropped | None:
        """The drop a row carries, or None for a healthy row."""
        if not row.get("drop_kind"):
            return None
        value = float(row.get("drop_value", math.nan))
        return cls(str(row["drop_kind"]), str(row["drop_stage"]), str(row["drop_reason"]),  # type: ignore[arg-type]
                   str(row["drop_message"]), int(row["drop_attempt"]), None if math.isnan(value) else value)

    def columns(self) -> dict[str, Any]:
        """The ``drop_*`` columns that carry this drop in a unit's row."""
        return {"drop_kind": self.kind, "drop_stage": self.stage, "drop_reason": self.reason,
                "drop_message": self.message, "drop_attempt": self.attempt,
                "drop_value": math.nan if self.value is None else float(self.value)}


def dropped_unit(unit_id: str, source: str, dropped: Dropped, clip_id: str = "", video_path: str = "") -> dict:
    """A planned unit that yields no window (a source's problem, a clip the planner refused)."""
    return {
        "unit_id": unit_id,
        "sample_id": hashlib.sha1(unit_id.encode()).hexdigest()[:20],
        "source": source,
        "clip_id": clip_id,
        "video_path": video_path,
        "frame_index": -1,
        **dropped.columns(),
    }


def record(row: dict[str, Any], dropped: Dropped, config_hash: str) -> dict[str, Any]:
    """The row of the errors table (``kind`` error) or the filtered table that stands for this unit."""
    unit = {key: row.get(key, "") for key in UNIT_KEYS}
    unit["frame_index"] = int(row.get("frame_index", -1))
    if dropped.kind == FILTERED:
        return {**unit, "rule": dropped.reason, "value": dropped.value, "message": dropped.message,
                "config_hash": config_hash}
    return {**unit, "stage": dropped.stage, "error_class": dropped.reason, "message": dropped.message,
            "attempt": int(dropped.attempt), "config_hash": config_hash}
