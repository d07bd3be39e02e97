"""Run stages inside Ray Data: the bridge between ``map_batches`` batches and per-window rows.

Stages take and return rows (dicts); Ray hands over a batch (a dict of NumPy columns). These
adapters convert between the two, keep every row in the stream — a row that fails gets its
drop recorded, placeholder columns, and passes through the remaining stages untouched — and
retry transient errors a bounded number of times. ``map_stage`` is the one Ray Data call of a
stage, placed as its pipeline's spec says (``Pipeline.build``); the runner starts Ray and streams
the finished rows with ``finished_rows``.

A task holds many windows, and Ray fuses the CPU steps into one task, so a video that kills its
worker every time takes the task's other windows down with it. ``finished_rows(..., alone=True)``
runs windows one per task (one window a block, every step's batch size 1): the runner re-runs the
windows of the tasks Ray gave up on that way, and only the poisoning windows stay lost.
"""

from __future__ import annotations

import contextvars
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from magma_data.dropped import FILTERED, NOT_DROPPED, Dropped
from magma_data.faults import crash_on_clips, crash_once
from magma_data.stages.base import TRANSIENT_ERRORS, Filtered, Placement, Row, Stage

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
RETRY_BACKOFF_S = 0.5

#: Ray-level retries of a task whose worker process died (killed for memory, a segfault in a
#: decoder, a lost node). Ray Data's default is unbounded, which turns a video that crashes its
#: decoder every time into an endless loop; bounded, its units end as WorkerLost error rows.
#: Tracker actors may themselves restart without limit: on preemptible machines they die for
#: reasons no unit caused. ``map_stage`` passes these to ``map_batches``.
TASK_RETRIES = 3
CPU_TASK_ARGS = {"max_retries": TASK_RETRIES}
ACTOR_ARGS = {"max_restarts": -1, "max_task_retries": TASK_RETRIES}

#: True while a pipeline's graph is built to run each window in a task of its own (``finished_rows``).
_ONE_WINDOW_PER_TASK = contextvars.ContextVar("one_window_per_task", default=False)


def task_batch_size(batch_size: int) -> int:
    """The batch size of a pipeline step: its own, or 1 while windows run one per task."""
    return 1 if _ONE_WINDOW_PER_TASK.get() else batch_size


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


def apply_stage(rows: list[Row], stage: Stage) -> None:
    """Run ``stage`` on the healthy ``rows`` in place; failures become the row's drop, and so does a
    ``Filtered`` answer (a rule of the recipe dropped the row: the filtered table).

    Transient errors (``TRANSIENT_ERRORS``) are retried, the rows that hit them together, up to
    ``MAX_ATTEMPTS`` tries; ``drop_attempt`` says how many tries the stage had. Rows that failed,
    here or before, get the stage's placeholders, so the batch keeps one schema.
    """
    pending = [row for row in rows if not row["drop_kind"]]
    for attempt in range(1, MAX_ATTEMPTS + 1):
        retry = []
        for row, result in zip(pending, stage.process(pending) if pending else []):
            if isinstance(result, Filtered):
                row.update(Dropped(FILTERED, stage.name, result.rule, result.message, value=result.value).columns())
            elif not isinstance(result, BaseException):
                row.update(result)
            elif isinstance(result, TRANSIENT_ERRORS) and attempt < MAX_ATTEMPTS:
                retry.append(row)
            else:
                row.update(Dropped.failure(stage.name, result, attempt).columns())
        if not retry:
            break
        time.sleep(RETRY_BACKOFF_S * attempt)
        pending = retry
    for row in rows:
        if row["drop_kind"]:
            row.update(stage.placeholders())
        for column in stage.consumes:
            row.pop(column, None)


def run_stage(batch: dict[str, np.ndarray], stage: Stage) -> dict[str, np.ndarray]:
    """``map_batches`` function of a stage in plain tasks (the stage object travels with the task)."""
    crash_once("in_stage")
    crash_once(f"in_{stage.name}")
    rows = batch_to_rows(batch)
    if not rows:
        return batch
    crash_on_clips(row.get("clip_id") for row in rows)
    apply_stage(rows, stage)
    return rows_to_batch(rows)


class StageActor:
    """``map_batches`` class of a stage that holds a model: ``setup`` loads it once per actor."""

    def __init__(self, stage: Stage):
        self.stage = stage
        stage.setup()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_stage(batch, self.stage)


