"""What Magma's released traces save: the stage that reads them against decode + track, per window.

Renders the sample clips, writes a Magma-Video-ToM miniature for their windows (15x15 grid traces
in pixels of 512-high frames, ``save_to_disk`` as the release is), and times, over the same
windows in one process (no Ray), the released-traces stage (read the record, decode the first
frame) against the decode stage (16 frames) followed by Lucas-Kanade. The ratio is the result; a
CoTracker3 window costs far more than Lucas-Kanade on a CPU. Results go to benchmarks/RESULTS.md.

    python benchmarks/released_traces.py --windows 24
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from datasets import Dataset
from results_file import git_commit, replace_section

from magma_data.config import RunConfig
from magma_data.execution import apply_stage, new_unit_row
from magma_data.export import MAGMA_VIDEO_TOM_FEATURES
from magma_data.pipelines import load_pipeline
from magma_data.sources import load_manifest, open_source

TITLE = "Released traces against decode + track (CPU, one process)"
PIPELINE = load_pipeline("video_tom")


def _release(windows: list[dict], folder: Path) -> None:
    """Records for ``windows`` (planned rows of the sample source): each clip's file is its segment."""
    import av

    records = []
    for row in windows:
        with av.open(row["video_path"]) as container:
            stream = container.streams.video[0]
            width = int(stream.width * 512 / stream.height)  # the frame Magma's traces are in
        xs, ys = np.linspace(8, width - 8, 15), np.linspace(8, 504, 15)
        grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
        records.append({"dataset_name": "sample", "video_name": row["clip_id"], "task_string": row["task"],
                        "trace": np.repeat(grid[None], 16, axis=0).tolist(),
                        "trace_visibility": np.ones((16, 225), bool).tolist(), "frame_index": row["frame_index"]})
    Dataset.from_list(records, features=MAGMA_VIDEO_TOM_FEATURES).save_to_disk(str(folder))


def _time(rows: list[dict], stages) -> float:
    start = time.perf_counter()
    for stage in stages:
        apply_stage(rows, stage)
    failed = [row["unit_id"] for row in rows if row["drop_kind"]]
    if failed:
        raise RuntimeError(f"windows failed: {failed}")
    return (time.perf_counter() - start) / len(rows)


def measure(windows: int) -> tuple[float, float]:
    """Seconds a window: (released traces, decode + Lucas-Kanade)."""
    tracked = RunConfig(limit=windows).with_overrides({"track": {"tracker": "lk"}})
    released = RunConfig(source="magma_video_tom").with_overrides(load_manifest("magma_video_tom").defaults)
    with tempfile.TemporaryDirectory() as cache:
        sample = open_source(load_manifest("sample"), Path(cache) / "clips")
        rows = PIPELINE.plan(sample, tracked)
        _release(rows, Path(cache) / "release" / "sample")
        source = open_source(load_manifest("magma_video_tom"), Path(cache) / "release",
                             videos=[str(Path(cache) / "clips")])
        from_release = [new_unit_row(row) for row in PIPELINE.plan(source, released)]
        first, *_ = PIPELINE.stages(released)
        decode, track, *_ = PIPELINE.stages(tracked)
        return _time(from_release, [first]), _time([new_unit_row(row) for row in rows], [decode, track])


def write_results(seconds: tuple[float, float], args) -> str:
    released, tracked = seconds
    lines = [
        f"{datetime.date.today()} · commit {git_commit()} · {platform.processor() or platform.machine()}, no GPU · "
        f"{args.windows} sample windows of 16 frames, 768x512, grid 15x15",
        "",
        "| step | ms per window | windows/s |",
        "|---|---:|---:|",
        f"| released traces (read the record, decode the first frame) | {released * 1000:.1f} | {1 / released:.1f} |",
        f"| decode 16 frames + Lucas-Kanade | {tracked * 1000:.1f} | {1 / tracked:.1f} |",
        "",
        f"Reading Magma's traces is {tracked / released:.1f}x faster than tracking with Lucas-Kanade here.",
    ]
    return replace_section(TITLE, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=12)
    args = parser.parse_args()
    print(write_results(measure(args.windows), args))


if __name__ == "__main__":
    main()
