"""The run: plan units, skip committed shards, stream the rest through Ray, commit shards, summarise.

Every planned unit comes back exactly once, as a row or an error row; a shard is written when
all of its units are in. Ray executes; this module only feeds and drains the stream.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from magma_data.config import RunConfig
from magma_data.execution import TASK_RETRIES, Resources, batch_to_rows, new_unit_row
from magma_data.faults import crash_point
from magma_data.pipelines import load_pipeline
from magma_data.schema import to_arrow_table
from magma_data.sink import OutputFolder, write_dataset_card
from magma_data.sources import load_manifest, open_source
from magma_data.sources.base import PathEscapesRoot, resolve_inside

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    output: Path
    root: Path | None = None
    ray_address: str | None = None  # None: an embedded local Ray; "auto" or ray://...: a cluster
    num_cpus: int | None = None  # for the embedded Ray only
    overwrite: bool = False
    progress: bool = True


@dataclass
class RunSummary:
    source: str
    pipeline: str
    config_hash: str
    windows_planned: int = 0
    rows_written: int = 0
    error_rows: int = 0
    shards: int = 0
    shards_skipped: int = 0  # committed by an earlier run of the same config
    wall_time_s: float = 0.0
    windows_processed: int = 0  # by this run
    error_classes: dict[str, int] = field(default_factory=dict)
    tracker: str = ""
    windows_after_oom: int = 0  # tracked in a batch halved after CUDA ran out of memory

    @property
    def nothing_to_do(self) -> bool:
        """A re-run of a finished job: every shard was already committed."""
        return self.shards_skipped == self.shards and not self.windows_processed

    @property
    def windows_per_s(self) -> float:
        return self.windows_processed / self.wall_time_s if self.wall_time_s else 0.0

    def to_dict(self) -> dict:
        return {**self.__dict__, "windows_per_s": round(self.windows_per_s, 3)}


class ShardCollector:
    """Gathers the rows of each shard as they stream in and writes a shard once it is whole.

    Each planned unit is taken once: a second copy (Ray re-running a task whose output was
    already delivered) is dropped, so no row is written twice.
    """

    ERROR_ROW_KEYS = ("unit_id", "sample_id", "source", "clip_id", "video_path", "frame_index")

    def __init__(self, output: OutputFolder, config: RunConfig, features, shard_of: dict[str, int],
                 todo: list[dict], total: int):
        self.output, self.config, self.features = output, config, features
        self.shard_of, self.total = shard_of, total
        self.pending = {unit["unit_id"]: unit for unit in todo}
        self.expected = Counter(shard_of[unit_id] for unit_id in self.pending)
        self.received: dict[int, list[dict]] = defaultdict(list)
        self.order = {unit: i for i, unit in enumerate(shard_of)}
        self.arrived = 0

    def add(self, row: dict) -> None:
        unit = self.pending.pop(row["unit_id"], None)
        if unit is None:
            log.warning("dropped a second copy of unit %s", row["unit_id"])
            return
        self.arrived += 1
        crash_point("during_stream", self.arrived)
        shard = self.shard_of[row["unit_id"]]
        self.received[shard].append(row)
        if len(self.received[shard]) == self.expected[shard]:
            self._write(shard)

    def add_lost(self) -> int:
        """Turn the units Ray gave up on (their task failed, after its retries) into error rows."""
        lost = list(self.pending.values())
        for unit in lost:
            self.add({**unit, "error_stage": "ray", "error_class": "WorkerLost", "error_attempt": 1 + TASK_RETRIES,
                      "error_message": "the Ray task holding this window failed: its worker died on every retry "
                                       "(out of memory, a crash in a decoder or tracker) or the batch adapter "
                                       "raised; Ray's error is in the driver's log; --overwrite redoes the source"})
        return len(lost)

    def _write(self, shard: int) -> None:
        rows = sorted(self.received.pop(shard), key=lambda r: self.order[r["unit_id"]])
        data = [dict(r, config_hash=self.output.config_hash) for r in rows if not r["error_stage"]]
        errors = [self._error_record(r) for r in rows if r["error_stage"]]
        table, unwritable = self._table(data)
        errors = sorted(errors + unwritable, key=lambda e: self.order[e["unit_id"]])
        self.output.write_shard(shard, self.total, table, errors, self.config.sink)

    def _table(self, data: list[dict]):
        """The shard's Arrow table; a row that does not fit the schema becomes a ``sink`` error row."""
        try:
            return to_arrow_table(data, self.features), []
        except Exception:  # find the culprits row by row; the rest are still written
            good, bad = [], []
            for row in data:
                try:
                    to_arrow_table([row], self.features)
                    good.append(row)
                except Exception as error:
                    bad.append(self._error_record(dict(row, error_stage="sink", error_class=type(error).__name__,
                                                       error_message=str(error), error_attempt=1)))
            return to_arrow_table(good, self.features), bad

    def _error_record(self, row: dict) -> dict:
        return {
            **{key: row.get(key, "") for key in self.ERROR_ROW_KEYS},
            "frame_index": int(row.get("frame_index", -1)),
            "stage": row["error_stage"],
            "error_class": row["error_class"],
            "message": row["error_message"],
            "attempt": int(row.get("error_attempt", 1)),
            "config_hash": self.output.config_hash,
        }


def plan_digest(units: list[dict], rows_per_shard: int) -> str:
    """Names the plan: which units, in which order, cut into which shards."""
    digest = hashlib.sha256(str(rows_per_shard).encode())
    for unit in units:
        digest.update(b"\x00" + unit["unit_id"].encode())
    return digest.hexdigest()[:16]


