"""Driver throughput: how many finished windows a second the sink takes, without tracking.

The driver receives every finished row (two JPEGs, tracks, homographies, marks) and the sink
turns them into shards: collect, build the Arrow table, write Parquet (zstd, page index,
content-defined chunking), fsync, rename, record in the ledger. A 64-GPU cluster at about 8
windows per second per GPU needs about 500 windows/s from it.

The rows are real: the video_tom stages run in this process (decode, Lucas-Kanade, camera,
marks, render; default config: 16 frames at height 512, grid 15) on windows of the clips in
``--videos`` (``clips.find_videos``); the benchmark then feeds copies of them, each under its own unit id, to the
same sink a run uses, and times each part. It also times the other half of the driver's work:
taking the same rows out of Ray's object store as a run's ``finished_rows`` does (local Ray, so
no network). Results go to benchmarks/RESULTS.md.

    python benchmarks/sink.py --rows 768
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
import time
from pathlib import Path

from clips import find_videos, shown
from results_file import git_commit, replace_section

from magma_data import parquet_writer, schema
from magma_data.config import RunConfig
from magma_data.execution import apply_stage, batch_to_rows, init_ray, new_unit_row, rows_to_batch
from magma_data.pipelines import load_pipeline
from magma_data.runner import open_sink
from magma_data.sources import load_manifest, open_source

TITLE = "Driver throughput: the sink on real rows (CPU)"
TARGET_WINDOWS_PER_S = 500  # 64 GPUs x ~8 windows/s
PIPELINE = load_pipeline("video_tom")


def real_rows(config: RunConfig, count: int, videos: Path) -> list[dict]:
    """``count`` finished rows of the clips in ``videos``, as the driver receives them from Ray."""
    units = PIPELINE.plan(open_source(load_manifest("folder"), videos), config)
    rows = [new_unit_row(unit) for unit in units if not unit.get("drop_kind")][:count]
    for stage in PIPELINE.stages(config):
        apply_stage(rows, stage)
    failed = [row["unit_id"] for row in rows if row["drop_kind"]]
    if failed:
        raise RuntimeError(f"windows failed while making the rows: {failed}")
    return rows


def payload_bytes(row: dict) -> int:
    """What a row weighs in memory: its bytes, arrays and strings."""
    size = 0
    for value in row.values():
        size += value.nbytes if hasattr(value, "nbytes") else len(value) if isinstance(value, (bytes, str)) else 8
    return size


class Timed:
    """Wraps a function and adds up the seconds spent in it."""

    def __init__(self, function):
        self.function, self.seconds = function, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def feed(config: RunConfig, rows: list[dict], total: int, output: Path) -> dict:
    """``total`` windows (copies of ``rows`` under their own unit ids) through the run's sink, timed by part."""
    windows = []
    for i in range(total):
        row = dict(rows[i % len(rows)])
        row["unit_id"] = f"bench/{i:08d}"
        row["sample_id"] = f"{i:020d}"
        windows.append(row)
    units = [{key: window[key] for key in ("unit_id", "sample_id")} for window in windows]
    to_arrow = Timed(schema.to_arrow_table)
    parquet_writer.to_arrow_table = to_arrow  # the writer's own call, counted
    write = Timed(parquet_writer.pq.write_table)
    parquet_writer.pq.write_table = write
    try:
        sink = open_sink(PIPELINE, config, units, output, overwrite=True)
        start = time.perf_counter()
        for window in windows:
            sink.collector.add(window)
        elapsed = time.perf_counter() - start
        sink.output.close()
    finally:
        parquet_writer.to_arrow_table = schema.to_arrow_table
        parquet_writer.pq.write_table = write.function
    written = sum(path.stat().st_size for path in output.rglob("*.parquet"))
    return {"seconds": elapsed, "arrow_s": to_arrow.seconds, "parquet_s": write.seconds, "written": written,
            "shards": sink.shards.total}


def received_per_s(rows: list[dict], total: int) -> float:
    """Windows/s the driver takes from Ray: ``total`` copies of ``rows`` made by Ray tasks (as the
    pipeline's last step makes them), already in the object store, read as ``finished_rows`` reads."""
    import ray

    init_ray(None, None)

    def finished(batch, rows=rows):
        return rows_to_batch([{**rows[int(i) % len(rows)], "unit_id": f"bench/{int(i):08d}"} for i in batch["i"]])

    windows = ray.data.from_items([{"i": i} for i in range(total)], override_num_blocks=max(1, total // 16))
    windows = windows.map_batches(finished, batch_size=16).materialize()
    start = time.perf_counter()
    received = sum(len(batch_to_rows(batch)) for batch in windows.iter_batches(batch_size=None, batch_format="numpy"))
    elapsed = time.perf_counter() - start
    ray.shutdown()
    return received / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=768, help="windows fed to the sink (3 shards of 256 by default)")
    parser.add_argument("--distinct", type=int, default=16, help="real windows made, then repeated")
    parser.add_argument("--videos", type=Path, help="folder of the clips (default: clips.VIDEO_DIRS)")
    args = parser.parse_args()
    videos = find_videos(args.videos)
    config = RunConfig(source="folder").with_overrides({"track": {"tracker": "lk"}})
    rows = real_rows(config, args.distinct, videos)
    row_bytes = sum(payload_bytes(row) for row in rows) / len(rows)
    jpeg_bytes = sum(len(row["image"]) + len(row["som_image"]) for row in rows) / len(rows)
    with tempfile.TemporaryDirectory() as scratch:
        result = feed(config, rows, args.rows, Path(scratch) / "out")
    received = received_per_s(rows, args.rows)
    per_s = args.rows / result["seconds"]
    driver = 1 / (1 / per_s + 1 / received)
    other_s = result["seconds"] - result["arrow_s"] - result["parquet_s"]
    body = "\n".join([
        f"{datetime.date.today()} · commit {git_commit()} · {platform.machine()}, one driver process, no GPU · "
        f"{args.rows} windows ({result['shards']} shards of {config.sink.rows_per_shard}), copies of "
        f"{len(rows)} real windows of {shown(videos)} (16 frames, height 512, grid 15)",
        "",
        f"A window weighs {row_bytes / 1e3:.0f} kB in the driver ({jpeg_bytes / 1e3:.0f} kB of it the two JPEGs) and "
        f"{result['written'] / args.rows / 1e3:.0f} kB in Parquet.",
        "",
        "| measure | value |", "|---|---:|",
        f"| windows/s the sink sustains | {per_s:.0f} |",
        f"| MB/s in (row payload) | {per_s * row_bytes / 1e6:.1f} |",
        f"| MB/s written (Parquet) | {result['written'] / result['seconds'] / 1e6:.1f} |",
        f"| time share: rows -> Arrow table | {result['arrow_s'] / result['seconds']:.0%} |",
        f"| time share: Parquet encode + write | {result['parquet_s'] / result['seconds']:.0%} |",
        f"| time share: collect, fsync, rename, ledger | {other_s / result['seconds']:.0%} |",
        f"| windows/s the driver takes from Ray's object store | {received:.0f} |",
        f"| windows/s of both on one driver thread | {driver:.0f} |",
        "",
        f"Ratio to the ~{TARGET_WINDOWS_PER_S} windows/s a 64-GPU cluster needs: {driver / TARGET_WINDOWS_PER_S:.2f} "
        f"(the sink alone: {per_s / TARGET_WINDOWS_PER_S:.2f}).",
    ])
    print(replace_section(TITLE, body))


if __name__ == "__main__":
    main()
