"""``magma-data``: run a pipeline on a source, check a source, and read the result."""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import threading
import typing
from collections.abc import Mapping
from pathlib import Path

import click

from magma_data.check import DEFAULT_SAMPLE_CLIPS, SAMPLE_WINDOWS_PER_CLIP
from magma_data.config import ConfigValueError, RunConfig, parse_assignments
from magma_data.pipelines import PIPELINES
from magma_data.sources import available_sources, load_manifest
from magma_data.export import EXPORT_FORMATS
from magma_data.stages.shots import ShotsUnavailable
from magma_data.stages.text_alignment import AlignmentUnavailable
from magma_data.stages.track import TRACKERS, TrackConfig, TrackerUnavailable

#: Exit status of a run that finished but turned some units into error rows (see errors/).
EXIT_SOME_UNITS_FAILED = 3
#: Exit status of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130

#: ``--root``: an existing folder, or a usage error before anything else happens.
ROOT = click.Path(exists=True, file_okay=False, path_type=Path)


class Registered(click.Choice):
    """A choice among a registry's names (and ``extra`` ones), read when the value is parsed: an entry
    registered after this module was imported (a plug-in's, a test's) is offered too."""

    def __init__(self, registry: Mapping[str, object], *extra: str):
        self.registry, self.extra, self.case_sensitive = registry, extra, True

    @property
    def choices(self) -> tuple[str, ...]:
        return (*self.extra, *self.registry)


class RefusedUsage(click.UsageError):
    """A usage error told in one line (what is wrong, what to do), without click's usage banner."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log what each step decides.")
def main(verbose: bool) -> None:
    """Turn raw videos and robot episodes into Set-of-Mark / Trace-of-Mark training data."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    take_ctrl_c()


