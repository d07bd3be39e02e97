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
from magma_data.execution import apply_stage, new_unit_row
from magma_data.pipelines import load_pipeline
from magma_data.runner import RunOptions, run
from magma_data.sources import load_manifest, open_source

TITLE = "video_tom end to end on local Ray (CPU)"
PIPELINE = load_pipeline("video_tom")


def one_process(config: RunConfig, cache: Path) -> tuple[int, float]:
    """The pipeline's own stages over all windows in this process, each stage on every window in turn."""
    rows = [new_unit_row(unit) for unit in PIPELINE.plan(open_source(load_manifest("sample"), cache), config)]
    start = time.perf_counter()
    for stage in PIPELINE.stages(config):
        apply_stage(rows, stage)  # the row loop of the pipeline's Ray tasks, without Ray
    elapsed = time.perf_counter() - start
    failed = [row["unit_id"] for row in rows if row["drop_kind"]]
    if failed:
        raise RuntimeError(f"windows failed in the one-process run: {failed}")
    return len(rows), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-stride", type=int, default=4, help="smaller = more windows from the sample clips")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count())
    args = parser.parse_args()
    config = RunConfig().with_overrides({"plan": {"window_stride": args.window_stride}, "track": {"tracker": "lk"}})
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "clips"
        list(open_source(load_manifest("sample"), cache).clips())  # render once, outside both timings
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
