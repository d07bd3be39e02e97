"""The training loop: ``train(config)`` runs unchanged in one process, under ``torchrun`` (one or
many nodes; gloo on CPU, NCCL on GPU) and inside Ray Train's workers.

A plain PyTorch loop rather than Hugging Face's Trainer, because each of its states is one
number or one file here:

- data position: step ``s`` takes positions ``s·G .. s·G + G - 1`` of the run (``G`` = global
  batch = processes x micro-batch x accumulation) from the mixture's seeded per-epoch order
  (``data.Mixture``); process ``r`` takes micro-batch ``m`` at ``s·G + (m·W + r)·B``. Resuming
  needs only the step: no sample is seen twice or skipped.
- randomness inside the model (the tower's stochastic depth) is seeded for every micro-batch
  from (seed, step, its place in the global batch), so resuming needs no generator state and
  the draws do not depend on how many processes share the batch;
- the loss of a step is the mean over every supervised token of the global batch, however it is
  split into processes and micro-batches, so 2 processes x 1 sample equal 1 process x 2
  micro-batches. (Magma's HF Trainer averages per-device means; the two agree when every
  micro-batch has the same number of supervised tokens.)

Parallelism: DDP for models that fit on one device; FSDP2 (``fully_shard`` on every Llama
decoder layer and ConvNeXt stage, then the root; ``shard_model``) for Magma-8B on several GPUs,
with bf16 compute and fp32 master weights, gradient reductions and optimizer state.

A checkpoint (``checkpoint-<step>/``) is a Magma-format folder (``MagmaForCausalLM.from_pretrained``
and ``magma-train eval`` read it; weights in the start model's dtype) plus ``trainer/``: the fp32
master weights and the optimizer state, written shard by shard with ``torch.distributed.checkpoint``,
and ``trainer_state.pt`` (step, scheduler, counts). The run's final model goes to ``--output`` itself.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import json
import math
import os
import shutil
import sys
import time
import types
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from .config import MagmaConfig
from .data import (
    MAGMA_MAX_LENGTH,
    VALIDATION_FRACTION,
    Batch,
    Collator,
    DataSpec,
    Mixture,
    SampleMaker,
    TrainingSamples,
    open_data,
)
from .model import STORED_ONLY, MagmaForCausalLM
from .processor import MagmaProcessor

#: The model's parts, as ``--train`` names them.
PARTS = {"vision": "vision_tower", "projector": "multi_modal_projector", "llm": "language_model"}
#: The paper's settings per mode (docs/magma-model.md §Training settings): AdamW at 1e-5 for both; pretraining 3 epochs
#: at a constant rate, fine-tuning 1 epoch with cosine decay after a 3 % warm-up (Magma's scripts).
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": {"lr": 1e-5, "schedule": "constant", "warmup_ratio": 0.0, "epochs": 3},
    "finetune": {"lr": 1e-5, "schedule": "cosine", "warmup_ratio": 0.03, "epochs": 1},
}
TRAINER_FOLDER = "trainer"
TRAINER_STATE = "trainer_state.pt"
TRAINING_RECORD = "training.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_PREFIX = "checkpoint-"


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; ``MODE_DEFAULTS`` fills what the user did not set."""

    data: tuple[str, ...]
    model: Path
    output: Path
    mode: Literal["pretrain", "finetune"] = "finetune"
    train: tuple[str, ...] = tuple(PARTS)
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 1  # per process and micro-batch
    grad_accum: int = 1
    lr: float | None = None
    schedule: Literal["constant", "cosine"] | None = None
    warmup_ratio: float | None = None
    weight_decay: float = 0.0  # Magma's scripts
    max_grad_norm: float = 1.0  # Magma's train.py (HF default)
    seed: int = 0
    precision: Literal["bf16", "fp32"] = "bf16"
    gradient_checkpointing: bool = False
    strategy: Literal["ddp", "fsdp"] = "ddp"
    max_length: int = MAGMA_MAX_LENGTH
    validation_fraction: float = VALIDATION_FRACTION
    redraw_marks: bool = False
    resume: bool = False
    save_every: int = 500
    keep_checkpoints: int = 1
    log_every: int = 10
    num_workers: int = 2
    progress: bool = True
    cache_dir: Path | None = None

    def resolved(self) -> TrainConfig:
        """A copy with the mode's defaults in place of every unset value."""
        defaults = MODE_DEFAULTS[self.mode]
        unknown = set(self.train) - set(PARTS)
        if unknown or not self.train:
            raise ValueError(f"--train takes parts among {', '.join(PARTS)} (or 'all'); got {', '.join(self.train)}")
        return dataclasses.replace(
            self, **{name: value for name, value in defaults.items() if getattr(self, name) is None}
        )

    def data_order(self) -> dict[str, Any]:
        """What fixes which sample a position holds: resuming with other values is refused."""
        return {
            "data": list(self.data), "seed": self.seed, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
            "validation_fraction": self.validation_fraction, "redraw_marks": self.redraw_marks,
        }


