"""Run stages inside Ray Data: the bridge between ``map_batches`` batches and per-window rows.

Stages take and return one row (a dict); Ray hands over a batch (a dict of NumPy columns). These
adapters convert between the two, keep every row in the stream — a row that fails gets its
error recorded, placeholder columns, and passes through the remaining stages untouched — and
retry transient errors a bounded number of times. Pipelines call them from ``map_batches``.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

from magma_data.faults import crash_on_clips, crash_once
from magma_data.stages.base import Row, Stage
from magma_data.stages.track import TrackConfig, TrackStage

#: Errors worth another try: the input may be fine and the system briefly not (network file
#: systems, object stores). Anything else fails the window at once.
TRANSIENT_ERRORS = (TimeoutError, ConnectionError, BlockingIOError, InterruptedError)
MAX_ATTEMPTS = 3
RETRY_BACKOFF_S = 0.5

#: Ray-level retries of a task whose worker process died (killed for memory, a segfault in a
#: decoder, a lost node). Ray Data's default is unbounded, which turns a video that crashes its
#: decoder every time into an endless loop; bounded, its units end as WorkerLost error rows.
#: Tracker actors may themselves restart without limit: on preemptible machines they die for
#: reasons no unit caused. Pipelines pass these to ``map_batches``.
TASK_RETRIES = 3
CPU_TASK_ARGS = {"max_retries": TASK_RETRIES}
ACTOR_ARGS = {"max_restarts": -1, "max_task_retries": TASK_RETRIES}


@dataclass(frozen=True)
class Resources:
    """Where the tracker runs: plain tasks (weight-free trackers), or actors (one per GPU, or one on CPU)."""

    tracker_in_tasks: bool = False
    tracker_actors: int = 1
    gpus_per_tracker: float = 0.0
    cpus_per_tracker: float = 1.0


def batch_to_rows(batch: dict[str, np.ndarray]) -> list[Row]:
    """A batch's columns -> one dict per row."""
    size = len(next(iter(batch.values()))) if batch else 0
    return [{key: column[i] for key, column in batch.items()} for i in range(size)]


def rows_to_batch(rows: list[Row]) -> dict[str, np.ndarray]:
    """Stack equal-shape arrays; anything ragged or nested becomes an object column."""
    batch = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        first = values[0]
        if isinstance(first, np.ndarray) and all(
            isinstance(v, np.ndarray) and v.shape == first.shape and v.dtype == first.dtype for v in values
        ):
            batch[key] = np.stack(values)
        elif isinstance(first, (np.ndarray, list, dict, bytes)):
            column = np.empty(len(values), dtype=object)
            column[:] = values
            batch[key] = column
        else:
            batch[key] = np.array(values)
    return batch


def mark_failed(row: Row, stage: str, error: BaseException, attempt: int = 1) -> None:
    row["error_stage"] = stage
    row["error_class"] = type(error).__name__
    row["error_message"] = str(error) or "".join(traceback.format_exception_only(type(error), error)).strip()
    row["error_attempt"] = attempt


def apply_stage(row: Row, stage: Stage) -> None:
    """Run ``stage`` on ``row`` in place; failures become the row's error, with retries for transient ones.

    ``attempt`` in the error row says how many tries the stage had.
    """
    if row["error_stage"]:
        row.update(stage.placeholders())
        return
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            row.update(stage(row))
            return
        except TRANSIENT_ERRORS as error:
            if attempt == MAX_ATTEMPTS:
                mark_failed(row, stage.name, error, attempt)
            else:
                time.sleep(RETRY_BACKOFF_S * attempt)
        except Exception as error:  # one bad window must never stop the run
            mark_failed(row, stage.name, error, attempt)
            break
    row.update(stage.placeholders())


def run_stage(batch: dict[str, np.ndarray], stage: Stage) -> dict[str, np.ndarray]:
    """``map_batches`` function for a CPU stage (the stage object travels with the task)."""
    crash_once("in_stage")
    rows = batch_to_rows(batch)
    if not rows:
        return batch
    crash_on_clips(row.get("clip_id") for row in rows)
    for row in rows:
        apply_stage(row, stage)
        for column in stage.consumes:
            row.pop(column, None)
    return rows_to_batch(rows)


def track_batch(batch: dict[str, np.ndarray], stage: TrackStage) -> dict[str, np.ndarray]:
    """``map_batches`` function for the track stage: healthy windows go to the tracker together."""
    crash_once("in_track")
    rows = batch_to_rows(batch)
    if not rows:
        return batch
    healthy = [row for row in rows if not row["error_stage"]]
    results = stage.track_rows(healthy) if healthy else []
    for row, result in zip(healthy, results):
        if isinstance(result, BaseException):
            mark_failed(row, stage.name, result)
            row.update(stage.placeholders())
        else:
            row.update(result)
    for row in rows:
        if row["error_stage"] and "tracks" not in row:
            row.update(stage.placeholders())
        for column in stage.consumes:
            row.pop(column, None)
    return rows_to_batch(rows)


class TrackActor:
    """``map_batches`` class for a tracker with weights: loads the model once per actor."""

    def __init__(self, config: TrackConfig):
        self.stage = TrackStage(config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return track_batch(batch, self.stage)


def track_windows(windows, config: TrackConfig, resources: Resources):
    """The track step of every pipeline, placed by what the tracker needs.

    A tracker with weights (CoTracker3) runs in an actor pool, one actor per GPU, so the model is
    loaded once and many windows share a forward pass. A weight-free tracker (Lucas-Kanade) runs
    as plain tasks: Ray fuses them with decode and the CPU stages after, so decoded frames never
    leave the worker that made them and every core works on whole windows.
    """
    import ray

    if resources.tracker_in_tasks:
        return windows.map_batches(
            track_batch, fn_args=(TrackStage(config),), batch_size=config.batch_size, num_cpus=1, **CPU_TASK_ARGS
        )
    return windows.map_batches(
        TrackActor,
        fn_constructor_args=(config,),
        batch_size=config.batch_size,
        num_gpus=resources.gpus_per_tracker,
        num_cpus=resources.cpus_per_tracker,
        compute=ray.data.ActorPoolStrategy(size=resources.tracker_actors),
        **ACTOR_ARGS,
    )


def new_unit_row(plan_row: dict[str, Any]) -> Row:
    """A planned window entering the stream, with empty error columns."""
    return {**plan_row, "error_stage": "", "error_class": "", "error_message": "", "error_attempt": 0}
