"""The run: resolve the tracker, plan units, skip committed shards, stream the rest through Ray, summarise.

Every planned unit comes back exactly once, as a row, an error or a filtered unit; the sink
commits a shard when all of its units are in. Ray executes (``magma_data.execution``), the sink
writes (``magma_data.sink`` and a shard writer); this module only puts them in order.

Windows whose Ray task failed on every retry (its worker died: a decoder that crashes on one
video, memory) are run once more, each in a task of its own, so one bad video costs only its
own windows; those that fail again too are WorkerLost error rows. Ctrl-C stops the run between
shards' commits: committed shards stay, and the same command resumes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from magma_data.config import RunConfig
from magma_data.execution import finished_rows, init_ray, new_unit_row, worker_lost
from magma_data.card import write_dataset_card
from magma_data.parquet_writer import ParquetShardWriter
from magma_data.pipelines import column_dims, load_pipeline, shard_columns
from magma_data.pipelines.base import PlanContext
from magma_data.schema import features
from magma_data.sink import OutputFolder, ShardCollector, ShardPlan
from magma_data.sources import load_manifest, open_source
from magma_data.sources.base import Source, refuse_paths_outside, relative_video_paths
from magma_data.stages.shots import require_scenedetect
from magma_data.stages.text_alignment import check_checkpoint, checkpoint_digest
from magma_data.stages.track import resolve_tracker
from magma_data.summary import RunSummary, write_summary

log = logging.getLogger(__name__)


class RunInterrupted(Exception):
    """Ctrl-C stopped the run; the message says what is committed and how to go on."""


@dataclass(frozen=True)
class RunOptions:
    output: Path
    root: Path | None = None
    ray_address: str | None = None  # None: an embedded local Ray; "auto" or ray://...: a cluster
    num_cpus: int | None = None  # for the embedded Ray only
    overwrite: bool = False
    progress: bool = True
    #: reader options given on the command line (``--videos``), over the manifest's
    source_options: dict = field(default_factory=dict)
    #: where the run says what it decided before the work starts (the tracker it picked); None: the log
    notify: Callable[[str], None] | None = None


def resolve(config: RunConfig) -> tuple[RunConfig, str]:
    """The config a run executes and hashes: ``auto`` made the tracker that will run, its weights'
    digest in ``tracker_weights``; the CLIP checkpoint checked and its weights' digest in
    ``alignment_weights``; scenedetect found when shots are on; and the line that names the
    tracker. Each check fails before any work, saying what to do. Resolving twice changes nothing."""
    tracker = resolve_tracker(config.track)
    if config.shots.enabled:
        require_scenedetect()
    alignment_weights = ""
    if config.alignment.enabled:
        alignment_weights = checkpoint_digest(check_checkpoint(config.alignment.checkpoint))
    config = dataclasses.replace(config, track=tracker.config, tracker_weights=tracker.weights_digest,
                                 alignment_weights=alignment_weights)
    return config, tracker.note


def run(config: RunConfig, options: RunOptions) -> RunSummary:
    started = time.perf_counter()
    notify = options.notify or log.info
    config, note = resolve(config)
    notify(note)
    pipeline = load_pipeline(config.pipeline)
    source = open_source(load_manifest(config.source), options.root, notify=notify, **options.source_options)
    for line in pipeline.check(source, config):  # what runs besides the tracker (curation), or a refusal
        notify(line)
    roots = source.video_roots()
    config = dataclasses.replace(config, root=str(source.root),
                                 videos=tuple(str(folder) for folder in roots if folder != Path(source.root)))
    context = PlanContext(output=options.output, overwrite=options.overwrite,
                          connect_ray=lambda: init_ray(options.ray_address, options.num_cpus))
    units = relative_video_paths(refuse_paths_outside(pipeline.plan(source, config, context), roots), roots)
    if not units:
        raise RuntimeError(f"source {config.source!r} planned no units under {options.root}; "
                           f"run `magma-data check --input {config.source} --root ...` to see why")
    sink = open_sink(pipeline, config, units, options.output, overwrite=options.overwrite)
    output, shards, collector, todo = sink.output, sink.shards, sink.collector, sink.todo
    summary = RunSummary(source=config.source, pipeline=config.pipeline, config_hash=config.hash(),
                         windows_planned=len(units), tracker=config.track.tracker, shards=shards.total,
                         shards_skipped=len(sink.committed))
    try:
        if not todo:
            log.info("nothing to do: all %d shards of %s in %s are committed", shards.total, config.source,
                     options.output)
        else:
            windows = [new_unit_row(unit) for unit in todo if not unit.get("drop_kind")]
            for unit in todo:
                if unit.get("drop_kind"):  # dropped at planning: straight to its table
                    collector.add(unit)
            if windows:
                _stream(pipeline, config, source, options, windows, collector, summary)
            lost = collector.add_lost(worker_lost())
            if lost:
                log.info("%d units never came back from Ray; they are error rows of class WorkerLost", lost)
            summary.windows_processed = len(todo)
    except KeyboardInterrupt:
        done = len(output.committed_shards())
        output.close()
        raise RunInterrupted(
            f"{done} of {shards.total} shards of {config.source!r} are committed in {options.output}; run the same "
            "command again to resume from there") from None

    summary.count_committed(output.committed_shards())
    output.close()
    summary.wall_time_s = round(time.perf_counter() - started, 3)
    write_summary(options.output, summary)
    write_dataset_card(options.output)
    return summary


@dataclass(frozen=True)
class Sink:
    """A source's part of an output folder, opened for a run: what earlier runs committed, the units
    still to do, and the collector that writes and commits their shards."""

    output: OutputFolder
    shards: ShardPlan
    committed: dict[int, dict]
    todo: list[dict]
    collector: ShardCollector


def open_sink(pipeline, config: RunConfig, units: list[dict], root: Path, overwrite: bool = False) -> Sink:
    """The output folder of ``config.source`` under ``root``, its Parquet writer, ledger and collector."""
    columns = shard_columns(pipeline, config)
    writer = ParquetShardWriter(root, config.source, features(columns, column_dims(config)), config.sink)
    shards = ShardPlan(units, config.sink.rows_per_shard)
    output = OutputFolder(root, config.source, config.hash(), config.to_json(), shards.digest, len(units), writer,
                          overwrite=overwrite)
    committed = output.committed_shards()
    todo = shards.todo(committed)
    collector = ShardCollector(output, shards, todo, (column.name for column in columns if not column.written))
    return Sink(output, shards, committed, todo, collector)


def _stream(pipeline, config: RunConfig, source: Source, options: RunOptions, windows: list[dict], collector,
            summary) -> None:
    """Hand every row the Ray graph finishes to the collector, as it comes; then run the windows of
    tasks Ray gave up on once more, one window a task.

    The summary learns how many windows were tracked only after their batch was halved on
    out-of-memory (the rows themselves stay free of such hardware-dependent facts), and how many
    windows were re-run alone.
    """
    from magma_data.progress import progress_bar

    init_ray(options.ray_address, options.num_cpus)
    with progress_bar(len(windows), enabled=options.progress, label=f"{config.pipeline} {config.source}") as advance:

        def collect(rows) -> None:
            for row in rows:
                summary.windows_after_oom += int(row.get("track_oom_halvings", 0) > 0)
                collector.add(row)
                advance()

        collect(finished_rows(pipeline, config, windows, source))
        lost = [new_unit_row(unit) for unit in collector.pending.values()]
        if lost:
            summary.windows_rerun_alone = len(lost)
            log.info("%d windows were in Ray tasks whose worker died on every retry; running each again in a task "
                     "of its own, to find the ones that kill it", len(lost))
            collect(finished_rows(pipeline, config, lost, source, alone=True))