# -- processes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Processes:
    """This process's place among the run's: rank, world size and device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    #: this process made the process group (torchrun); under Ray Train, Ray owns it
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls) -> Processes:
        """One process, or the group torchrun / Ray Train describe in the environment (RANK,
        WORLD_SIZE, LOCAL_RANK, MASTER_ADDR); NCCL on GPUs, gloo on CPUs."""
        cuda = torch.cuda.is_available()
        owns_group = not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        if owns_group:
            dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
        if not dist.is_initialized():
            return cls(device=torch.device("cuda", 0) if cuda else torch.device("cpu"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        return cls(dist.get_rank(), dist.get_world_size(), device, owns_group)

    def end(self) -> None:
        """Destroy the process group ``start`` made. Left to the interpreter's exit, gloo's threads can
        abort the process ("terminate called without an active exception") after the work is done."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def sum(self, value: float | torch.Tensor) -> float:
        total = torch.as_tensor(value, dtype=torch.float64, device=self._reduce_device).clone()
        if self.world_size > 1:
            dist.all_reduce(total)
        return float(total)

    def gather(self, value: Any) -> list[Any]:
        if self.world_size == 1:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    @property
    def _reduce_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


# -- the run ------------------------------------------------------------------------------------


def train(config: TrainConfig) -> Path:
    """Train and write the final model to ``config.output``; returns that folder."""
    config = config.resolved()
    processes = Processes.start()
    try:
        return _train(config, processes)
    finally:
        processes.end()


def _train(config: TrainConfig, processes: Processes) -> Path:
    checkpoint = _checkpoint_to_resume(config)
    if processes.is_main:
        config.output.mkdir(parents=True, exist_ok=True)

    processor = MagmaProcessor.from_pretrained(config.model)
    maker = SampleMaker(processor, config.max_length)
    sources = _main_first(processes, lambda: open_data([DataSpec.parse(d) for d in config.data], config.cache_dir))
    indices = [source.split_indices("train", config.validation_fraction) for source in sources]
    mixture = Mixture([len(i) for i in indices], [source.weight for source in sources], config.seed)
    plan = StepPlan(config, processes.world_size, mixture.epoch_length)

    model = load_for_training(checkpoint or config.model, config, processes)
    trainable = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_scheduler(
        "constant_with_warmup" if config.schedule == "constant" else "cosine",
        optimizer,
        num_warmup_steps=math.ceil(config.warmup_ratio * plan.total_steps),
        num_training_steps=plan.total_steps,
    )
    run = TrainingRun(config, processes, plan, model, optimizer, scheduler, processor, weights_dtype(config.model))
    start_step = run.load_checkpoint(checkpoint) if checkpoint else 0

    samples = TrainingSamples(sources, indices, mixture, maker, config.seed, redraw=config.redraw_marks)
    collate = Collator(processor.tokenizer.pad_token_id, config.max_length)
    loader = DataLoader(
        samples, batch_sampler=plan.micro_batches(start_step, processes.rank), collate_fn=collate,
        num_workers=config.num_workers,
    )
    logger = TrainingLog(config, processes, plan, start_step, sum(len(i) for i in indices), [s.name for s in sources])
    stand_in = collate([maker.stand_in()])
    batches = iter(loader)
    for step in range(start_step, plan.total_steps):
        micro_batches = [next(batches) for _ in range(config.grad_accum)]
        result = training_step(model, micro_batches, stand_in, optimizer, scheduler, trainable, config, processes, step)
        for batch in micro_batches:
            run.skipped.update(item.reason for item in batch.skipped)
            logger.note_skipped(batch.skipped)
        logger.step(step + 1, result, scheduler.get_last_lr()[0])
        if (step + 1) % config.save_every == 0 and step + 1 < plan.total_steps:
            run.save_checkpoint(step + 1)
    run.save_checkpoint(plan.total_steps)
    run.save_final(logger.last_loss)
    logger.close(run.total_skipped())
    return config.output


