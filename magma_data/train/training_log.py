"""What a run shows and keeps of its progress: the bar, a line every ``--log-every`` steps,
``log.jsonl`` and TensorBoard, all written by the main process."""

from __future__ import annotations

import json
import sys
import time
import types
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .parallel import Processes

LOG_FILE = "log.jsonl"


class TrainingLog:
    """Progress bar, a line every ``log_every`` steps, ``log.jsonl`` and TensorBoard (main process)."""

    def __init__(self, output: Path, processes: Processes, total_steps: int, start_step: int, log_every: int, progress: bool,
                 header: str):
        self.output = output
        self.processes = processes
        self.log_every = log_every
        self.main = processes.is_main
        self.last_loss: float | None = None
        self._seen_reasons: set[str] = set()
        self._window = {"samples": 0.0, "tokens": 0.0, "time": time.perf_counter()}
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not (self.main and progress), unit="step")
        self.log_file = _open_log(output, start_step) if self.main else None
        self.board = _tensorboard(output) if self.main else None
        self.say(header + (f"; resuming at step {start_step}" if start_step else ""))

    def say(self, line: str) -> None:
        """One line on the terminal, from the main process."""
        if self.main:
            tqdm.write(line)

    def note_skipped(self, skipped: list) -> None:
        """The first row skipped for each reason is shown with its detail (any process)."""
        for item in skipped:
            if item.reason not in self._seen_reasons:
                self._seen_reasons.add(item.reason)
                tqdm.write(f"[rank {self.processes.rank}] skipping rows: {item.reason} ({item.source} {item.detail}); counting the rest")

    def step(self, step: int, result: dict[str, float], lr: float) -> None:
        self._window["samples"] += result["samples"]
        self._window["tokens"] += result["tokens"]
        if not self.main:
            return
        self.last_loss = result["loss"]
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{result['loss']:.4f}", lr=f"{lr:.2e}")
        record = {"step": step, "lr": lr, **result}
        if torch.cuda.is_available():
            record["gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        self.log_file.write(json.dumps(record) + "\n")
        self.log_file.flush()
        if self.board:
            for key in ("loss", "grad_norm"):
                self.board.add_scalar(f"train/{key}", result[key], step)
            self.board.add_scalar("train/lr", lr, step)
        if step % self.log_every == 0:
            elapsed = time.perf_counter() - self._window["time"]
            memory = f" gpu mem {record['gpu_memory_gb']:.1f} GB" if "gpu_memory_gb" in record else ""
            tqdm.write(
                f"step {step} loss {result['loss']:.4f} lr {lr:.2e} samples/s {self._window['samples'] / elapsed:.2f} "
                f"tokens/s {self._window['tokens'] / elapsed:.0f}{memory}"
            )
            if self.board:
                self.board.add_scalar("train/samples_per_s", self._window["samples"] / elapsed, step)
                self.board.add_scalar("train/tokens_per_s", self._window["tokens"] / elapsed, step)
            self._window = {"samples": 0.0, "tokens": 0.0, "time": time.perf_counter()}

    def close(self, skipped: Counter) -> None:
        if not self.main:
            return
        self.bar.close()
        self.log_file.close()
        if self.board:
            self.board.close()
        summary = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items())) or "none"
        tqdm.write(f"wrote {self.output}; rows skipped: {summary}")


def _open_log(output: Path, start_step: int):
    """``log.jsonl`` for appending; a resumed run first drops the records after its checkpoint."""
    path = output / LOG_FILE
    kept = [record for record in read_log(output) if record["step"] <= start_step] if start_step and path.exists() else []
    log = path.open("w")
    log.writelines(json.dumps(record) + "\n" for record in kept)
    return log


def _tensorboard(output: Path):
    """A SummaryWriter; TensorBoard comes with the ``train`` extra, and a run without it logs to log.jsonl only.

    TensorBoard imports TensorFlow when it finds it (the ``oxe`` extra installs it) and falls back to
    its own stub otherwise; its ``tensorboard.compat.notf`` marker asks for the stub outright, which
    writes the same event files without TensorFlow's seconds of import and its log lines.
    """
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(output / "tensorboard"))


def read_log(output: Path) -> Iterator[dict[str, Any]]:
    """The per-step records of ``log.jsonl``."""
    with (output / LOG_FILE).open() as lines:
        for line in lines:
            yield json.loads(line)