def refuse_paths_outside(units: list[dict], root: Path) -> list[dict]:
    """Units whose video lies outside ``--root`` (a ``..`` in metadata, a symlink out) become plan errors."""
    inside: dict[str, str | None] = {}
    checked = []
    for unit in units:
        path = unit.get("video_path") or ""
        if unit.get("error_stage") or not path:
            checked.append(unit)
            continue
        if path not in inside:
            try:
                resolve_inside(root, path)
                inside[path] = None
            except PathEscapesRoot as error:
                inside[path] = str(error)
        if inside[path] is None:
            checked.append(unit)
        else:
            checked.append({**unit, "error_stage": "plan", "error_class": "PathEscapesRoot",
                            "error_message": inside[path], "error_attempt": 1})
    return checked


def run(config: RunConfig, options: RunOptions) -> RunSummary:
    started = time.perf_counter()
    manifest = load_manifest(config.source)
    pipeline = load_pipeline(config.pipeline)
    source = open_source(manifest, options.root)
    units = pipeline.plan(source, config)
    if options.root is not None:
        units = refuse_paths_outside(units, Path(options.root))
    config_hash = config.hash()
    summary = RunSummary(source=config.source, pipeline=config.pipeline, config_hash=config_hash,
                         windows_planned=len(units), tracker=config.track.tracker)
    if not units:
        raise RuntimeError(f"source {config.source!r} planned no units under {options.root}; "
                           f"run `magma-data check --input {config.source} --root ...` to see why")

    per_shard = config.sink.rows_per_shard
    shard_of = {unit["unit_id"]: i // per_shard for i, unit in enumerate(units)}
    if len(shard_of) != len(units):
        raise RuntimeError("two planned units share an id; the source yields duplicate clip ids")
    output = OutputFolder(options.output, config.source, config_hash,
                          json.dumps(config.to_dict(), indent=2, sort_keys=True),
                          plan_digest(units, per_shard), len(units), overwrite=options.overwrite)
    total = math.ceil(len(units) / per_shard)
    committed = output.committed_shards()
    todo = [unit for unit in units if shard_of[unit["unit_id"]] not in committed]
    collector = ShardCollector(output, config, pipeline.features(config), shard_of, todo, total)
    summary.shards, summary.shards_skipped = total, len(committed)

    if not todo:
        log.info("nothing to do: all %d shards of %s in %s are committed", total, config.source, options.output)
    else:
        planned_errors = [u for u in todo if u.get("error_stage")]
        windows = [new_unit_row(u) for u in todo if not u.get("error_stage")]
        for unit in planned_errors:
            collector.add(unit)
        if windows:
            _stream(pipeline, config, options, windows, collector, summary)
        lost = collector.add_lost()
        if lost:
            log.error("%d units never came back from Ray; they are error rows of class WorkerLost", lost)
        summary.windows_processed = len(todo)

    ledger = output.committed_shards()
    output.close()
    summary.rows_written = sum(s["rows"] for s in ledger.values())
    summary.error_rows = sum(s["errors"] for s in ledger.values())
    classes: Counter = Counter()
    for shard in ledger.values():
        classes.update(shard["error_classes"])
    summary.error_classes = dict(sorted(classes.items()))
    summary.wall_time_s = round(time.perf_counter() - started, 3)
    _write_summary(options.output, summary)
    write_dataset_card(options.output, config.pipeline)
    return summary


def _stream(pipeline, config: RunConfig, options: RunOptions, windows: list[dict], collector, summary) -> None:
    """Run the Ray Data graph over the planned windows and hand every finished row to the collector.

    The summary learns how many windows were tracked only after their batch was halved on
    out-of-memory (the rows themselves stay free of such hardware-dependent facts).
    """
    import ray

    from magma_data.progress import progress_bar

    _init_ray(options)
    resources = _resources(config)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # A block whose task failed on every Ray retry is skipped rather than aborting the run; its
    # units come back as WorkerLost error rows (ShardCollector.add_lost).
    context.max_errored_blocks = -1
    dataset = ray.data.from_items(windows, override_num_blocks=min(len(windows), 256))
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing max_retries / max_restarts to map_batches but offers no named
        # parameter for them yet; the bounded retries matter more than the warning (execution.py).
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        finished = pipeline.build(dataset, config, resources)
    with progress_bar(len(windows), enabled=options.progress, label=f"{config.pipeline} {config.source}") as advance:
        for batch in finished.iter_batches(batch_size=None, batch_format="numpy"):
            for row in batch_to_rows(batch):
                summary.windows_after_oom += int(row.get("track_oom_halvings", 0) > 0)
                collector.add(row)
                advance()


def _init_ray(options: RunOptions) -> None:
    import ray

    if ray.is_initialized():
        return
    quiet = not log.isEnabledFor(logging.INFO)  # Ray's start-up chatter only with --verbose
    if quiet:
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR if quiet else logging.INFO)
    if options.ray_address:
        ray.init(address=options.ray_address, **kwargs)
    else:
        ray.init(num_cpus=options.num_cpus, **kwargs)


def _resources(config: RunConfig) -> Resources:
    """CoTracker3: one actor per GPU, or one CPU actor without GPUs; Lucas-Kanade: plain tasks."""
    import ray

    if config.track.tracker == "lk":
        return Resources(tracker_in_tasks=True)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus > 0:
        return Resources(tracker_actors=gpus, gpus_per_tracker=1.0, cpus_per_tracker=1.0)
    return Resources()


def _write_summary(root: Path, summary: RunSummary) -> None:
    path = Path(root) / "summary.json"
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing[summary.source] = summary.to_dict()
    path.write_text(json.dumps(existing, indent=2, sort_keys=True))
