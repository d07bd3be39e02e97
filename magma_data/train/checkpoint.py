"""Checkpoints of a run, and its final model.

A checkpoint (``checkpoint-<step>/``) is a Magma-format folder (``MagmaForCausalLM.from_pretrained``
and ``magma-train eval`` read it; weights in the start model's dtype; with LoRA, merged or the
adapters alone, as ``--lora-save`` says) plus ``trainer/``: the fp32 master weights and the
optimizer state, written shard by shard with ``torch.distributed.checkpoint``, and
``trainer_state.pt`` (step, scheduler, counts, the data order and each lane's position in it). It
is written under a temporary name and renamed when complete, so a crash never leaves a half
checkpoint that ``--resume`` would take.
The run's final model goes to ``--output`` itself, with ``training.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from . import lora
from .config import MagmaConfig
from .order import LanePosition
from .parallel import Processes, unwrapped
from .processor import MagmaProcessor
from .settings import TRAINING_RECORD, TrainConfig

TRAINER_FOLDER = "trainer"
TRAINER_STATE = "trainer_state.pt"
CHECKPOINT_PREFIX = "checkpoint-"


def checkpoint_to_resume(config: TrainConfig) -> Path | None:
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


def weights_dtype(folder: Path) -> torch.dtype:
    """The dtype a Magma folder's weights are stored in (its config's ``dtype``)."""
    dtype = MagmaConfig.from_pretrained(folder).dtype or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


@dataclass
class CheckpointManager:
    """What a checkpoint holds and restores: the model, optimizer, scheduler and row counts."""

    config: TrainConfig
    processes: Processes
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    processor: MagmaProcessor
    #: the start model's weight dtype: saved folders keep it (Magma-8B: bf16)
    weights_dtype: torch.dtype
    #: the tokens training added to the start model's tokenizer (an adapter folder then carries the embeddings)
    added_tokens: list[str] = dataclasses.field(default_factory=list)
    #: rows skipped, by reason, on this process (a resumed run's earlier counts live on rank 0)
    skipped: Counter = dataclasses.field(default_factory=Counter)

    def save(self, step: int, positions: dict[int, LanePosition]) -> Path:
        """``checkpoint-<step>/``, written under a temporary name and renamed when complete, with this
        process's lanes' ``positions`` at ``step`` (``data.RankRows.positions``)."""
        config, processes = self.config, self.processes
        final = config.output / f"{CHECKPOINT_PREFIX}{step}"
        partial = config.output / f"{final.name}.partial"
        if processes.is_main:
            shutil.rmtree(partial, ignore_errors=True)
        processes.barrier()
        self.save_model(partial)
        self._distributed_checkpoint("save", partial / TRAINER_FOLDER)
        skipped = self.total_skipped()
        lanes = {lane: list(position) for part in processes.gather(positions) for lane, position in part.items()}
        if processes.is_main:
            state = {
                "step": step, "scheduler": self.scheduler.state_dict(), "skipped": dict(skipped),
                "data_order": config.data_order(processes.world_size), "lanes": lanes,
            }
            torch.save(state, partial / TRAINER_FOLDER / TRAINER_STATE)
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            for old in checkpoints(config.output)[: -config.keep_checkpoints]:
                shutil.rmtree(old)
        processes.barrier()
        return final

    def load(self, checkpoint: Path) -> tuple[int, dict[int, LanePosition]]:
        """fp32 master weights, optimizer and scheduler of ``checkpoint``; returns its step and its lanes' positions."""
        state = torch.load(checkpoint / TRAINER_FOLDER / TRAINER_STATE, weights_only=True)
        expected = self.config.data_order(self.processes.world_size)
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
        return state["step"], {int(lane): LanePosition(*position) for lane, position in state["lanes"].items()}

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

    def save_model(self, folder: Path) -> None:
        """The model in Magma-8B's layout and the start model's dtype (or LoRA's adapters), with its processor."""
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.processes.is_main:
            config = self.config
            model = unwrapped(self.model)
            if config.lora and config.lora_save == "adapter":
                lora.save_adapter(model, folder, full, config.model, bool(self.added_tokens))
            else:
                if config.lora:
                    full = lora.merged_state_dict(full, config.lora_alpha / config.lora_rank)
                    model = model.get_base_model()
                model.save_pretrained(folder, state_dict={key: value.to(self.weights_dtype) for key, value in full.items()})
                magma_config = copy.deepcopy(model.config)
                magma_config.dtype = str(self.weights_dtype).removeprefix("torch.")  # the weights', not the fp32 master's
                magma_config.save_pretrained(folder)
            self.processor.save_pretrained(folder)
        self.processes.barrier()

    def save_final(self, record: dict[str, Any]) -> Path:
        """The trained model in ``--output`` and ``training.json``: what was trained on, and how."""
        config = self.config
        self.save_model(config.output)
        skipped = self.total_skipped()
        if self.processes.is_main:
            record = {"config": config.to_record(), **record, "added_tokens": self.added_tokens, "skipped_rows": dict(skipped)}
            (config.output / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        return config.output

    def total_skipped(self) -> Counter:
        return sum(self.processes.gather(self.skipped), Counter())
