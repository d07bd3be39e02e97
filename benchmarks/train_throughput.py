"""magma-train on one machine: the data path alone against the model's training step, in samples/s.

    python benchmarks/train_throughput.py [--data out/sample] [--samples 64] [--batch-size 8]

The data path is what a training process waits for: shard rows read in place (``data.RankRows``), turned
into samples (images decoded and cut into crops, chat text tokenized, labels) and collated, by
the DataLoader with 0 and 2 worker processes, with frozen marks and with ``--redraw-marks``
(the marks and render stages run again per sample). The step is the tiny model's forward,
backward and AdamW update on batches collated beforehand, so it costs no data time. The loader
keeps up when its samples/s exceed the step's. Without ``--data``, a sample-source run is made
first. Figures go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from magma_data_parity import sample_run
from results_file import git_commit, replace_section
from torch.utils.data import DataLoader

from magma_data.train import MagmaForCausalLM, MagmaProcessor
from magma_data.train.create import create_tiny
from magma_data.train.data import Collator, RankRows, TrainingSamples
from magma_data.train.order import Order, OrderConfig
from magma_data.train.readers import SAMPLE_COLUMNS, DataSpec, SplitRule, count_rows, open_data
from magma_data.train.samples import SampleMaker
from magma_data.train.settings import TrainConfig
from magma_data.train.trainer import StepPlan

TITLE = "magma-train: data path against the tiny model's step (CPU)"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a magma-data output folder (default: a sample-source run)")
    parser.add_argument("--samples", type=int, default=64, help="samples the data path makes per setting")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="training steps timed (after one warm-up step)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each data-path setting (the median is kept)")
    parser.add_argument("--results", type=Path, help="markdown file to write (default benchmarks/RESULTS.md)")
    return parser.parse_args()


def micro_batches(sources, samples: int, batch_size: int, redraw: bool = False) -> RankRows:
    """One process's micro-batches of ``batch_size`` rows, ``samples`` in all, as the trainer reads them."""
    config = TrainConfig.from_recipe("pretrain", data=("-",), model="-", output="-", batch_size=batch_size,
                                     global_batch=None, max_steps=-(-samples // batch_size), redraw_marks=redraw)
    order = Order(sources, OrderConfig(0, 1, config.shuffle_window, config.shuffle_buffer))
    return RankRows(order, SplitRule("all", 0.0), None if redraw else SAMPLE_COLUMNS, StepPlan(config, 1, None), 0)


def data_path(sources, processor, samples: int, batch_size: int, workers: int, redraw: bool) -> float:
    dataset = TrainingSamples(sources, SampleMaker(processor), seed=0, redraw=redraw)
    loader = DataLoader(dataset, batch_sampler=micro_batches(sources, samples, batch_size, redraw),
                        collate_fn=Collator(processor.tokenizer.pad_token_id), num_workers=workers)
    start = time.perf_counter()
    made = sum(len(batch.sources) for batch in loader)
    return made / (time.perf_counter() - start)


def training_step(model_dir: Path, sources, processor, batch_size: int, steps: int) -> tuple[float, float]:
    """(samples/s, merged tokens/s) of forward + backward + AdamW on pre-collated batches."""
    model = MagmaForCausalLM.from_pretrained(model_dir).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    dataset = TrainingSamples(sources, SampleMaker(processor), seed=0)
    collate = Collator(processor.tokenizer.pad_token_id)
    rows = micro_batches(sources, (steps + 1) * batch_size, batch_size)
    batches = [collate([dataset[row] for row in batch]).inputs for batch in rows]
    rates = []
    for index, batch in enumerate(batches):
        start = time.perf_counter()
        output = model(**batch, logits_to_keep=1)  # the loss only, as the trainer asks
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds = time.perf_counter() - start
        if index:  # the first step warms up
            rates.append((batch_size / seconds, int(output.attention_mask.sum()) / seconds))
    return tuple(np.median(np.asarray(rates), axis=0))


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="train-throughput-"))
    data = args.data or sample_run(work)
    sources = open_data([DataSpec(data)])
    model_dir = create_tiny(work / "tiny")
    processor = MagmaProcessor.from_pretrained(model_dir)
    rows = sum(count_rows(source, SplitRule("all", 0.0)) for source in sources)

    figures = []
    for workers in (0, 2):
        for redraw in (False, True):
            rates = [data_path(sources, processor, args.samples, args.batch_size, workers, redraw) for _ in range(args.repeats)]
            figures.append((f"data path, {workers} workers{', marks re-drawn' if redraw else ''}", float(np.median(rates)), None))
    step_rate, token_rate = training_step(model_dir, sources, processor, args.batch_size, args.steps)
    figures.append((f"tiny model step (forward, backward, AdamW), batch {args.batch_size}", step_rate, token_rate))

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"{now} · commit {git_commit()} · {platform.machine()} CPU ({torch.get_num_threads()} torch threads), torch "
        f"{torch.__version__}, fp32. Produced by `benchmarks/train_throughput.py`: {rows} rows of a sample-source "
        f"run (2 images a row, 1 crop of 512 px each), {args.samples} samples per data-path setting, batches of "
        f"{args.batch_size}; medians of {args.repeats} runs per setting and of {args.steps} steps (a shared, busy machine: "
        "read the ratios). Step: `magma-train init --size tiny` (all parts trained), batches collated beforehand.",
        "",
        "| what | samples/s | x the step | merged tokens/s |",
        "|---|---:|---:|---:|",
    ]
    for name, rate, tokens in figures:
        lines.append(f"| {name} | {rate:.1f} | {rate / step_rate:.1f} | {'' if tokens is None else f'{tokens:.0f}'} |")
    body = "\n".join(lines)
    print(body)
    replace_section(TITLE, body, *([args.results] if args.results else []))


if __name__ == "__main__":
    main()
