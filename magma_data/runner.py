"""The run: plan units, skip committed shards, stream the rest through Ray, commit shards, summarise.

Every planned unit comes back exactly once, as a row or an error row; a shard is written when
all of its units are in. Ray executes; this module only feeds and drains the stream.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from magma_data.config import RunConfig
from magma_data.execution import Resources, batch_to_rows, new_unit_row
from magma_data.pipelines import load_pipeline
from magma_data.sink import OutputFolder, write_dataset_card
from magma_data.sources import load_manifest, open_source

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

    @property
    def windows_per_s(self) -> float:
        return self.windows_processed / self.wall_time_s if self.wall_time_s else 0.0

    def to_dict(self) -> dict:
        return {**self.__dict__, "windows_per_s": round(self.windows_per_s, 3)}


class ShardCollector:
    """Gathers the rows of each shard as they stream in and writes a shard once it is whole."""

    ERROR_ROW_KEYS = ("unit_id", "sample_id", "source", "clip_id", "video_path", "frame_index")

    def __init__(self, output: OutputFolder, config: RunConfig, features, shard_of: dict[str, int],
                 expected: Counter, total: int):
        self.output, self.config, self.features = output, config, features
        self.shard_of, self.expected, self.total = shard_of, expected, total
        self.received: dict[int, list[dict]] = defaultdict(list)
        self.order = {unit: i for i, unit in enumerate(shard_of)}
        self.counts = Counter()

    def add(self, row: dict) -> None:
        shard = self.shard_of[row["unit_id"]]
        self.received[shard].append(row)
        if len(self.received[shard]) == self.expected[shard]:
            self._write(shard)

    def _write(self, shard: int) -> None:
        rows = sorted(self.received.pop(shard), key=lambda r: self.order[r["unit_id"]])
        data = [dict(r, config_hash=self.output.config_hash) for r in rows if not r["error_stage"]]
        errors = [self._error_record(r) for r in rows if r["error_stage"]]
        self.output.write_shard(shard, self.total, data, errors, self.features, self.config.sink)
        self.counts["rows"] += len(data)
        self.counts["errors"] += len(errors)
        self.counts.update(f"class:{e['error_class']}" for e in errors)

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

    def missing(self) -> dict[int, int]:
        return {s: self.expected[s] - len(rows) for s, rows in self.received.items()}


def run(config: RunConfig, options: RunOptions) -> RunSummary:
    started = time.perf_counter()
    manifest = load_manifest(config.source)
    pipeline = load_pipeline(config.pipeline)
    source = open_source(manifest, options.root)
    units = pipeline.plan(source, config)
    config_hash = config.hash()
    summary = RunSummary(source=config.source, pipeline=config.pipeline, config_hash=config_hash,
                         windows_planned=len(units))
    if not units:
        raise RuntimeError(f"source {config.source!r} planned no units under {options.root}; "
                           f"run `magma-data check --input {config.source} --root ...` to see why")

    output = OutputFolder(options.output, config.source, config_hash,
                          json.dumps(config.to_dict(), indent=2, sort_keys=True), overwrite=options.overwrite)
    per_shard = config.sink.rows_per_shard
    total = math.ceil(len(units) / per_shard)
    committed = output.committed_shards()
    shard_of = {unit["unit_id"]: i // per_shard for i, unit in enumerate(units)}
    if len(shard_of) != len(units):
        raise RuntimeError("two planned units share an id; the source yields duplicate clip ids")
    todo = [unit for unit in units if shard_of[unit["unit_id"]] not in committed]
    expected = Counter(shard_of[unit["unit_id"]] for unit in todo)
    features = pipeline.features(config)
    collector = ShardCollector(output, config, features, shard_of, expected, total)
    summary.shards, summary.shards_skipped = total, len(committed)

    if not todo:
        log.info("nothing to do: all %d shards of %s in %s are committed", total, config.source, options.output)
    else:
        planned_errors = [u for u in todo if u.get("error_stage")]
        windows = [new_unit_row(u) for u in todo if not u.get("error_stage")]
        for unit in planned_errors:
            collector.add(unit)
        if windows:
            summary.tracker = _stream(pipeline, config, options, windows, collector)
        summary.windows_processed = len(todo)
        missing = collector.missing()
        if missing:
            raise RuntimeError(f"units never came back from the pipeline (shard: count): {missing}; "
                               "re-run the same command to finish them")

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


def _stream(pipeline, config: RunConfig, options: RunOptions, windows: list[dict], collector) -> str:
    """Run the Ray Data graph over the planned windows and hand every finished row to the collector."""
    import ray

    from magma_data.progress import progress_bar

    _init_ray(options)
    resources = _resources(config)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    dataset = ray.data.from_items(windows, override_num_blocks=min(len(windows), 256))
    tracker = ""
    with progress_bar(len(windows), enabled=options.progress, label=f"{config.pipeline} {config.source}") as advance:
        for batch in pipeline.build(dataset, config, resources).iter_batches(batch_size=None, batch_format="numpy"):
            for row in batch_to_rows(batch):
                tracker = tracker or str(row.get("tracker", ""))
                collector.add(row)
                advance()
    return tracker


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
    """One tracker actor per GPU when the tracker can use them, else one CPU actor."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if config.track.tracker == "cotracker3" and gpus > 0:
        return Resources(tracker_actors=gpus, gpus_per_tracker=1.0, cpus_per_tracker=1.0)
    return Resources()


def _write_summary(root: Path, summary: RunSummary) -> None:
    path = Path(root) / "summary.json"
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing[summary.source] = summary.to_dict()
    path.write_text(json.dumps(existing, indent=2, sort_keys=True))
