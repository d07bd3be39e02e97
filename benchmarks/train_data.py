"""magma-train's data path at Magma's scale: one real shard hard-linked into 40 and 4,000 shards (10k and 1M rows).

    python benchmarks/train_data.py [--shard train-00000-of-00002.parquet] [--videos DIR] [--sizes 40 4000]

The shard is one of a real run (``magma-data run video_tom --input folder`` on the clips of
``clips.find_videos``, 256 windows a shard, two 512-px JPEGs a row, 8 row groups of 32; made first
when ``--shard`` is not given). It is hard-linked into ``data/<source>/`` 40 and 4,000 times, so the
corpus costs no disk. Each figure comes from a fresh process (imports done before the clock starts):

- first batch: opening the data and the first micro-batch of 8 samples out of the trainer's
  loader (``RankRows`` + ``TrainingSamples`` + ``Collator``), with 0 and 2 loader workers;
- bytes written (``write_bytes`` of /proc/self/io, the process and its reaped workers, and what
  appeared under a fresh ``HF_DATASETS_CACHE`` / ``TMPDIR``) and peak RSS (process, workers);
- the loader's samples/s alone (after the first batch) with 0, 2 and 8 workers, and the bytes the
  training process read per sample over the stored bytes of a sample's columns (read amplification);
- the count of the split's rows that ``--epochs`` needs (unit columns only; with ``--max-steps``
  none), which the trainer does while the model loads;
- the order's shuffle: distinct row groups and shards among 32 consecutive samples against a full
  shuffle's;
- before (``--before``): ``datasets.load_dataset("parquet", ...)`` as train/data.py opened data
  until issue 23, at the smallest size only (its Arrow copy grows with the rows).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clips import find_videos, shown
from results_file import git_commit, replace_section

TITLE = "magma-train: reading data in place at 10k and 1M rows (CPU)"
SOURCE = "folder"
BATCH = 8
SHUFFLE_BUFFERS = (8, 16, 32)
RUN = ("--tracker", "lk", "--window-len", "8", "--window-stride", "1", "--no-progress")  # >= 256 windows of 5 clips


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard", type=Path, help="a real shard (default: made by a run on --videos)")
    parser.add_argument("--videos", type=Path, help="clips for that run (default: clips.find_videos)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[40, 4000], help="shards in each corpus")
    parser.add_argument("--samples", type=int, default=96, help="samples timed per loader setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 8])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each first-batch figure (the median is kept)")
    parser.add_argument("--read-rows", type=int, default=8192, help="rows read for the read amplification")
    parser.add_argument("--before", action="store_true", help="also time datasets.load_dataset at the smallest size")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one, removed after)")
    parser.add_argument("--results", type=Path, help="markdown file to write (default benchmarks/RESULTS.md)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # one measurement, in a fresh process
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--loader-workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


# -- one measurement, in its own process ----------------------------------------------------------


def io_counters() -> dict[str, int]:
    lines = Path("/proc/self/io").read_text().splitlines()
    return {key: int(value) for key, value in (line.split(": ") for line in lines)}


def loader(data: Path, model: Path, workers: int, steps: int):
    """The trainer's data path for one process (readers, order, RankRows, samples, DataLoader), and the
    clock and I/O counters read once the imports and the processor are done."""
    from torch.utils.data import DataLoader

    from magma_data.train import MagmaProcessor
    from magma_data.train.data import Collator, RankRows, TrainingSamples
    from magma_data.train.order import Order, OrderConfig
    from magma_data.train.readers import SAMPLE_COLUMNS, DataSpec, SplitRule, open_data
    from magma_data.train.samples import SampleMaker
    from magma_data.train.settings import VALIDATION_FRACTION, TrainConfig
    from magma_data.train.trainer import StepPlan

    processor = MagmaProcessor.from_pretrained(model)
    counters, start = io_counters(), time.perf_counter()
    readers = open_data([DataSpec(data)])
    config = TrainConfig.from_recipe("pretrain", data=(str(data),), model=model, output="-", batch_size=BATCH,
                                     global_batch=None, max_steps=steps, validation_fraction=VALIDATION_FRACTION)
    order = Order(readers, OrderConfig(config.seed, 1, config.shuffle_window, config.shuffle_buffer))
    rows = RankRows(order, SplitRule("train", VALIDATION_FRACTION), SAMPLE_COLUMNS, StepPlan(config, 1, None), 0)
    maker = SampleMaker(processor, som_tom_drop=config.som_tom_drop, seed=config.seed)
    samples = TrainingSamples(readers, maker, config.seed)
    batches = DataLoader(samples, batch_sampler=rows, collate_fn=Collator(processor.tokenizer.pad_token_id),
                         num_workers=workers)
    return start, counters, batches


def measure_first(data: Path, model: Path, workers: int) -> dict:
    """Opening the data and the first micro-batch; what was read, written and held meanwhile."""
    start, before, batches = loader(data, model, workers, steps=1)
    first = next(iter(batches))
    seconds = time.perf_counter() - start
    after = io_counters()
    read, written = after["rchar"] - before["rchar"], after["write_bytes"] - before["write_bytes"]
    return {"first_batch_s": seconds, "samples": len(first.sources), "read_mb": read / 1e6, "written_bytes": written,
            **peak_rss()}


def measure_rate(data: Path, model: Path, workers: int, samples: int) -> dict:
    """The loader alone: samples/s after the first batch."""
    _, before, batches = loader(data, model, workers, steps=1 + samples // BATCH)
    iterator = iter(batches)
    next(iterator)
    start, made = time.perf_counter(), 0
    for batch in iterator:
        made += len(batch.sources)
    seconds = time.perf_counter() - start
    return {"samples_per_s": made / seconds, "samples": made,
            "written_bytes": io_counters()["write_bytes"] - before["write_bytes"], **peak_rss()}


def measure_reads(data: Path, rows: int) -> dict:
    """Bytes the training process reads to give ``rows`` rows (``RankRows`` alone, no samples made), over the
    stored bytes of those rows' columns: the read amplification, footers and unit columns included."""
    import pyarrow.parquet as pq

    from magma_data.train.data import RankRows
    from magma_data.train.order import Order, OrderConfig
    from magma_data.train.readers import SAMPLE_COLUMNS, DataSpec, SplitRule, open_data
    from magma_data.train.settings import VALIDATION_FRACTION, TrainConfig
    from magma_data.train.trainer import StepPlan

    config = TrainConfig.from_recipe("pretrain", data=(str(data),), model="-", output="-", batch_size=BATCH,
                                     global_batch=None, max_steps=rows // BATCH,
                                     validation_fraction=VALIDATION_FRACTION)
    before = io_counters()
    readers = open_data([DataSpec(data)])
    order = Order(readers, OrderConfig(config.seed, 1, config.shuffle_window, config.shuffle_buffer))
    given = sum(len(batch) for batch in RankRows(order, SplitRule("train", VALIDATION_FRACTION), SAMPLE_COLUMNS,
                                                  StepPlan(config, 1, None), 0))
    read = io_counters()["rchar"] - before["rchar"]
    metadata = pq.ParquetFile(readers[0].files[0]).metadata
    columns = [i for i in range(metadata.num_columns) if metadata.schema.column(i).path.split(".")[0] in SAMPLE_COLUMNS]
    stored = sum(metadata.row_group(group).column(i).total_compressed_size for group in range(metadata.num_row_groups)
                 for i in columns) / metadata.num_rows
    return {"rows": given, "read_mb": read / 1e6, "stored_kb_per_row": stored / 1e3,
            "amplification": read / (given * stored)}


