"""``magma-data check``: validate a source before any tracking time is spent.

Plans the source with its pipeline's own planner, as a run would, and counts what it plans:
clips, videos, windows. Every reason a unit would not become a window is counted by error class
(or by filter rule) with example messages: the source's own problems (missing videos, empty or
non-UTF-8 text, unknown ids), the recipe's filters, unreadable videos, clips shorter than a
window. Every video's container is read once (headers, no decoding), shared with the planner, so
frame rates are summarised, with outliers and metadata that disagrees with the container, because
a wrong rate silently shifts every window.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from magma_data.config import RunConfig
from magma_data.dropped import FILTERED, Dropped
from magma_data.pipelines import load_pipeline
from magma_data.pipelines.base import PlanContext
from magma_data.sources import load_manifest, open_source
from magma_data.sources.base import Clip, ClipProblem, TracesSource, refuse_paths_outside
from magma_data.sources.robot import RobotSource
from magma_data.stages.plan import VideoInfo, VideoProbes

#: A video whose rate is this far (relative) from the source's median is listed as an outlier.
FPS_OUTLIER_RATIO = 0.25
#: Metadata and container rates further apart than this (relative) are listed as mismatches.
FPS_MISMATCH_RATIO = 0.01
EXAMPLES_PER_CLASS = 20


@dataclass
class CheckReport:
    """What a run of ``source`` on ``root`` would find, before it runs."""

    source: str
    root: str
    window_len: int
    unit_kind: str = "clips"  # the source's (Source.unit_kind): clips, episodes (robot), records (released)
    units: int = 0  # clips or episodes the source read, plus its problem rows
    clips: int = 0  # clips or episodes (without problem rows)
    videos: int = 0  # distinct video files (or RLDS datasets) the clips use
    windows: int = 0  # windows a run would plan
    usable: int = 0  # clips or episodes that give at least one window
    empty_text: int = 0  # usable clips without task text (the sample gets no semantic turn)
    problems: dict[str, int] = field(default_factory=dict)  # error class or filter rule -> units
    filter_rules: list[str] = field(default_factory=list)  # which of the problems are rules of the recipe
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # error class -> first few
    frame_rates: dict[str, int] = field(default_factory=dict)  # rounded fps -> videos
    fps_outliers: list[dict] = field(default_factory=list)
    fps_mismatches: list[dict] = field(default_factory=list)
    #: videos planned from their metadata whose container cannot be read: their windows would fail at decode
    unreadable_videos: list[dict] = field(default_factory=list)
    short_episodes: int = 0  # robot episodes shorter than a window (their windows repeat the last frame)
    #: Magma's released traces: per dataset_name, records, records whose video was found, missing videos
    coverage: dict[str, dict] = field(default_factory=dict)
    #: Magma's released traces: how far a sample of the traces reaches in the frame they are assumed in
    trace_reach: dict = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(count for name, count in self.problems.items() if name not in self.filter_rules)

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")

    def render(self, console: Console | None = None) -> None:
        """Tables for the terminal: counts, what stands in the way, frame rates."""
        console = console or Console()
        counts = Table(title=f"check · {self.source} · {self.root}")
        counts.add_column("measure")
        counts.add_column("value", justify="right")
        unit = self.unit_kind
        for name, value in (
            (f"{unit} read", self.clips), ("videos" if unit == "clips" else "datasets", self.videos),
            (f"windows of {self.window_len} that would be planned", self.windows),
            (f"usable {unit}", self.usable), (f"usable {unit} without text", self.empty_text),
            ("units that would become error rows", self.errors),
            ("units a rule of the recipe would filter", sum(self.problems.values()) - self.errors),
        ):
            counts.add_row(name, f"{value:,}")
        if unit == "episodes":
            counts.add_row(f"episodes shorter than {self.window_len} steps", f"{self.short_episodes:,}")
        console.print(counts)

        if self.problems:
            table = Table(title="why units would not become windows")
            for column in ("error class", "kind", "units", "example"):
                table.add_column(column, justify="right" if column == "units" else "left", overflow="fold")
            for name, count in sorted(self.problems.items(), key=lambda item: -item[1]):
                example = self.examples.get(name, [{}])[0]
                kind = "filter" if name in self.filter_rules else "problem"
                table.add_row(name, kind, f"{count:,}", f"{example.get('unit_id', '')}: {example.get('message', '')}")
            console.print(table)

        if self.frame_rates:
            rates = Table(title="frame rates (container)")
            rates.add_column("fps", justify="right")
            rates.add_column("videos", justify="right")
            for fps, count in sorted(self.frame_rates.items(), key=lambda item: float(item[0])):
                rates.add_row(fps, f"{count:,}")
            console.print(rates)
        for title, rows in (("frame-rate outliers", self.fps_outliers),
                            ("metadata fps disagrees with the container", self.fps_mismatches),
                            ("planned from metadata, but the container cannot be read", self.unreadable_videos)):
            if rows:
                table = Table(title=f"{title} ({len(rows)})")
                for column in rows[0]:
                    table.add_column(column, overflow="fold")
                for row in rows[:10]:
                    table.add_row(*(str(value) for value in row.values()))
                console.print(table)
        if self.coverage:
            table = Table(title="released records covered by your videos")
            for column in ("dataset", "records", "video found", "windows", "videos missing", "e.g."):
                table.add_column(column, justify="left" if column in ("dataset", "e.g.") else "right",
                                 overflow="fold")
            for dataset, row in self.coverage.items():
                table.add_row(dataset, f"{row['records']:,}", f"{row['video_found']:,}", f"{row['windows']:,}",
                              f"{row['missing_videos']:,}", ", ".join(row["missing_examples"][:3]))
            console.print(table)
        if self.trace_reach:
            reach = self.trace_reach
            console.print(f"traces of {reach['windows']} windows, in the frame {reach['frame']}: visible points "
                          f"reach {reach['max_x']:.1%} of its width and {reach['max_y']:.1%} of its height; "
                          f"{reach['outside']:.1%} lie outside it (far beyond 100%: set released.trace_height)")
        verdict = "[green]usable[/green]" if self.usable else "[red]nothing usable[/red]"
        console.print(f"{verdict}: {self.usable:,} {unit}, {self.windows:,} windows")


class _Tally:
    """Counts problems by class, keeping a few examples of each."""

    def __init__(self, report: CheckReport):
        self.report = report
        self.counts: Counter = Counter()
        self.examples: dict[str, list[dict[str, str]]] = defaultdict(list)
        self.rules: set[str] = set()

    def add(self, unit_id: str, dropped: Dropped) -> None:
        self.counts[dropped.reason] += 1
        if dropped.kind == FILTERED:
            self.rules.add(dropped.reason)
        if len(self.examples[dropped.reason]) < EXAMPLES_PER_CLASS:
            self.examples[dropped.reason].append({"unit_id": unit_id, "message": dropped.message})

    def close(self) -> None:
        self.report.problems = dict(sorted(self.counts.items()))
        self.report.filter_rules = sorted(self.rules)
        self.report.examples = dict(sorted(self.examples.items()))


def run_check(source: str, root: Path | None, window_len: int = 16, report_path: Path | None = None,
              threads: int = 16, source_options: dict | None = None, notify=None) -> CheckReport:
    """Plan ``source`` under ``root`` as a run would and report what it would plan and what it would not.

    Args:
        source: a manifest name (``magma-data check --input``).
        root: the dataset folder (``--root``).
        window_len: frames (or steps) per window, as the run will use.
        report_path: where to write the report as JSON; None writes nothing.
        threads: concurrent video probes (header reads).
        source_options: reader options from the command line (``--videos``).
        notify: told which release folder inside ``root`` is read, when it is not ``root`` itself.
    """
    manifest = load_manifest(source)
    pipeline = load_pipeline(manifest.pipeline)
    config = RunConfig(pipeline=manifest.pipeline, source=source).with_overrides(manifest.defaults)
    config = config.with_overrides({"plan": {"window_len": window_len}})
    reader = open_source(manifest, root, notify=notify, **(source_options or {}))
    report = CheckReport(source=source, root=str(root), window_len=window_len, unit_kind=reader.unit_kind)
    context = PlanContext(seen=[])
    units = pipeline.plan(reader, config, context)
    if root is not None:
        units = refuse_paths_outside(units, reader.video_roots())
    tally = _Tally(report)
    usable: set[str] = set()
    for unit in units:
        dropped = Dropped.of_row(unit)
        if dropped is not None:
            tally.add(unit["unit_id"], dropped)
        else:
            report.windows += 1
            usable.add(unit["clip_id"])
    tally.close()
    report.units = len(context.seen)
    taken = [unit for unit in context.seen if not isinstance(unit, ClipProblem)]
    report.clips, report.usable = len(taken), len(usable)
    if isinstance(reader, RobotSource):
        report.videos = len({episode.dataset for episode in taken})
        report.short_episodes = sum(episode.num_steps < window_len for episode in taken)
    else:
        report.videos = len({clip.video_path for clip in taken})
        report.empty_text = sum(not clip.task.strip() for clip in taken if clip.clip_id in usable)
        _frame_rates(taken, context.probes, threads, report)
    if isinstance(reader, TracesSource):
        _released(reader, units, config, report)
    if report_path is not None:
        report.write(report_path)
    return report


#: Released windows whose traces ``magma-data check`` reads to see how far they reach.
TRACE_SAMPLE = 64


def _released(source: TracesSource, units: list[dict], config: RunConfig, report: CheckReport) -> None:
    """Coverage of Magma's released records by the user's videos, and how far a sample of traces
    reaches in the frame ``released.trace_height`` assumes (near 1: the assumption holds; far
    beyond 1: the traces are in other pixels)."""
    from magma_data.stages.released_traces import trace_reach

    windows = [unit for unit in units if Dropped.of_row(unit) is None]
    report.usable = len(windows)
    planned = Counter(unit["clip_id"].split("/", 1)[0] for unit in windows)
    report.coverage = {
        dataset: {"records": found.records, "video_found": found.found, "windows": planned[dataset],
                  "missing_videos": len(found.missing_videos),
                  "missing_examples": sorted(found.missing_videos)[:EXAMPLES_PER_CLASS]}
        for dataset, found in sorted(source.coverage().items())
    }
    step = max(1, len(windows) // TRACE_SAMPLE)
    report.trace_reach = trace_reach(windows[::step][:TRACE_SAMPLE], config.released)


def _frame_rates(clips: list[Clip], probes: VideoProbes, threads: int, report: CheckReport) -> None:
    """Frame rates from every video's container: the planner probed the videos whose metadata lacks
    a rate; the others are probed here, once, to check the metadata against them."""
    paths = sorted({clip.video_path for clip in clips})
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(_probed, [probes] * len(paths), paths))
    rates = {path: info.fps for path, info in probes.found.items() if isinstance(info, VideoInfo)}
    from_metadata = {clip.video_path for clip in clips if clip.fps and clip.num_frames}
    report.unreadable_videos = [{"video": path, "error": str(error)} for path, error in sorted(probes.found.items())
                                if path in from_metadata and isinstance(error, Exception)]
    if not rates:
        return
    report.frame_rates = dict(Counter(f"{fps:.2f}" for fps in rates.values()))
    median = statistics.median(rates.values())
    report.fps_outliers = [
        {"video": path, "fps": round(fps, 3), "median_fps": round(median, 3)}
        for path, fps in sorted(rates.items()) if abs(fps - median) > FPS_OUTLIER_RATIO * median
    ]
    claimed = {clip.video_path: clip.fps for clip in clips if clip.fps and clip.video_path in rates}
    report.fps_mismatches = [
        {"video": path, "metadata_fps": fps, "container_fps": round(rates[path], 3)}
        for path, fps in sorted(claimed.items()) if abs(fps - rates[path]) > FPS_MISMATCH_RATIO * rates[path]
    ]


def _probed(probes: VideoProbes, path: str) -> None:
    try:
        probes(path)
    except Exception:  # an unreadable video is a finding (the planner's error rows), not a crash
        pass
