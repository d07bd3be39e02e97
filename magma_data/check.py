"""``magma-data check``: validate a source before any tracking time is spent.

Plans the source with its pipeline's own planner, as a run would, and counts what it plans:
clips, videos, windows. Every reason a unit would not become a window is counted by error class
(or by filter rule) with example messages: the source's own problems (missing videos, empty or
non-UTF-8 text, unknown ids), the recipe's filters, unreadable videos, clips shorter than a
window. Every video's container is read once (headers, no decoding), shared with the planner, so
frame rates are summarised, with outliers and metadata that disagrees with the container, because
a wrong rate silently shifts every window.

The curation rules that need frames (shots, text alignment, the quality rules; README.md
§Curation) are tried on a sample: ``sample_clips`` clips evenly spaced over the usable ones. Shot
detection decodes each of them whole; alignment and the quality rules run the pipeline's own
stages, in this process, on up to ``SAMPLE_WINDOWS_PER_CLIP`` windows of each (decode and CLIP;
the quality rules track them too). The report counts, per rule, the sampled windows it drops,
and summarises the figures the rules judge. The window counts above are those of the plan
without shots: finding every clip's cuts would decode the whole source.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from magma_data.config import RunConfig
from magma_data.dropped import FILTERED, Dropped
from magma_data.execution import apply_stage, new_unit_row
from magma_data.pipelines import load_pipeline
from magma_data.pipelines.base import PlanContext
from magma_data.sources import load_manifest, open_source
from magma_data.sources.base import Clip, ClipProblem, TracesSource, refuse_paths_outside
from magma_data.sources.robot import RobotSource
from magma_data.stages import quality, text_alignment
from magma_data.stages.plan import VideoInfo, VideoProbes, clip_frames
from magma_data.stages.shots import ShotCache

#: A video whose rate is this far (relative) from the source's median is listed as an outlier.
FPS_OUTLIER_RATIO = 0.25
#: Metadata and container rates further apart than this (relative) are listed as mismatches.
FPS_MISMATCH_RATIO = 0.01
EXAMPLES_PER_CLASS = 20
#: Clips ``check`` decodes by default to try the curation rules that need frames.
DEFAULT_SAMPLE_CLIPS = 8
#: Windows of each sampled clip run through text alignment and the quality rules, evenly spaced.
SAMPLE_WINDOWS_PER_CLIP = 8
#: Sampled windows that go through the stages together: a bound on the decoded frames held at once.
SAMPLE_BATCH = 8
#: The figures the curation rules judge, by rule (a filtered row's ``value``), and the stages that judge them.
RULE_FIGURES = {**text_alignment.RULE_FIGURES, **quality.RULE_FIGURES}
CURATION_STAGES = (text_alignment.TextAlignmentStage, quality.QualityStage)


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
    #: the curation rules tried on a sample of clips (``Curation``); None when no rule that needs frames is on
    curation: dict | None = None

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
        if self.curation is not None:
            _render_curation(self.curation, self.window_len, console)
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
              threads: int = 16, source_options: dict | None = None, notify=None,
              overrides: dict | None = None, sample_clips: int = DEFAULT_SAMPLE_CLIPS) -> CheckReport:
    """Plan ``source`` under ``root`` as a run would and report what it would plan and what it would not.

    Args:
        source: a manifest name (``magma-data check --input``).
        root: the dataset folder (``--root``).
        window_len: frames (or steps) per window, as the run will use.
        report_path: where to write the report as JSON; None writes nothing.
        threads: concurrent video probes (header reads).
        source_options: reader options from the command line (``--videos``).
        notify: told which release folder inside ``root`` is read, when it is not ``root`` itself.
        overrides: config fields as the run's ``--set`` gives them (``{section: {field: value}}``),
            over the manifest's defaults: the curation rules the run will apply.
        sample_clips: clips decoded to try the curation rules that need frames; 0 decodes none.
    """
    manifest = load_manifest(source)
    pipeline = load_pipeline(manifest.pipeline)
    config = RunConfig(pipeline=manifest.pipeline, source=source).with_overrides(manifest.defaults)
    config = config.with_overrides({"plan": {"window_len": window_len}}).with_overrides(overrides or {})
    reader = open_source(manifest, root, notify=notify, **(source_options or {}))
    report = CheckReport(source=source, root=str(root), window_len=window_len, unit_kind=reader.unit_kind)
    context = PlanContext(seen=[])
    pipeline.check(reader, config)  # a setting the pipeline refuses, before any reading
    unsplit = dataclasses.replace(config, shots=dataclasses.replace(config.shots, enabled=False))
    units = pipeline.plan(reader, unsplit, context)
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
    if config.shots.enabled or config.alignment.enabled or config.quality.enabled:
        report.curation = asdict(_curation(pipeline, reader, config, units, taken, context.probes, sample_clips))
    if report_path is not None:
        report.write(report_path)
    return report


@dataclass
class Curation:
    """The curation rules on a sample of clips: what was decoded, and what each rule dropped of it."""

    clips: int = 0  # clips sampled (evenly spaced over the usable ones)
    of_clips: int = 0  # usable clips
    #: why the sample was not run or covers less ("" when it ran as asked)
    note: str = ""
    frames_decoded_for_shots: int = 0  # every frame of every sampled clip, when shots are on
    cuts: int = 0
    windows_without_shots: int = 0  # the sampled clips' windows, planned over whole clips
    windows_across_cuts: int = 0  # of those, the ones a cut runs through (what planning inside shots prevents)
    windows_inside_shots: int = 0  # the sampled clips' windows planned inside shots
    windows_tried: int = 0  # windows run through alignment and the quality rules
    #: rule -> {"stage": where, "dropped": windows (or shots) it dropped, "of": what the stage saw}
    rules: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)  # error class -> windows of the sample that failed
    #: figure -> {"n", "min", "median", "max", "threshold"}: kept and dropped windows together
    figures: dict = field(default_factory=dict)


def _curation(pipeline, reader, config: RunConfig, units: list[dict], clips: list, probes: VideoProbes,
              sample_clips: int) -> Curation:
    """The curation rules that are on, tried on ``sample_clips`` usable clips of the plan ``units`` (made
    without shots): cuts found and windows they cut through, then alignment and the quality rules."""
    from magma_data.runner import resolve

    usable = list(dict.fromkeys(unit["clip_id"] for unit in units if Dropped.of_row(unit) is None))
    video_clips = {clip.clip_id: clip for clip in clips if isinstance(clip, Clip)}
    candidates = [clip_id for clip_id in usable if clip_id in video_clips]
    result = Curation(of_clips=len(usable))
    if sample_clips <= 0 or not candidates:
        result.note = ("--sample-clips 0: the rules that need frames were not tried" if sample_clips <= 0 else
                       "the sample covers video clips, and this source has none: the rules were not tried")
        return result
    picked = np.unique(np.linspace(0, len(candidates) - 1, min(sample_clips, len(candidates))).round().astype(int))
    chosen = {candidates[i] for i in picked}
    result.clips = len(chosen)
    config, _ = resolve(config)  # scenedetect found, the CLIP folder checked, the tracker picked: as a run does
    before = [unit for unit in units if unit["clip_id"] in chosen and Dropped.of_row(unit) is None]
    result.windows_without_shots = len(before)
    with tempfile.TemporaryDirectory() as scratch:  # the run's shot cache, for this check only
        context = PlanContext(output=Path(scratch), probes=probes,
                              keep=lambda unit: isinstance(unit, Clip) and unit.clip_id in chosen)
        planned = pipeline.plan(reader, config, context)
        if config.shots.enabled:
            _cuts(context.state(reader, "shots"), [video_clips[c] for c in sorted(chosen)], before, config, probes,
                  result)
    windows = [unit for unit in planned if Dropped.of_row(unit) is None]
    result.windows_inside_shots = len(windows)
    for unit in planned:
        dropped = Dropped.of_row(unit)
        if dropped is not None:
            _count(result, dropped, len(planned))
    if config.alignment.enabled or config.quality.enabled:
        thresholds = {**text_alignment.figure_thresholds(config.alignment),
                      **quality.figure_thresholds(config.quality)}
        _try_stages(pipeline.stages(config, reader), windows, thresholds, result)
    return result


def _cuts(folder: Path, clips: list[Clip], windows: list[dict], config: RunConfig, probes: VideoProbes,
          result: Curation) -> None:
    """Cuts of the sampled clips (as the plan found them: its cache) and the windows without shots they run through."""
    cache = ShotCache(folder)
    for clip in clips:
        info = VideoInfo(clip.fps, clip.num_frames) if clip.fps and clip.num_frames else probes(clip.video_path)
        start, end = clip_frames(clip, info)
        cuts = cache.get(clip.video_path, start, end, config.shots) or []
        result.frames_decoded_for_shots += end - start
        result.cuts += len(cuts)
        result.windows_across_cuts += sum(
            any(window["frame_indices"][0] < cut <= window["frame_indices"][-1] for cut in cuts)
            for window in windows if window["clip_id"] == clip.clip_id)


def _try_stages(stages: list, windows: list[dict], thresholds: dict[str, float | None], result: Curation) -> None:
    """The pipeline's stages up to its last curation stage, in this process, on up to
    ``SAMPLE_WINDOWS_PER_CLIP`` windows of each sampled clip, ``SAMPLE_BATCH`` at a time; the figures
    the rules judge, with each rule's ``thresholds`` (None: off)."""
    last = max(i for i, stage in enumerate(stages) if isinstance(stage, CURATION_STAGES))
    stages = stages[: last + 1]
    by_clip: dict[str, list[dict]] = defaultdict(list)
    for window in windows:
        by_clip[window["clip_id"]].append(window)
    sample = []
    for clip_windows in by_clip.values():
        keep = np.unique(np.linspace(0, len(clip_windows) - 1, min(SAMPLE_WINDOWS_PER_CLIP, len(clip_windows)))
                         .round().astype(int))
        sample += [new_unit_row(clip_windows[i]) for i in keep]
    result.windows_tried = len(sample)
    for stage in stages:
        stage.setup()
    seen: Counter = Counter()
    values: dict[str, list[float]] = defaultdict(list)
    figures = set(RULE_FIGURES.values())
    for first in range(0, len(sample), SAMPLE_BATCH):
        rows = sample[first : first + SAMPLE_BATCH]
        for stage in stages:
            healthy = [row for row in rows if not row["drop_kind"]]
            seen[stage.name] += len(healthy)
            apply_stage(rows, stage)
            for row in healthy:  # the figures this stage measured, of the windows it kept and of those it dropped
                dropped = Dropped.of_row(row)
                if dropped is None:
                    for column in figures.intersection(stage.columns):
                        values[column.name].append(float(row[column.name]))
                elif dropped.reason in RULE_FIGURES and dropped.value is not None:
                    values[RULE_FIGURES[dropped.reason].name].append(dropped.value)
        for row in rows:
            dropped = Dropped.of_row(row)
            if dropped is not None:
                _count(result, dropped, seen[dropped.stage])
    for rule in result.rules.values():  # the stage's whole sample, now that every batch is through
        rule["of"] = seen.get(rule["stage"], rule["of"])
    result.figures = {name: {"n": len(found), "min": min(found), "median": statistics.median(found),
                             "max": max(found), "threshold": thresholds.get(name)}
                      for name, found in values.items() if found}


