"""``magma-data check``: validate a source before any tracking time is spent.

Reads the source's metadata exactly as a run would, probes every video once (container headers,
no decoding, in a thread pool) and counts what a run would plan: clips, videos, windows. Every
reason a unit would not become a window is counted by error class with example messages: the
source's own problems (missing videos, empty or non-UTF-8 text, unknown ids), unreadable videos,
clips shorter than a window. Frame rates are summarised, with outliers and metadata that disagrees
with the container, because a wrong rate silently shifts every window.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from magma_data.sources import load_manifest, open_source
from magma_data.sources.base import Clip, ClipProblem
from magma_data.stages.plan import PlanConfig, VideoInfo, plan_windows, probe_video

#: Classes that are a source's deliberate filters (Magma's), not defects of the data.
FILTERED_CLASSES = frozenset({"NarrationFiltered"})
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
    unit_kind: str = "clips"  # "episodes" for robot sources
    units: int = 0  # clips or episodes the source read, plus its problem rows
    clips: int = 0  # clips or episodes (without problem rows)
    videos: int = 0  # distinct video files (or RLDS datasets) the clips use
    windows: int = 0  # windows a run would plan
    usable: int = 0  # clips or episodes that give at least one window
    empty_text: int = 0  # usable clips without task text (the sample gets no semantic turn)
    problems: dict[str, int] = field(default_factory=dict)  # error class -> units
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # error class -> first few
    frame_rates: dict[str, int] = field(default_factory=dict)  # rounded fps -> videos
    fps_outliers: list[dict] = field(default_factory=list)
    fps_mismatches: list[dict] = field(default_factory=list)
    short_episodes: int = 0  # robot episodes shorter than a window (their windows repeat the last frame)

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
            ("units that would become error rows", sum(self.problems.values())),
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
                kind = "filter" if name in FILTERED_CLASSES else "problem"
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
                            ("metadata fps disagrees with the container", self.fps_mismatches)):
            if rows:
                table = Table(title=f"{title} ({len(rows)})")
                for column in rows[0]:
                    table.add_column(column, overflow="fold")
                for row in rows[:10]:
                    table.add_row(*(str(value) for value in row.values()))
                console.print(table)
        verdict = "[green]usable[/green]" if self.usable else "[red]nothing usable[/red]"
        console.print(f"{verdict}: {self.usable:,} {unit}, {self.windows:,} windows")


class _Tally:
    """Counts problems by class, keeping a few examples of each."""

    def __init__(self, report: CheckReport):
        self.report = report
        self.counts: Counter = Counter()
        self.examples: dict[str, list[dict[str, str]]] = defaultdict(list)

    def add(self, unit_id: str, error_class: str, message: str) -> None:
        self.counts[error_class] += 1
        if len(self.examples[error_class]) < EXAMPLES_PER_CLASS:
            self.examples[error_class].append({"unit_id": unit_id, "message": message})

    def close(self) -> None:
        self.report.problems = dict(sorted(self.counts.items()))
        self.report.examples = dict(sorted(self.examples.items()))


def run_check(source: str, root: Path | None, window_len: int = 16, report_path: Path | None = None,
              threads: int = 16) -> CheckReport:
    """Read ``source`` under ``root`` as a run would and report what it would plan and what it would not.

    Args:
        source: a manifest name (``magma-data check --input``).
        root: the dataset folder (``--root``).
        window_len: frames (or steps) per window, as the run will use.
        report_path: where to write the report as JSON; None writes nothing.
        threads: concurrent video probes (header reads).
    """
    manifest = load_manifest(source)
    reader = open_source(manifest, root)
    robot = manifest.pipeline == "oxe_tom"
    report = CheckReport(source=source, root=str(root), window_len=window_len,
                         unit_kind="episodes" if robot else "clips")
    tally = _Tally(report)
    units = reader.clips()
    if robot:
        _check_episodes(units, report, tally)
    else:
        _check_clips(units, reader.name, report, tally, PlanConfig(window_len=window_len), threads)
    tally.close()
    if report_path is not None:
        report.write(report_path)
    return report


def _check_clips(units, source_name: str, report: CheckReport, tally: _Tally, plan: PlanConfig, threads: int) -> None:
    clips: list[Clip] = []
    probes: dict[str, Future] = {}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for unit in units:
            report.units += 1
            if isinstance(unit, ClipProblem):
                tally.add(unit.unit_id, unit.error_class, unit.message)
                continue
            clips.append(unit)
            if unit.video_path not in probes:
                probes[unit.video_path] = pool.submit(probe_video, unit.video_path)
        infos: dict[str, VideoInfo | Exception] = {}
        for path, future in probes.items():
            try:
                infos[path] = future.result()
            except Exception as error:  # an unreadable video is a finding, not a crash
                infos[path] = error
    report.clips, report.videos = len(clips), len(probes)

    for clip in clips:
        info = infos[clip.video_path]
        unit_id = f"{source_name}/{clip.clip_id}"
        if isinstance(info, Exception):
            tally.add(unit_id, type(info).__name__, str(info))
            continue
        try:
            windows = len(plan_windows(clip, info, source_name, plan))
        except Exception as error:  # ClipTooShort and anything else the planner would refuse
            tally.add(unit_id, type(error).__name__, str(error))
            continue
        report.windows += windows
        report.usable += 1
        report.empty_text += not clip.task.strip()
    _frame_rates(clips, infos, report)


def _frame_rates(clips: list[Clip], infos: dict, report: CheckReport) -> None:
    rates = {path: info.fps for path, info in infos.items() if isinstance(info, VideoInfo)}
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


def _check_episodes(units, report: CheckReport, tally: _Tally) -> None:
    datasets = set()
    for unit in units:
        report.units += 1
        if isinstance(unit, ClipProblem):
            tally.add(unit.unit_id, unit.error_class, unit.message)
            continue
        report.clips += 1
        datasets.add(unit.dataset)
        report.windows += unit.num_steps  # one window per step, clamped at the episode's end
        report.usable += 1
        report.short_episodes += unit.num_steps < report.window_len
    report.videos = len(datasets)