def take_ctrl_c() -> None:
    """Ctrl-C (SIGINT) stops a command, however it was started.

    A process started in the background of a script (``magma-data run ... &`` in a non-interactive
    shell, as under many CI runners and agents) inherits SIGINT ignored, and Python then never
    raises KeyboardInterrupt: SIGINT would not stop a run at all, where it should stop it between
    shards' commits (exit 130, resumable). A program that calls the CLI in its own process gets its
    SIGINT back as it was once the command is done.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        click.get_current_context().call_on_close(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))


@main.command()
@click.argument("pipeline", type=Registered(PIPELINES))
@click.option("--input", "source", required=True, help=f"Source: {', '.join(available_sources())}.")
@click.option("--root", type=ROOT, help="Where the source's data lies (read in place); the release folder is "
              "found inside it when the official downloader nested it.")
@click.option("--videos", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folders of your own videos (--input magma_video_tom: the videos the released traces were "
                   "made from; repeatable).")
@click.option("--output", type=click.Path(path_type=Path), help="Output folder (default: out/<input>).")
@click.option("--tracker", type=Registered(TRACKERS, "auto"),
              help="auto (default): CoTracker3 when a checkpoint is found, else Lucas-Kanade on CPU.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="The tracker's weights (CoTracker3: scaled_offline.pth; TAPNext++: tapnextpp_ckpt.pt, or "
                   "tapnextpp_512.ckpt with --set track.resolution=512).")
@click.option("--clip-checkpoint", type=click.Path(path_type=Path),
              help="A CLIP model folder (transformers CLIPModel + processor, e.g. openai/clip-vit-large-patch14-336): "
                   "drop windows whose frames do not match their text before tracking (default: off).")
@click.option("--precision", type=click.Choice(typing.get_args(typing.get_type_hints(TrackConfig)["precision"])),
              help="Tracker precision on GPU (default fp32).")
@click.option("--grid-size", type=int, help="Query grid is N x N points (default 15).")
@click.option("--window-len", type=int, help="Frames per window (default 16).")
@click.option("--window-stride", type=int, help="Frames between window starts (default 16; the source may set it).")
@click.option("--fps", type=float, help="Resample windows to this frame rate (default: native).")
@click.option("--height", type=int, help="Working frame height in pixels (default 512; the source may set it).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=int, help="Plan at most this many windows.")
@click.option("--batch-size", type=int, help="Windows per tracker call (default: CoTracker3 on a GPU fits its free memory; 8 elsewhere).")
@click.option("--rows-per-shard", type=int, help="Windows per Parquet shard (default 256).")
@click.option("--set", "assignments", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Any other config field, e.g. --set marks.moving_threshold_px=2 (repeatable).")
@click.option("--ray-address", help="Ray cluster address ('auto' inside `ray job submit`); default: local Ray.")
@click.option("--num-cpus", type=int, help="CPUs for the embedded local Ray.")
@click.option("--overwrite", is_flag=True, help="Delete this source's earlier output in --output and start over.")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs, CI).")
def run(pipeline, source, root, videos, output, tracker, checkpoint, clip_checkpoint, precision, grid_size, window_len,
        window_stride, fps, height, seed, limit, batch_size, rows_per_shard, assignments, ray_address, num_cpus,
        overwrite, no_progress):
    """Run PIPELINE on a source and write Parquet shards, errors, filtered units and a dataset card to --output.

    Exit status: 0 when every unit became a row or was filtered by a rule of the recipe, 3 when
    the run finished but some units are error rows (see errors/ and the summary), 1 on failure,
    2 on a usage error.
    """
    from magma_data.progress import print_summary
    from magma_data.runner import RunInterrupted, RunOptions, run as run_pipeline

    manifest = _manifest(source)
    if manifest.pipeline != pipeline:
        raise RefusedUsage(f"source {source!r} is made by the {manifest.pipeline} pipeline: "
                           f"magma-data run {manifest.pipeline} --input {source} ...")
    given = {  # only options the user gave override the source's manifest and the stage defaults
        "plan": {"window_len": window_len, "window_stride": window_stride, "fps": fps},
        "decode": {"height": height},
        "track": {"tracker": tracker, "grid_size": grid_size, "batch_size": batch_size, "precision": precision,
                  "checkpoint": str(checkpoint) if checkpoint else None},
        "alignment": {"checkpoint": str(clip_checkpoint) if clip_checkpoint else None},
        "sink": {"rows_per_shard": rows_per_shard},
    }
    config = _run_config(RunConfig(pipeline=pipeline, source=source), manifest, seed, limit,
                         {k: {f: v for f, v in fields.items() if v is not None} for k, fields in given.items()},
                         assignments)
    options = RunOptions(output=output or Path("out") / source, root=root, ray_address=ray_address,
                         num_cpus=num_cpus, overwrite=overwrite, progress=not no_progress,
                         source_options=source_options(videos),
                         notify=lambda message: click.echo(message, err=True))
    try:
        summary = run_pipeline(config, options)
    except (TrackerUnavailable, AlignmentUnavailable, ShotsUnavailable) as error:  # weights or packages missing
        raise RefusedUsage(str(error)) from None
    except RunInterrupted as interrupted:
        click.echo(f"interrupted: {interrupted}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:  # while planning, before the output folder was opened
        click.echo("interrupted before this run committed a shard; run the same command again to go on", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    from magma_data.card import tracks_license_line

    print_summary(summary)
    if summary.nothing_to_do:
        click.echo(f"nothing to do: all {summary.shards} shards of {source!r} in {options.output} were committed by "
                   "an earlier run with this config (--overwrite starts over)", err=True)
    else:
        click.echo(f"wrote {options.output}; {tracks_license_line(summary.tracker)}", err=True)
    if summary.error_rows:
        sys.exit(EXIT_SOME_UNITS_FAILED)


def _manifest(source: str):
    try:
        return load_manifest(source)
    except KeyError as error:
        raise RefusedUsage(error.args[0]) from None


def _run_config(config: RunConfig, manifest, seed: int, limit: int | None, options: dict, assignments) -> RunConfig:
    """The manifest's defaults, then the options given, then ``--set``; a value a field does not take
    is a usage error that names where it came from, the field, its type and range."""
    try:
        config = config.with_overrides(manifest.defaults)
    except ConfigValueError as error:
        raise RefusedUsage(f"manifest {manifest.name}.yaml: {error}") from None
    try:
        config = dataclasses.replace(config, seed=seed, limit=limit).with_overrides(options)
    except ConfigValueError as error:  # option names are the fields' names
        raise RefusedUsage(f"--{error.field_name.rpartition('.')[2].replace('_', '-')}: {error}") from None
    try:
        return config.with_overrides(parse_assignments(assignments))
    except ConfigValueError as error:
        given = next((a for a in reversed(assignments) if a.partition("=")[0].strip() == error.field_name), None)
        raise RefusedUsage(f"--set {given}: {error}" if given else str(error)) from None
    except ValueError as error:
        raise RefusedUsage(str(error)) from None


@main.command()
@click.option("--input", "source", required=True, help=f"Source: {', '.join(available_sources())}.")
@click.option("--root", type=ROOT, help="Where the source's data lies (read in place); the release folder is "
              "found inside it when the official downloader nested it.")
@click.option("--videos", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folders of your own videos (--input magma_video_tom; repeatable).")
@click.option("--window-len", type=int, default=16, show_default=True, help="Frames (or robot steps) per window.")
@click.option("--clip-checkpoint", type=click.Path(path_type=Path),
              help="The CLIP model folder the run will take: try text alignment on the sample.")
@click.option("--set", "assignments", multiple=True, metavar="SECTION.FIELD=VALUE",
              help="Config fields as the run will take them (e.g. --set shots.enabled=true); repeatable.")
@click.option("--sample-clips", type=click.IntRange(min=0), default=DEFAULT_SAMPLE_CLIPS, show_default=True,
              help="Clips (evenly spaced) decoded to try the curation rules that need frames: shot detection "
                   f"decodes each whole; alignment and quality rules run on up to {SAMPLE_WINDOWS_PER_CLIP} windows "
                   "of each (the quality rules track them). 0 decodes nothing.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Also write the report as JSON here.")
def check(source, root, videos, window_len, clip_checkpoint, assignments, sample_clips, report_path):
    """Validate a source before any tracking time is spent.

    Reads the metadata as a run would, probes every video's header, and reports clips, videos,
    windows, missing or unreadable videos, clips shorter than a window, frame-rate outliers and
    empty text. With curation rules on (the source's defaults, or --set / --clip-checkpoint), it
    tries them on --sample-clips clips and counts what each rule drops. Exit status: 0 when some
    clip is usable, 1 when nothing is (or the source cannot be read), 2 on a usage error.
    """
    from magma_data.check import run_check

    _manifest(source)
    try:
        overrides = parse_assignments(assignments)
        if clip_checkpoint:
            overrides.setdefault("alignment", {})["checkpoint"] = str(clip_checkpoint)
        report = run_check(source, root, window_len=window_len, report_path=report_path,
                           source_options=source_options(videos), notify=lambda message: click.echo(message, err=True),
                           overrides=overrides, sample_clips=sample_clips)
    except ConfigValueError as error:
        given = next((f"--set {a}" for a in assignments if a.partition("=")[0].strip() == error.field_name),
                     "--window-len")
        raise RefusedUsage(f"{given}: {error}") from None
    except (TrackerUnavailable, AlignmentUnavailable, ShotsUnavailable) as error:
        raise RefusedUsage(str(error)) from None
    except (FileNotFoundError, ValueError, ImportError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    report.render()
    if not report.usable:
        sys.exit(1)


def source_options(videos: tuple[Path, ...]) -> dict:
    """Reader options given on the command line; the manifest's apply otherwise."""
    return {"videos": [str(v) for v in videos]} if videos else {}


@main.command()
@click.argument("output", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--count", default=12, show_default=True, help="Windows on the contact sheet.")
@click.option("--sheet", type=click.Path(path_type=Path), help="PNG to write (default: OUTPUT/show/contact_sheet.png); "
              "the score distributions go beside it as scores.png, when the curation stages ran.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON instead of a table.")
def show(output, count, sheet, as_json):
    """Statistics of a run's output and a contact sheet of SoM images with their moving traces."""
    from magma_data.progress import console
    from magma_data.show import contact_sheet, dataset_stats, output_sources, score_plots, stats_json, stats_tables

    if not output_sources(output):
        raise RefusedUsage(f"{output} holds no magma-data output (no .magma/ or data/ folder); point it at the "
                           "--output of a magma-data run")
    stats = dataset_stats(output)
    if as_json:
        click.echo(stats_json(stats))
    else:
        for table in stats_tables(stats, str(output)):
            console.print(table)
    if not any(s.rows for s in stats):
        click.echo("contact sheet: none, no unit became a row (see the errors above and errors/)", err=True)
        return
    path = contact_sheet(output, count, sheet or output / "show" / "contact_sheet.png")
    click.echo(f"contact sheet: {path}", err=True)
    scores = score_plots(output, (sheet.parent if sheet else output / "show") / "scores.png")
    if scores is not None:
        click.echo(f"score distributions (clip_score, mean motion, invisible share): {scores}", err=True)


@main.command()
@click.argument("output", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "fmt", required=True, type=Registered(EXPORT_FORMATS),
              help="; ".join(f"{name}: {fmt.help}" for name, fmt in EXPORT_FORMATS.items()) + ".")
@click.option("--output", "destination", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the export to.")
@click.option("--source", "sources", multiple=True, help="Export only this source (repeatable; default: all).")
@click.option("--overwrite", is_flag=True, help="Delete an earlier export of these sources in --output first.")
def export(output, fmt, destination, sources, overwrite):
    """Write a finished output folder in Magma's formats.

    Refuses a folder whose run has not finished. An interrupted export resumes when run again.
    """
    from magma_data.export import ExportRefused, export as export_output
    from magma_data.outputs import UnfinishedOutput
    from magma_data.sink import ConfigMismatch

    try:
        summaries = export_output(output, fmt, destination, tuple(sources), overwrite=overwrite)
    except (UnfinishedOutput, ExportRefused, ConfigMismatch) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    for summary in summaries:
        click.echo(f"{summary.source}: {summary.rows} rows in {summary.shards} shards "
                   f"({summary.shards_skipped} exported before) -> {destination}", err=True)


@main.command()
@click.argument("output", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo-id", required=True, help="The dataset repository, org/name (created if absent).")
@click.option("--private", is_flag=True, help="Create the repository private (an existing one keeps its visibility).")
@click.option("--revision", help="Branch to push to (created if absent; default: main).")
@click.option("--license", help="The card's licence field (default: the card's current one, else 'other'); "
              "warned about when it allows more than the tracks' licence (CoTracker3's weights are non-commercial).")
@click.option("--dry-run", is_flag=True, help="Refresh the card and list what would be sent; send nothing.")
def push(output, repo_id, private, revision, license, dry_run):
    """Upload a finished output folder to the Hugging Face Hub (resumable: run it again after an interruption).

    Refuses a folder whose run has not finished; leaves out .magma/ (ledgers, configs); refreshes
    the dataset card first.
    """
    from magma_data.outputs import UnfinishedOutput
    from magma_data.push import push as push_output

    try:
        plan = push_output(output, repo_id, private=private, revision=revision, license=license, dry_run=dry_run,
                           notify=lambda line: click.echo(line, err=True))
    except UnfinishedOutput as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    target = f"datasets/{plan.repo_id}" + (f"@{plan.revision}" if plan.revision else "")
    if dry_run:
        for path, size in plan.files:
            click.echo(f"{size:>12,}  {path}")
    verb = "would send" if dry_run else "sent"
    click.echo(f"{verb} {len(plan.files)} files, {plan.size / 1e6:.1f} MB to {target}", err=True)
