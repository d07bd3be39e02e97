"""``magma-data show``: look at what a run wrote before training on it.

Prints per-source statistics (rows, errors by class, filtered units by rule, how often camera
compensation fired and how well it fitted, marks and ToM coverage) and draws a contact sheet:
each SoM image with the traces of its moving marks, as Magma's visualisation shows them, so a bad
threshold or a drifting tracker is visible at a glance. Where the curation stages ran, it also
plots the distribution of each figure their rules judge (``clip_score``, ``mean_motion_px``,
``invisible_fraction``): the kept rows, the windows the rule filtered (their ``value`` in
``filtered/``), and the run's threshold, so a threshold is set by looking at what it cuts.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from magma_data.config import RunConfig
from magma_data.dropped import ERROR, FILTERED
from magma_data.outputs import STATE, source_outputs
from magma_data.parquet_writer import DATA, table_files
from magma_data.stages import quality, text_alignment
from magma_data.stages.marked_frame import FRAME_POS, frame_pos

STAT_COLUMNS = ["camera_motion", "homography_ok", "inlier_ratio", "mark_ids", "mark_positive", "tom_steps", "tracker"]


@dataclass
class SourceStats:
    source: str
    rows: int = 0
    errors: Counter = field(default_factory=Counter)
    filtered: Counter = field(default_factory=Counter)  # by the rule of the recipe that dropped the unit
    camera_motion: float = 0.0  # fraction of windows compensated
    homography_ok: float = 0.0  # fraction of compensated frames with an accepted fit
    inlier_ratio: float = 0.0  # median over fitted frames
    marks_per_row: float = 0.0
    moving_marks_per_row: float = 0.0
    tom_rows: float = 0.0  # fraction of rows with a ToM turn
    trackers: list[str] = field(default_factory=list)


def output_sources(root: Path) -> list[str]:
    """The sources an output folder holds: each has its ledger under ``.magma/`` (a source whose every unit
    failed has no ``data/`` folder), and data under ``data/``."""
    return sorted({p.name for folder in (root / STATE, root / "data") if folder.is_dir()
                   for p in folder.iterdir() if p.is_dir()})


def dataset_stats(root: Path) -> list[SourceStats]:
    stats = []
    for source in output_sources(root):
        entry = SourceStats(source=source)
        data = table_files(root, source, DATA)
        table = pq.read_table(data, columns=STAT_COLUMNS) if data else None
        if table is not None and table.num_rows:
            entry.rows = table.num_rows
            compensated = table.filter(table["camera_motion"])
            ok = np.concatenate([np.asarray(v, bool) for v in compensated["homography_ok"].to_pylist()] or [np.zeros(0)])
            ratios = np.concatenate([np.asarray(v, float) for v in compensated["inlier_ratio"].to_pylist()] or [np.zeros(0)])
            entry.camera_motion = compensated.num_rows / table.num_rows
            entry.homography_ok = float(ok.mean()) if ok.size else 0.0
            entry.inlier_ratio = float(np.median(ratios[ratios > 0])) if (ratios > 0).any() else 0.0
            entry.marks_per_row = float(pc.mean(pc.list_value_length(table["mark_ids"])).as_py())
            entry.moving_marks_per_row = float(np.mean([sum(v) for v in table["mark_positive"].to_pylist()]))
            entry.tom_rows = float(pc.mean(pc.greater(table["tom_steps"], 0)).as_py())
            entry.trackers = sorted(set(table["tracker"].to_pylist()))
        for path in table_files(root, source, ERROR):
            entry.errors.update(pq.read_table(path, columns=["error_class"])["error_class"].to_pylist())
        for path in table_files(root, source, FILTERED):
            entry.filtered.update(pq.read_table(path, columns=["rule"])["rule"].to_pylist())
        stats.append(entry)
    return stats


def draw_traces(row: dict) -> Image.Image:
    """The SoM image with each moving mark's compensated trace drawn from the marked frame on, fading in."""
    image = Image.open(io.BytesIO(row["som_image"]["bytes"])).convert("RGB")
    draw = ImageDraw.Draw(image)
    tracks = np.asarray(row["tracks"], np.float32)  # T N 2
    visibility = np.asarray(row["visibility"], bool)  # T N
    first, steps = frame_pos(row), len(tracks)
    for index, positive in zip(row["mark_track_index"], row["mark_positive"]):
        if not positive:
            continue
        points = [tuple(tracks[t, index]) for t in range(first, steps) if visibility[t, index]]
        for t, (start, end) in enumerate(zip(points, points[1:])):
            shade = int(80 + 175 * (t + 1) / max(len(points) - 1, 1))
            draw.line([start, end], fill=(255, shade, 0), width=3)
    return image