@dataclass(frozen=True)
class StepPlan:
    """How positions of the run map to steps, processes and micro-batches."""

    config: TrainConfig
    world_size: int
    epoch_length: int

    @property
    def global_batch(self) -> int:
        return self.world_size * self.config.batch_size * self.config.grad_accum

    @property
    def end_position(self) -> int:
        """One past the last position: ``--max-steps`` full steps, else every sample of the epochs."""
        if self.config.max_steps:
            return self.config.max_steps * self.global_batch
        return self.config.epochs * self.epoch_length

    @property
    def total_steps(self) -> int:
        return math.ceil(self.end_position / self.global_batch)

    def micro_batches(self, start_step: int, rank: int) -> Iterator[list[int]]:
        """This process's positions for every micro-batch from ``start_step`` on, in order."""
        size = self.config.batch_size
        for step in range(start_step, self.total_steps):
            for micro in range(self.config.grad_accum):
                first = step * self.global_batch + (micro * self.world_size + rank) * size
                yield list(range(first, min(first + size, self.end_position)))


def training_step(
    model: torch.nn.Module,
    micro_batches: list[Batch],
    stand_in: Batch,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainable: list[torch.nn.Parameter],
    config: TrainConfig,
    processes: Processes,
    step: int,
) -> dict[str, float]:
    """One optimizer step over the global batch; the loss is its supervised-token mean.

    Each micro-batch's mean loss is weighted by its share of the global batch's supervised
    tokens (times the process count, since DDP and FSDP average gradients over processes). A
    micro-batch whose rows were all skipped runs a stand-in sample at weight 0, so every process
    still takes part in each collective call.
    """
    total_tokens = processes.sum(sum(batch.supervised_tokens for batch in micro_batches))
    loss_sum, attended, samples = 0.0, 0, 0
    for index, batch in enumerate(micro_batches):
        # seeded by the micro-batch's place in the global batch, not by the process that runs it
        torch.manual_seed(_step_seed(config.seed, step, index * processes.world_size + processes.rank))
        inputs, tokens = (batch.inputs, batch.supervised_tokens) if batch.inputs else (stand_in.inputs, 0)
        inputs = {key: value.to(processes.device, non_blocking=True) for key, value in inputs.items()}
        last = index == len(micro_batches) - 1
        sync = model.no_sync() if isinstance(model, torch.nn.parallel.DistributedDataParallel) and not last else nullcontext()
        with sync, _autocast(config, processes):
            output = model(**inputs)
            weight = tokens * processes.world_size / max(total_tokens, 1)
            (output.loss * weight).backward()
        loss_sum += float(output.loss.detach()) * tokens
        attended += int(output.attention_mask.sum()) if tokens else 0
        samples += len(batch.sources)
    if total_tokens:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm))
        optimizer.step()
    else:
        grad_norm = 0.0  # every row of the global batch was skipped: nothing to learn this step
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {
        "loss": processes.sum(loss_sum) / total_tokens if total_tokens else float("nan"),
        "grad_norm": grad_norm,
        "samples": processes.sum(samples),
        "tokens": processes.sum(attended),
        "supervised_tokens": total_tokens,
    }


def _autocast(config: TrainConfig, processes: Processes):
    """bf16 compute over fp32 weights (FSDP casts by itself, through its mixed-precision policy)."""
    if config.precision != "bf16" or (config.strategy == "fsdp" and processes.world_size > 1):
        return nullcontext()
    return torch.autocast(processes.device.type, dtype=torch.bfloat16)


def _step_seed(seed: int, step: int, slot: int) -> int:
    return int.from_bytes(hashlib.sha256(f"step\x00{seed}\x00{step}\x00{slot}".encode()).digest()[:8], "little")


