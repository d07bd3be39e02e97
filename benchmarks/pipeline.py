"""End-to-end windows/s of ``magma-data run video_tom`` on local Ray, against the stages run in one process.

The ratio says what Ray's wiring costs or gains on this machine: above 1 the pipeline overlaps
stages across cores; below 1 its start-up, object transfers and scheduling eat the gain. Both
figures come from the same run on the same windows. Results go to benchmarks/RESULTS.md.

    python benchmarks/pipeline.py --window-stride 4
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

from results_file import git_commit, replace_section

from magma_data.config import RunConfig
from magma_data.runner import RunOptions, run
from magma_data.sources.sample import SampleSource
from magma_data.stages.camera import CameraStage
from magma_data.stages.decode import DecodeStage
from magma_data.stages.marks import MarksStage
from magma_data.stages.plan import plan_source
from magma_data.stages.render import RenderStage
from magma_data.stages.track import TrackStage

TITLE = "video_tom end to end on local Ray (CPU)"


def one_process(config: RunConfig, cache: Path) -> tuple[int, float]:
    rows = plan_source(SampleSource(cache).clips(), "sample", config.plan)
    start = time.perf_counter()
    decode = DecodeStage(config.decode)
    for row in rows:
        row.update(decode(row))
    for row, result in zip(rows, TrackStage(config.track).track_rows(rows)):
        row.update(result)
    for stage in (CameraStage(config.camera), MarksStage(config.marks, seed=config.seed), RenderStage(config.render)):
        for row in rows:
            row.update(stage(row))
    return len(rows), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-stride", type=int, default=4, help="smaller = more windows from the sample clips")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count())
    args = parser.parse_args()
    config = RunConfig().with_overrides({"plan": {"window_stride": args.window_stride}, "track": {"tracker": "lk"}})
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "clips"
        list(SampleSource(cache).clips())  # render once, outside both timings
        windows, serial_s = one_process(config, cache)
        start = time.perf_counter()
        summary = run(config, RunOptions(output=Path(scratch) / "out", root=cache, num_cpus=args.num_cpus,
                                         progress=False))
        ray_s = time.perf_counter() - start
    commit = git_commit()
    serial, pipelined = windows / serial_s, summary.windows_processed / ray_s
    body = "\n".join([
        f"{datetime.date.today()} · commit {commit} · {platform.machine()}, {args.num_cpus} CPUs, no GPU · "
        f"{windows} sample windows (16 frames, height 512, grid 15, Lucas-Kanade)", "",
        "| run | windows/s |", "|---|---:|",
        f"| stages in one process (no Ray) | {serial:.2f} |",
        f"| magma-data run on local Ray, start-up included | {pipelined:.2f} |",
        "", f"Ratio pipeline / one process: {pipelined / serial:.2f}.",
    ])
    section = replace_section(TITLE, body)
    print(section)


if __name__ == "__main__":
    main()