def peak_rss() -> dict:
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
            "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e3}


def measure_count(data: Path) -> dict:
    from magma_data.train.readers import DataSpec, SplitRule, count_rows, open_data
    from magma_data.train.settings import VALIDATION_FRACTION

    start = time.perf_counter()
    readers = open_data([DataSpec(data)])
    rows = sum(count_rows(reader, SplitRule("train", VALIDATION_FRACTION)) for reader in readers)
    return {"count_s": time.perf_counter() - start, "train_rows": rows}


def measure_shuffle(data: Path) -> dict:
    """Distinct row groups and shards among 32 consecutive rows of the order's first window (one lane), for a
    few buffer sizes, against a full shuffle of every row. The draws need footers only: nothing else is read."""
    import numpy as np

    from magma_data.train.order import Order, OrderConfig
    from magma_data.train.readers import DataSpec, open_data
    from magma_data.train.settings import TrainConfig

    config = TrainConfig.from_recipe("pretrain", data=(str(data),), model="-", output="-")
    readers = open_data([DataSpec(data)])
    group, shard_rows = readers[0].block_rows(0)[0], sum(readers[0].block_rows(0))  # every shard is the same one
    rng = np.random.default_rng(0)
    full = [rng.choice(shard_rows * readers[0].shard_count(), 32, replace=False) for _ in range(200)]
    figures = {"full": (float(np.mean([len(set(batch // group)) for batch in full])),
                        float(np.mean([len(set(batch // shard_rows)) for batch in full])))}
    for buffer in SHUFFLE_BUFFERS:
        order = Order(readers, OrderConfig(config.seed, 1, config.shuffle_window, buffer))
        blocks = order.lane_blocks(0, 0, 0)
        drawn = [blocks[index] for index, _ in order.draws(0, 0, 0)]
        batches = [drawn[start : start + 32] for start in range(0, len(drawn) - 31, 32)]
        figures[buffer] = (float(np.mean([len({(block.shard, block.index) for block in batch}) for batch in batches])),
                           float(np.mean([len({block.shard for block in batch}) for batch in batches])))
    figures["window_rows"] = len(drawn)
    return figures


def measure_before(data: Path) -> dict:
    """What train/data.py did before issue 23: ``datasets.load_dataset("parquet")`` writes an Arrow copy first."""
    import datasets

    from magma_data.parquet_writer import DATA, table_files

    before = io_counters()
    start = time.perf_counter()
    rows = datasets.load_dataset("parquet", data_files=[str(path) for path in table_files(data, SOURCE, DATA)],
                                 split="train", cache_dir=os.environ["HF_DATASETS_CACHE"])
    rows[0]
    seconds = time.perf_counter() - start
    return {"open_s": seconds, "written_bytes": io_counters()["write_bytes"] - before["write_bytes"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3}


def measured(kind: str, data: Path, scratch: Path, **options) -> dict:
    """One measurement in a fresh process whose caches and temporary files go to empty folders."""
    cache, temporary = scratch / "hf-datasets-cache", scratch / "tmp"
    for folder in (cache, temporary):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "TMPDIR": str(temporary), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONDONTWRITEBYTECODE": "1"}  # what the data path writes, not Python's compiled modules
    command = [sys.executable, __file__, "--measure", kind, "--data", str(data)]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{kind} on {data} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["left_on_disk_bytes"] = sum(path.stat().st_size for folder in (cache, temporary)
                                        for path in folder.rglob("*") if path.is_file())
    shutil.rmtree(cache, ignore_errors=True)
    return figures


# -- the corpus -----------------------------------------------------------------------------------


def real_shard(work: Path, videos: Path | None) -> Path:
    output = work / "run"
    magma_data = Path(sys.executable).with_name("magma-data")
    subprocess.run([str(magma_data), "run", "video_tom", "--input", SOURCE, "--root", str(find_videos(videos)),
                    "--output", str(output), *RUN], check=True)
    return sorted((output / "data" / SOURCE).glob("*.parquet"))[0]


def linked_corpus(shard: Path, folder: Path, shards: int) -> Path:
    """``shards`` hard links to one shard, named as the sink names shards: no bytes of data written."""
    data = folder / "data" / SOURCE
    data.mkdir(parents=True, exist_ok=True)
    for index in range(shards):
        target = data / f"train-{index:05d}-of-{shards:05d}.parquet"
        if not target.exists():
            os.link(shard, target)
    return folder


def main() -> None:
    args = parse_args()
    if args.measure:
        kinds = {"first": lambda: measure_first(args.data, args.model, args.loader_workers),
                 "rate": lambda: measure_rate(args.data, args.model, args.loader_workers, args.samples),
                 "reads": lambda: measure_reads(args.data, args.rows), "count": lambda: measure_count(args.data),
                 "shuffle": lambda: measure_shuffle(args.data), "before": lambda: measure_before(args.data)}
        print(json.dumps(kinds[args.measure]()))
        return

    from magma_data.train.create import create_tiny

    work = args.work or Path(tempfile.mkdtemp(prefix="train-data-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        shard = args.shard or real_shard(work, args.videos)
        # a copy on the corpus's file system: hard links cannot cross file systems
        local = work / "shard.parquet"
        if not local.exists():
            shutil.copyfile(shard, local)
        model = work / "tiny" if (work / "tiny" / "config.json").exists() else create_tiny(work / "tiny")
        corpora = {size: linked_corpus(local, work / f"corpus-{size}", size) for size in args.sizes}
        # first batches in rounds over the sizes, so a busy spell of the machine falls on each alike
        tries: dict[tuple[int, int], list[dict]] = {(size, workers): [] for size in args.sizes for workers in (0, 2)}
        for _ in range(args.repeats):
            for size, workers in tries:
                tries[size, workers].append(measured("first", corpora[size], work, model=model, loader_workers=workers))
        figures = {}
        for size, corpus in corpora.items():
            runs = {"count": measured("count", corpus, work), "shuffle": measured("shuffle", corpus, work),
                    "reads": measured("reads", corpus, work, rows=args.read_rows)}
            for workers in (0, 2):
                ranked = sorted(tries[size, workers], key=lambda figures: figures["first_batch_s"])
                runs[f"first-{workers}"] = ranked[len(ranked) // 2]
            for workers in args.workers:
                runs[f"rate-{workers}"] = measured("rate", corpus, work, model=model, loader_workers=workers,
                                                   samples=args.samples)
            if args.before and size == min(args.sizes):
                runs["before"] = measured("before", corpus, work)
            figures[size] = runs
            print(size, json.dumps(runs, indent=1), flush=True)
        body = report(figures, local, args)
        print(body)
        replace_section(TITLE, body, *([args.results] if args.results else []))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def report(figures: dict, shard: Path, args: argparse.Namespace) -> str:
    import pyarrow.parquet as pq
    import torch

    metadata = pq.ParquetFile(shard).metadata
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    sizes = sorted(figures)
    rows = {size: size * metadata.num_rows for size in sizes}
    runs = {size: figures[size] for size in sizes}
    loaders = [key for key in runs[sizes[0]] if key.startswith(("first-", "rate-"))]
    lines = [
        f"{now} · commit {git_commit()} · {platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs "
        f"(load average {load[0]:.1f} at the end: read the ratios), torch {torch.__version__}, the tiny model's "
        f"processor. Produced by `benchmarks/train_data.py`: one shard of a real `video_tom` run on "
        f"{shown(find_videos(args.videos))} ({metadata.num_rows} rows, {metadata.num_row_groups} row groups, "
        f"{shard.stat().st_size / 1e6:.0f} MB) hard-linked into "
        f"{' and '.join(f'{size:,} shards ({rows[size]:,} rows)' for size in sizes)}; micro-batches of {BATCH}, "
        f"each figure from a fresh process (first batch: median of {args.repeats}, the sizes in turn); the trainer's "
        "default order "
        "(`--shuffle-window 64 --shuffle-buffer 16`, one lane), validation fraction 0.05.",
        "",
        "| rows | first batch, 0 workers | first batch, 2 workers | read before it | bytes written | left in caches "
        "| peak RSS, first batch | " + " | ".join(f"samples/s, {w} workers" for w in args.workers)
        + " | read / stored bytes | split counted (`--epochs` only) |",
        "|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(args.workers) + "---:|---:|",
    ]
    for size in sizes:
        run = runs[size]
        written = max(run[key]["written_bytes"] for key in loaders)
        left = max(run[key]["left_on_disk_bytes"] for key in loaders)
        lines.append(
            f"| {rows[size]:,} | {run['first-0']['first_batch_s']:.2f} s | {run['first-2']['first_batch_s']:.2f} s "
            f"| {run['first-0']['read_mb']:.0f} MB | {written / 1e3:.0f} kB | {left} B "
            f"| {run['first-0']['peak_rss_mb']:.0f} MB (2 workers: +{run['first-2']['workers_peak_rss_mb']:.0f} MB) | "
            + " | ".join(f"{run[f'rate-{w}']['samples_per_s']:.1f}" for w in args.workers)
            + f" | {run['reads']['amplification']:.2f} | {run['count']['train_rows']:,} rows in "
              f"{run['count']['count_s']:.1f} s |"
        )
    small, large = sizes[0], sizes[-1]
    ratio = runs[large]["first-0"]["first_batch_s"] / runs[small]["first-0"]["first_batch_s"]
    ratio2 = runs[large]["first-2"]["first_batch_s"] / runs[small]["first-2"]["first_batch_s"]
    reads = runs[large]["reads"]
    shuffle = runs[large]["shuffle"]
    lines += [
        "",
        f"First batch at {rows[large]:,} rows over {rows[small]:,}: {ratio:.2f}x with 0 workers, {ratio2:.2f}x with 2. "
        f"Read amplification over {reads['rows']:,} rows given: {reads['read_mb']:,.0f} MB read for rows of "
        f"{reads['stored_kb_per_row']:.0f} kB stored each (the sample's columns: two JPEGs, text, ids), footers and "
        "unit columns included; the first batch alone reads the buffer's first row groups. Bytes written: the "
        "loader workers' interprocess files (Python's temporary files, deleted at once), nothing of the data; "
        "caches and temporary folders were empty after every run. Samples/s: one run of each setting, "
        f"{args.samples} samples; on a shared machine they move between runs more than between settings.",
        "",
        f"Shuffle: 32 consecutive samples of the first window ({shuffle['window_rows']:,} rows) come from "
        + ", ".join(f"{shuffle[str(b)][0]:.1f} row groups of {shuffle[str(b)][1]:.1f} shards with a buffer of {b}"
                    for b in SHUFFLE_BUFFERS)
        + f"; a full shuffle of all {rows[large]:,} rows: {shuffle['full'][0]:.1f} row groups of "
          f"{shuffle['full'][1]:.1f} shards.",
    ]
    if "before" in runs[small]:
        before = runs[small]["before"]
        lines += ["", f"Before (`datasets.load_dataset(\"parquet\")`, {rows[small]:,} rows): {before['open_s']:.1f} s "
                      f"before the first row, {before['written_bytes'] / 1e9:.2f} GB written "
                      f"({before['left_on_disk_bytes'] / 1e9:.2f} GB left in its cache), peak RSS "
                      f"{before['peak_rss_mb']:.0f} MB; it grows with the rows (not run at {rows[large]:,})."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