def _main_first(processes: Processes, work):
    """Run ``work`` on the main process first (it fills shared caches), then on the others."""
    if not processes.is_main:
        processes.barrier()
    result = work()
    if processes.is_main:
        processes.barrier()
    return result


# -- the model ----------------------------------------------------------------------------------


def load_for_training(folder: Path, config: TrainConfig, processes: Processes) -> torch.nn.Module:
    """The model from a Magma folder, parts frozen as ``--train`` says, wrapped for the run.

    Weights load in the folder's own dtype (memory-mapped; shared by the processes of a node),
    are sharded (FSDP) and only then become fp32 master weights, so no process holds a full fp32
    copy of an 8B model.
    """
    model = MagmaForCausalLM.from_pretrained(folder, dtype=weights_dtype(folder))
    for part, name in PARTS.items():
        getattr(model, name).requires_grad_(part in config.train)
    for name, param in model.named_parameters():
        if name.startswith(STORED_ONLY):
            param.requires_grad_(False)
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    if processes.world_size > 1 and config.strategy == "fsdp":
        return shard_model(model, config).to(torch.float32)
    model = model.to(processes.device, torch.float32)
    if processes.world_size > 1:
        device_ids = [processes.device.index] if processes.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return model


def shard_model(model: MagmaForCausalLM, config: TrainConfig) -> MagmaForCausalLM:
    """FSDP2: every decoder layer and ConvNeXt stage (``_no_split_modules``) is a unit, then the root.

    Parameters are gathered per unit for its forward and backward (bf16 when training in bf16),
    and gradients reduced in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if config.precision == "bf16" else None, reduce_dtype=torch.float32
    )
    units = [module for module in model.modules() if type(module).__name__ in model._no_split_modules]
    for unit in units:
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def unwrapped(model: torch.nn.Module) -> MagmaForCausalLM:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# -- checkpoints --------------------------------------------------------------------------------


def _checkpoint_to_resume(config: TrainConfig) -> Path | None:
    """The newest complete checkpoint with ``--resume``; without it, an output holding one is refused."""
    if config.output.resolve() == config.model.resolve():
        raise ValueError(f"--output {config.output} is the --model folder; write the trained model to a new folder")
    found = checkpoints(config.output)
    if found and not config.resume:
        raise ValueError(
            f"{config.output} already holds {found[-1].name}: pass --resume to continue that run, "
            "or choose another --output"
        )
    return found[-1] if found and config.resume else None


def checkpoints(output: Path) -> list[Path]:
    """Complete checkpoints (renamed into place once written), oldest first."""
    found = [path for path in output.glob(f"{CHECKPOINT_PREFIX}*") if path.name.removeprefix(CHECKPOINT_PREFIX).isdigit()]
    return sorted(found, key=lambda path: int(path.name.removeprefix(CHECKPOINT_PREFIX)))


@dataclass
class TrainingRun:
    """What a checkpoint holds and restores: the model, optimizer, scheduler and row counts."""

    config: TrainConfig
    processes: Processes
    plan: StepPlan
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    processor: MagmaProcessor
    #: the start model's weight dtype: saved folders keep it (Magma-8B: bf16)
    weights_dtype: torch.dtype
    #: rows skipped, by reason, on this process (a resumed run's earlier counts live on rank 0)
    skipped: Counter = dataclasses.field(default_factory=Counter)

    def save_checkpoint(self, step: int) -> Path:
        """``checkpoint-<step>/``, written under a temporary name and renamed when complete."""
        config, processes = self.config, self.processes
        final = config.output / f"{CHECKPOINT_PREFIX}{step}"
        partial = config.output / f"{final.name}.partial"
        if processes.is_main:
            shutil.rmtree(partial, ignore_errors=True)
        processes.barrier()
        self.save_magma_folder(partial)
        self._distributed_checkpoint("save", partial / TRAINER_FOLDER)
        skipped = self.total_skipped()
        if processes.is_main:
            state = {
                "step": step, "scheduler": self.scheduler.state_dict(), "skipped": dict(skipped),
                "data_order": config.data_order(),
            }
            torch.save(state, partial / TRAINER_FOLDER / TRAINER_STATE)
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            for old in checkpoints(config.output)[: -config.keep_checkpoints]:
                shutil.rmtree(old)
        processes.barrier()
        return final

    def load_checkpoint(self, checkpoint: Path) -> int:
        """fp32 master weights, optimizer and scheduler of ``checkpoint``; returns its step."""
        state = torch.load(checkpoint / TRAINER_FOLDER / TRAINER_STATE, weights_only=True)
        expected = self.config.data_order()
        if state["data_order"] != expected:
            changed = sorted(key for key, value in expected.items() if state["data_order"].get(key) != value)
            raise ValueError(
                f"{checkpoint} was written with other {', '.join(changed)}; resuming would train on another sample "
                "order. Resume with the run's own options, or start a new --output"
            )
        self._distributed_checkpoint("load", checkpoint / TRAINER_FOLDER)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.processes.is_main:
            self.skipped.update(state["skipped"])
        return state["step"]

    def _distributed_checkpoint(self, action: str, folder: Path) -> None:
        """Master weights and optimizer state, each process writing (reading) its own shards."""
        import torch.distributed.checkpoint as dcp

        model, optimizer = self.model, self.optimizer
        state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # one process: fine
            if action == "save":
                dcp.save(state, checkpoint_id=str(folder))
                return
            dcp.load(state, checkpoint_id=str(folder))
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, optimizer, state["optimizer"])

    def save_magma_folder(self, folder: Path) -> None:
        """The model in Magma-8B's layout and the start model's dtype, with its processor."""
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.processes.is_main:
            magma = unwrapped(self.model)
            magma.save_pretrained(folder, state_dict={key: value.to(self.weights_dtype) for key, value in full.items()})
            config = copy.deepcopy(magma.config)
            config.dtype = str(self.weights_dtype).removeprefix("torch.")  # the weights', not the fp32 master's
            config.save_pretrained(folder)
            self.processor.save_pretrained(folder)
        self.processes.barrier()

    def save_final(self, final_loss: float | None) -> Path:
        """The trained model in ``--output`` and ``training.json``: what was trained on, and how."""
        config = self.config
        self.save_magma_folder(config.output)
        skipped = self.total_skipped()
        if self.processes.is_main:
            record = {
                "config": {key: str(value) if isinstance(value, Path) else value for key, value in dataclasses.asdict(config).items()},
                "processes": self.processes.world_size,
                "steps": self.plan.total_steps,
                "global_batch": self.plan.global_batch,
                "samples_per_epoch": self.plan.epoch_length,
                "final_loss": final_loss,
                "skipped_rows": dict(skipped),
            }
            (config.output / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        return config.output

    def total_skipped(self) -> Counter:
        return sum(self.processes.gather(self.skipped), Counter())


def weights_dtype(folder: Path) -> torch.dtype:
    dtype = MagmaConfig.from_pretrained(folder).dtype or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


# -- logging ------------------------------------------------------------------------------------


class TrainingLog:
    """Progress bar, a line every ``log_every`` steps, ``log.jsonl`` and TensorBoard (main process)."""

    def __init__(self, config: TrainConfig, processes: Processes, plan: StepPlan, start_step: int, rows: int, sources: list[str]):
        self.config = config
        self.processes = processes
        self.main = processes.is_main
        self.last_loss: float | None = None
        self._seen_reasons: set[str] = set()
        self._window = {"samples": 0.0, "tokens": 0.0, "time": time.perf_counter()}
        self.bar = tqdm(total=plan.total_steps, initial=start_step, disable=not (self.main and config.progress), unit="step")
        self.log_file = _open_log(config.output, start_step) if self.main else None
        self.board = _tensorboard(config.output) if self.main else None
        if self.main:
            tqdm.write(
                f"training {', '.join(config.train)} of {config.model} on {rows} rows ({', '.join(sources)}): "
                f"{plan.total_steps} steps of {plan.global_batch} samples ({processes.world_size} processes x "
                f"{config.batch_size} x {config.grad_accum} accumulated), {plan.epoch_length} samples per epoch; "
                f"lr {config.lr:g} {config.schedule}, {config.precision}"
                + (f"; resuming at step {start_step}" if start_step else "")
            )

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
        if step % self.config.log_every == 0:
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
        tqdm.write(f"wrote {self.config.output}; rows skipped: {summary}")


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
