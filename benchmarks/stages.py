"""Per-stage throughput of the video_tom stages on one machine, as windows per second.

Runs each stage alone over the same decoded sample windows (no Ray), so the figures show where a
window's time goes and which stage bounds a CPU run. Ratios between stages are the stable
result; absolute numbers move with the machine. Results go to benchmarks/RESULTS.md.

    python benchmarks/stages.py --windows 12 --height 512
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
import time
from pathlib import Path

from results_file import git_commit, replace_section

from magma_data.config import RunConfig
from magma_data.execution import apply_stage, new_unit_row
from magma_data.pipelines import load_pipeline
from magma_data.sources import load_manifest, open_source

TITLE = "video_tom stages (CPU, one process)"
PIPELINE = load_pipeline("video_tom")
LABELS = {"decode": "decode + resize", "track": "track (Lucas-Kanade, grid {grid_size})"}


def measure(windows: int, height: int, grid_size: int) -> list[tuple[str, float]]:
    """Each of the pipeline's stages, in order, over the same windows."""
    config = RunConfig(limit=windows).with_overrides(
        {"decode": {"height": height}, "track": {"tracker": "lk", "grid_size": grid_size}}
    )
    timings = []
    with tempfile.TemporaryDirectory() as cache:
        rows = [new_unit_row(unit) for unit in PIPELINE.plan(open_source(load_manifest("sample"), Path(cache)), config)]
        for stage in PIPELINE.stages(config):
            start = time.perf_counter()
            apply_stage(rows, stage)
            timings.append((LABELS.get(stage.name, stage.name).format(grid_size=grid_size), time.perf_counter() - start))
    failed = [row["unit_id"] for row in rows if row["drop_kind"]]
    if failed:
        raise RuntimeError(f"windows failed: {failed}")
    return [(name, len(rows) / seconds) for name, seconds in timings]


def write_results(figures: list[tuple[str, float]], args) -> str:
    commit = git_commit()
    slowest = min(rate for _, rate in figures)
    total = sum(1 / rate for _, rate in figures)
    lines = [
        f"{datetime.date.today()} · commit {commit} · {platform.processor() or platform.machine()}, "
        f"no GPU · {args.windows} sample windows of 16 frames at height {args.height}, grid {args.grid_size}",
        "",
        "| stage | windows/s | time share |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {rate:.1f} | {100 / rate / total:.0f} % |" for name, rate in figures]
    lines += ["", f"Bound for one process: {1 / total:.2f} windows/s; slowest stage {slowest:.1f} windows/s."]
    return replace_section(TITLE, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=12)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--grid-size", type=int, default=15)
    args = parser.parse_args()
    print(write_results(measure(args.windows, args.height, args.grid_size), args))


if __name__ == "__main__":
    main()