def contact_sheet(root: Path, count: int, destination: Path, columns: int = 4, thumb_height: int = 256) -> Path:
    """A grid of the first ``count`` rows (across sources, in shard order) with their traces."""
    wanted = ["som_image", "tracks", "visibility", "mark_track_index", "mark_positive", FRAME_POS.name]
    pictures = []
    for path in (path for source in output_sources(root) for path in table_files(root, source, DATA)):
        present = [name for name in wanted if name in pq.read_schema(path).names]  # frame_pos: when drawn
        for row in pq.read_table(path, columns=present).slice(0, count - len(pictures)).to_pylist():
            picture = draw_traces(row)
            width = max(1, round(picture.width * thumb_height / picture.height))
            pictures.append(picture.resize((width, thumb_height), Image.Resampling.LANCZOS))
        if len(pictures) >= count:
            break
    if not pictures:
        raise FileNotFoundError(f"no rows under {root / 'data'} to draw")
    cell_width = max(p.width for p in pictures)
    rows = -(-len(pictures) // columns)
    sheet = Image.new("RGB", (cell_width * min(columns, len(pictures)), thumb_height * rows), "white")
    for i, picture in enumerate(pictures):
        sheet.paste(picture, ((i % columns) * cell_width, (i // columns) * thumb_height))
    destination.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(destination)
    return destination


#: The figure each curation rule judges (a filtered row's ``value``), by rule.
RULE_FIGURES = {**text_alignment.RULE_FIGURES, **quality.RULE_FIGURES}
SCORES = tuple(dict.fromkeys(column.name for column in RULE_FIGURES.values()))


def score_values(root: Path, source: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each curation figure a source's rows hold: (the kept rows' values, the filtered windows' values)."""
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    data = table_files(root, source, DATA)
    present = set(pq.read_schema(data[0]).names) if data else set()
    filtered = [pq.read_table(path) for path in table_files(root, source, FILTERED)]
    filtered = [table for table in filtered if "value" in table.column_names]  # files older than the column: none
    for name in SCORES:
        if name not in present:
            continue
        kept = pq.read_table(data, columns=[name])[name].to_numpy().astype(np.float64)
        rules = pa.array([rule for rule, column in RULE_FIGURES.items() if column.name == name])
        dropped = [table.filter(pc.is_in(table["rule"], rules))["value"] for table in filtered]
        values = np.concatenate([column.drop_null().to_numpy() for column in dropped] or [np.zeros(0)])
        found[name] = (kept, values.astype(np.float64))
    return found


def score_plots(root: Path, destination: Path) -> Path | None:
    """A PNG of histograms, one row per source and one column per figure it has; None when no source has any."""
    from matplotlib.figure import Figure

    configs = {output.source: output.config for output in source_outputs(root)}
    panels = [(source, name, values) for source in output_sources(root)
              for name, values in score_values(root, source).items()]
    if not panels:
        return None
    figure = Figure(figsize=(4.5 * min(len(panels), 3), 3.2 * -(-len(panels) // 3)), layout="constrained")
    for index, (source, name, (kept, dropped)) in enumerate(panels):
        axes = figure.add_subplot(-(-len(panels) // 3), min(len(panels), 3), index + 1)
        both = np.concatenate([kept, dropped])
        bins = np.histogram_bin_edges(both, bins=30) if both.size else 10
        axes.hist([kept, dropped], bins=bins, stacked=True, color=["tab:blue", "tab:red"],
                  label=[f"rows ({kept.size})", f"filtered ({dropped.size})"])
        config = configs.get(source, RunConfig())
        threshold = {**text_alignment.figure_thresholds(config.alignment),
                     **quality.figure_thresholds(config.quality)}[name]
        if threshold is not None:
            axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
        axes.set_title(f"{source}: {name}")
        axes.set_xlabel(name)
        axes.set_ylabel("windows")
        axes.legend(fontsize="small")
    destination.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(destination, dpi=100)
    return destination


#: The figures table's columns: header, what it shows (its caption spells out the abbreviations), format.
FIGURES = (
    ("rows", None, lambda s: str(s.rows)),
    ("err", "err, filt: error rows, filtered units", lambda s: str(sum(s.errors.values()))),
    ("filt", None, lambda s: str(sum(s.filtered.values()))),
    ("cam", "cam: windows compensated for camera motion", lambda s: f"{s.camera_motion:.0%}"),
    ("H ok", "H ok: their frames with an accepted homography", lambda s: f"{s.homography_ok:.0%}"),
    ("inl", "inl: median inlier ratio of the fits", lambda s: f"{s.inlier_ratio:.2f}"),
    ("marks", "marks, mov: marks and moving marks a row", lambda s: f"{s.marks_per_row:.1f}"),
    ("mov", None, lambda s: f"{s.moving_marks_per_row:.1f}"),
    ("ToM", "ToM: rows with a ToM turn", lambda s: f"{s.tom_rows:.0%}"),
)


def stats_tables(stats: list[SourceStats], title: str) -> list:
    """``magma-data show``'s tables, whole at 80 columns: the figures of each source (short headers,
    a caption that spells them out), then each source's trackers, errors by class and filtered units
    by rule, whose text wraps in its cells."""
    from rich import box
    from rich.table import Table

    figures = Table(title=title, caption="; ".join(legend for _, legend, _ in FIGURES if legend),
                    box=box.SIMPLE_HEAD, collapse_padding=True)
    figures.add_column("source")
    for header, _, _ in FIGURES:
        figures.add_column(header, justify="right")
    details = Table(box=box.SIMPLE_HEAD, collapse_padding=True)
    for header in ("source", "tracker", "error rows by class", "filtered units by rule"):
        details.add_column(header)
    for s in stats:
        figures.add_row(s.source, *(form(s) for _, _, form in FIGURES))
        details.add_row(s.source, ", ".join(s.trackers) or "-",
                        ", ".join(f"{name} {n}" for name, n in sorted(s.errors.items())) or "-",
                        ", ".join(f"{name} {n}" for name, n in sorted(s.filtered.items())) or "-")
    return [figures, details]


def stats_json(stats: list[SourceStats]) -> str:
    return json.dumps([{**s.__dict__, "errors": dict(s.errors), "filtered": dict(s.filtered)} for s in stats],
                      indent=2, sort_keys=True)