def _count(result: Curation, dropped: Dropped, of: int) -> None:
    if dropped.kind == FILTERED:
        entry = result.rules.setdefault(dropped.reason, {"stage": dropped.stage, "dropped": 0, "of": of})
        entry["dropped"] += 1
    else:
        result.errors[dropped.reason] = result.errors.get(dropped.reason, 0) + 1


def _render_curation(curation: dict, window_len: int, console: Console) -> None:
    title = f"curation rules on a sample of {curation['clips']:,} of {curation['of_clips']:,} usable clips"
    if curation["note"]:
        console.print(f"{title}: {curation['note']}")
        return
    lines = []
    if curation["frames_decoded_for_shots"]:
        lines.append(f"shots: decoded every frame of the sampled clips ({curation['frames_decoded_for_shots']:,} "
                     f"frames): cuts found {curation['cuts']:,}; {curation['windows_across_cuts']:,} of their "
                     f"{curation['windows_without_shots']:,} windows of {window_len} planned over whole clips span "
                     f"a cut; planned inside shots they hold {curation['windows_inside_shots']:,}")
    if curation["windows_tried"]:
        lines.append(f"alignment and quality rules: {curation['windows_tried']:,} windows decoded and run through "
                     f"the stages up to the last rule (at most {SAMPLE_WINDOWS_PER_CLIP} a clip)")
    console.print("\n".join([title, *lines]))
    if curation["rules"] or curation["errors"]:
        table = Table(title="what each rule drops in the sample")
        for column in ("rule", "stage", "dropped", "of"):
            table.add_column(column, justify="left" if column in ("rule", "stage") else "right")
        for rule, entry in sorted(curation["rules"].items()):
            table.add_row(rule, entry["stage"], f"{entry['dropped']:,}", f"{entry['of']:,}")
        for error, count in sorted(curation["errors"].items()):
            table.add_row(f"{error} (error)", "", f"{count:,}", "")
        console.print(table)
    if curation["figures"]:
        table = Table(title="figures the rules judge, sampled windows")
        for column in ("figure", "windows", "min", "median", "max", "threshold"):
            table.add_column(column, justify="left" if column == "figure" else "right")
        for name, figure in sorted(curation["figures"].items()):
            threshold = "off" if figure["threshold"] is None else f"{figure['threshold']:g}"
            table.add_row(name, f"{figure['n']:,}", f"{figure['min']:.4g}", f"{figure['median']:.4g}",
                          f"{figure['max']:.4g}", threshold)
        console.print(table)


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