def map_stage(windows, stage: Stage, batch_size: int, placement: Placement, num_cpus: float = 1.0,
              gpu_share: float = 1.0):
    """``stage`` over ``windows`` as one ``map_batches``, with bounded retries: the one place a placement
    becomes Ray's resources.

    "tasks": plain Ray tasks, which Ray fuses with the neighbouring task steps. "actors": a pool of
    ``StageActor``, each loading the stage's model once: one actor per GPU, each holding
    ``gpu_share`` of it, on a cluster with GPUs; one actor on CPU otherwise.
    """
    import ray

    if placement == "tasks":
        return windows.map_batches(run_stage, fn_args=(stage,), batch_size=task_batch_size(batch_size),
                                   num_cpus=num_cpus, **CPU_TASK_ARGS)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return windows.map_batches(
        StageActor, fn_constructor_args=(stage,), batch_size=task_batch_size(batch_size),
        num_gpus=gpu_share if gpus else 0.0, num_cpus=num_cpus, compute=ray.data.ActorPoolStrategy(size=max(gpus, 1)),
        **ACTOR_ARGS,
    )


class RemoteCalls:
    """Calls a function in a Ray task and waits for its answer: planning work that decodes (shot
    detection) runs on the cluster's CPUs, in worker processes, while the planner's threads wait.

    ``slots`` is how many such calls the cluster runs at once (its CPUs): the planner keeps that
    many in flight. An exception the function raises is raised here as it was raised there; a task
    whose worker died is retried ``TASK_RETRIES`` times, then raises Ray's error.
    """

    def __init__(self):
        import ray

        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote = ray.remote(_call).options(num_cpus=1, max_retries=TASK_RETRIES)

    def __call__(self, function: Callable[..., Any], *args: Any) -> Any:
        import ray

        try:
            return ray.get(self._remote.remote(function, *args))
        except ray.exceptions.RayTaskError as error:
            raise error.cause from None


def _call(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)


def new_unit_row(plan_row: dict[str, Any]) -> Row:
    """A planned window entering the stream, with empty drop columns."""
    return {**plan_row, **NOT_DROPPED}


def worker_lost() -> Dropped:
    """The drop of a unit Ray gave up on: its task failed after ``TASK_RETRIES`` retries."""
    return Dropped("error", "ray", "WorkerLost",
                   "the Ray task holding this window failed, and so did a task holding this window alone: its worker "
                   "died on every retry (out of memory, a crash in a decoder or tracker) or the batch adapter raised; "
                   "Ray's error is in the session's logs/ray-data/ray-data.log (on the terminal with --verbose); "
                   "--overwrite redoes the source", attempt=1 + TASK_RETRIES)


def init_ray(address: str | None, num_cpus: int | None) -> None:
    """Connect to ``address`` (a cluster), or start an embedded local Ray; once per process."""
    import ray

    if ray.is_initialized():
        return
    quiet = not log.isEnabledFor(logging.INFO)  # Ray's chatter only with --verbose
    if quiet:  # Ray Data still logs everything, task failures included, to the session's ray-data.log
        import ray.data  # noqa: F401  (configures the "ray.data" logger)

        for handler in logging.getLogger("ray.data").handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setLevel(logging.CRITICAL)
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR if quiet else logging.INFO)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)


def finished_rows(pipeline, config, windows: list[Row], source=None, alone: bool = False) -> Iterator[Row]:
    """Run the pipeline's Ray Data graph over the planned windows and yield every finished row.

    ``source``: the reader the windows were planned from (stages that read through it get it).
    ``alone``: every window in a task of its own, so a window whose task dies takes no other down.
    """
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # A block whose task failed on every Ray retry is skipped rather than aborting the run; its
    # units come back as WorkerLost error rows (ShardCollector.add_lost).
    context.max_errored_blocks = -1
    dataset = ray.data.from_items(windows, override_num_blocks=len(windows) if alone else min(len(windows), 256))
    one_window_per_task = _ONE_WINDOW_PER_TASK.set(alone)
    try:
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing max_retries / max_restarts to map_batches but offers no named
            # parameter for them yet; the bounded retries matter more than the warning.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            finished = pipeline.build(dataset, config, source)
    finally:
        _ONE_WINDOW_PER_TASK.reset(one_window_per_task)
    for batch in finished.iter_batches(batch_size=None, batch_format="numpy"):
        yield from batch_to_rows(batch)
