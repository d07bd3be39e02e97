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
from magma_data.sources.sample import SampleSource
from magma_data.stages.camera import CameraStage
from magma_data.stages.decode import DecodeStage
from magma_data.stages.marks import MarksStage
from magma_data.stages.plan import plan_source
from magma_data.stages.render import RenderStage
from magma_data.stages.track import TrackStage

TITLE = "video_tom stages (CPU, one process)"


def measure(windows: int, height: int, grid_size: int) -> list[tuple[str, float]]:
    config = RunConfig().with_overrides(
        {"decode": {"height": height}, "track": {"tracker": "lk", "grid_size": grid_size}}
    )
    with tempfile.TemporaryDirectory() as cache:
        rows = plan_source(SampleSource(Path(cache)).clips(), "sample", config.plan, limit=windows)
        timings = []
        decode = DecodeStage(config.decode)
        start = time.perf_counter()
        for row in rows:
            row.update(decode(row))
        timings.append(("decode + resize", time.perf_counter() - start))

    track = TrackStage(config.track)
    start = time.perf_counter()
    for row, result in zip(rows, track.track_rows(rows)):
        row.update(result)
    timings.append((f"track (Lucas-Kanade, grid {grid_size})", time.perf_counter() - start))

    for stage in (CameraStage(config.camera), MarksStage(config.marks, seed=0), RenderStage(config.render)):
        start = time.perf_counter()
        for row in rows:
            row.update(stage(row))
        timings.append((stage.name, time.perf_counter() - start))
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
