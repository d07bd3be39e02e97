"""The training loop: ``train(config)`` runs unchanged in one process, under ``torchrun`` (one or
many nodes; gloo on CPU, NCCL on GPU) and inside Ray Train's workers.

The trainer is split by concern, as torchtitan splits its own: ``settings.py`` (the config and
recipes), ``parallel.py`` (process group, DDP / FSDP), ``checkpoint.py`` (checkpoints and the final
model), ``training_log.py`` (bar, log lines, log.jsonl, TensorBoard), ``lora.py`` (adapters);
this file holds the model's set-up, the step plan, the step and the loop.

A plain PyTorch loop rather than Hugging Face's Trainer, because each of its states is one
number or one file here:

- data position: step ``s`` takes ``B`` rows from each lane of the order (``order.py``; one lane per
  micro-batch of the step, ``G`` = global batch = processes x ``B`` x accumulation); process ``r``
  reads only its lanes ``m·W + r``, in place (``data.RankRows``). A checkpoint holds the step and
  each lane's position, so a resume gives the rows the uninterrupted run would have: no sample is
  seen twice or skipped.
- randomness inside the model (the tower's stochastic depth) is seeded for every micro-batch
  from (seed, step, its place in the global batch), so resuming needs no generator state and
  the draws do not depend on how many processes share the batch;
- the loss of a step is the mean over every supervised token of the global batch, however it is
  split into processes and micro-batches, so 2 processes x 1 sample equal 1 process x 2
  micro-batches. (Magma's HF Trainer averages per-device means; the two agree when every
  micro-batch has the same number of supervised tokens.)
"""

from __future__ import annotations

import copy
import hashlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import get_scheduler

from . import lora, parallel
from .checkpoint import CheckpointManager, checkpoint_to_resume, weights_dtype
from .data import Batch, Collator, RankRows, TrainingSamples
from .model import STORED_ONLY, MagmaForCausalLM
from .order import Order, OrderConfig
from .parallel import Processes
from .processor import MagmaProcessor
from .readers import SAMPLE_COLUMNS, DataSpec, Reader, SplitRule, count_rows, open_data
from .samples import SampleMaker
from .settings import PARTS, TrainConfig
from .tokenizer import add_magma_tokens
from .training_log import TrainingLog


def train(config: TrainConfig) -> Path:
    """Train and write the final model to ``config.output``; returns that folder."""
    processes = Processes.start()
    try:
        return _train(config.resolved(torch.cuda.is_available()).for_processes(processes.world_size), processes)
    finally:
        processes.end()


def _train(config: TrainConfig, processes: Processes) -> Path:
    checkpoint = checkpoint_to_resume(config)
    if processes.is_main:
        config.output.mkdir(parents=True, exist_ok=True)

    # Opening the data lists its shards; an order reads a footer when it reaches a shard. Only
    # --epochs needs the rows of the split counted (unit columns, no images): while the model loads.
    sources = open_data([DataSpec.parse(d) for d in config.data])
    rule = SplitRule("train", config.validation_fraction)
    lanes = config.lanes(processes.world_size)
    order = Order(sources, OrderConfig(config.seed, lanes, config.shuffle_window, config.shuffle_buffer))
    with ThreadPoolExecutor(1) as pool:
        counting = None if config.max_steps else pool.submit(_count, sources, rule, processes)
        # the start model, also when resuming: the checkpoint's master weights replace its weights below
        processor = MagmaProcessor.from_pretrained(config.model)
        model, added = load_for_training(config.model, config, processes, processor)
        rows = [int(processes.sum(count)) for count in counting.result()] if counting else None
    maker = SampleMaker(processor, config.max_length, config.som_tom_drop, config.seed)
    plan = StepPlan(config, processes.world_size, order.rows_per_epoch(rows) if rows else None)
    if plan.epoch_length == 0:
        raise ValueError("the data hold no row for this split; check --data and --validation-fraction")

    trainable = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_scheduler(
        "constant_with_warmup" if config.schedule == "constant" else "cosine",
        optimizer,
        num_warmup_steps=math.ceil(config.warmup_ratio * plan.total_steps),
        num_training_steps=plan.total_steps,
    )
    manager = CheckpointManager(config, processes, model, optimizer, scheduler, processor, weights_dtype(config.model),
                                added_tokens=added)
    start_step, positions = manager.load(checkpoint) if checkpoint else (0, None)

    samples = TrainingSamples(sources, maker, config.seed, redraw=config.redraw_marks)
    # rows are read by this process (its lanes' blocks only) and made into samples by the workers
    rows_read = RankRows(order, rule, None if config.redraw_marks else SAMPLE_COLUMNS, plan, processes.rank,
                         start_step, positions)
    collate = Collator(processor.tokenizer.pad_token_id, config.max_length)
    loader = DataLoader(samples, batch_sampler=rows_read, collate_fn=collate, num_workers=config.num_workers)
    logger = TrainingLog(config.output, processes, plan.total_steps, start_step, config.log_every, config.progress,
                         header=_header(config, processes, plan, rows, sources, trainable))
    if added:
        logger.say(f"{config.model} has no {', '.join(added)}: added as Magma's train.py adds it (new embedding and "
                   "lm_head rows = the mean of the others); the trained model keeps it")
    stand_in = collate([maker.stand_in()])
    batches = iter(loader)
    for step in range(start_step, plan.total_steps):
        micro_batches = [next(batches) for _ in range(config.grad_accum)]
        result = training_step(model, micro_batches, stand_in, optimizer, scheduler, trainable, config, processes, step)
        for batch in micro_batches:
            manager.skipped.update(item.reason for item in batch.skipped)
            logger.note_skipped(batch.skipped)
        logger.step(step + 1, result, scheduler.get_last_lr()[0])
        if (step + 1) % config.save_every == 0 and step + 1 < plan.total_steps:
            manager.save(step + 1, rows_read.positions(step + 1))
    manager.save(plan.total_steps, rows_read.positions(plan.total_steps))
    manager.save_final({
        "processes": processes.world_size, "steps": plan.total_steps, "global_batch": plan.global_batch,
        "samples_per_epoch": plan.epoch_length, "final_loss": logger.last_loss,
    })
    logger.close(manager.total_skipped())
    return config.output


def _count(sources: list[Reader], rule: SplitRule, processes: Processes) -> list[int]:
    """This process's share of each source's rows of the split (its shards ``s % W == rank``)."""
    # copies: the readers' open files stay the training loop's
    return [count_rows(copy.copy(source), rule, processes.rank, processes.world_size) for source in sources]


def _header(config: TrainConfig, processes: Processes, plan: StepPlan, rows: list[int] | None, sources: list[Reader],
            trainable) -> str:
    parts = f"LoRA adapters (rank {config.lora_rank}) on {config.model}" if config.lora else f"{', '.join(config.train)} of {config.model}"
    data = ", ".join(f"{source.name} ({source.shard_count()} shards{f', {count} rows' if rows else ''})"
                     for source, count in zip(sources, rows or [None] * len(sources)))
    epoch = f", {plan.epoch_length} samples per epoch" if plan.epoch_length else ""
    return (
        f"training {parts} on {data}, recipe {config.recipe or '-'}: {plan.total_steps} steps of {plan.global_batch} "
        f"samples ({processes.world_size} processes x {config.batch_size} x {config.grad_accum} accumulated){epoch}; "
        f"lr {config.lr:g} {config.schedule}, {config.precision}, {sum(p.numel() for p in trainable):,} parameters train"
    )


@dataclass(frozen=True)
class StepPlan:
    """How many steps the run takes, and how a step's samples split into processes and micro-batches."""

    config: TrainConfig
    world_size: int
    #: samples an epoch holds (counted for --epochs; None with --max-steps)
    epoch_length: int | None

    @property
    def lanes(self) -> int:
        return self.config.lanes(self.world_size)

    @property
    def global_batch(self) -> int:
        return self.lanes * self.config.batch_size

    @property
    def end_position(self) -> int:
        """One past the last position: ``--max-steps`` full steps, else every sample of the epochs."""
        if self.config.max_steps:
            return self.config.max_steps * self.global_batch
        return self.config.epochs * self.epoch_length

    @property
    def total_steps(self) -> int:
        return math.ceil(self.end_position / self.global_batch)


def training_step(
    model: torch.nn.Module,
    micro_batches: list[Batch],
    stand_in: Batch,
    optimizer: torch.optim.Optimizer,
    scheduler,
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
        with parallel.no_sync(model, last), parallel.autocast(config.precision, processes, config.strategy):
            output = model(**inputs, logits_to_keep=1)  # the loss only: no [batch, length, vocabulary] logits
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


def _step_seed(seed: int, step: int, slot: int) -> int:
    return int.from_bytes(hashlib.sha256(f"step\x00{seed}\x00{step}\x00{slot}".encode()).digest()[:8], "little")


def load_for_training(
    folder: Path, config: TrainConfig, processes: Processes, processor: MagmaProcessor
) -> tuple[torch.nn.Module, list[str]]:
    """The model from a Magma folder, ready for the run, and the tokens its tokenizer gained.

    The tokenizer gets the tokens Magma's train.py adds that it lacks (``<action>``, and ``<image>``
    / ``<pad>``), each embedding row the mean of the others; parts are frozen as ``--train`` says
    (with LoRA, all but the adapters); then the model is wrapped for the processes. Weights load
    in the folder's own dtype (memory-mapped; shared by the processes of a node) and become fp32
    master weights only after sharding; LoRA leaves the frozen weights in their dtype.
    """
    quantized = lora.quantization(config.bits, torch.bfloat16 if config.precision == "bf16" else torch.float32) if config.bits != 16 else {}
    model = MagmaForCausalLM.from_pretrained(folder, dtype=weights_dtype(folder), **quantized)
    added = add_magma_tokens(model, processor.tokenizer)
    model.config.tokenizer_vocab_size = processor.tokenizer.vocab_size  # as train.py records it
    for part, name in PARTS.items():
        getattr(model, name).requires_grad_(part in config.train)
    for name, param in model.named_parameters():
        if name.startswith(STORED_ONLY):
            param.requires_grad_(False)
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if config.lora:
        with torch.random.fork_rng(devices=[]):  # the adapters' start is drawn from the run's seed
            torch.manual_seed(_step_seed(config.seed, -1, 0))
            model = lora.add_adapters(model, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
    model.train()
    return parallel.wrap(model, processes, config.strategy, config.precision, frozen_as_stored=config.lora), added
