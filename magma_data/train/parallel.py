"""Processes and parallelism: the process group, and the model wrapped for it.

One process, or the group torchrun / Ray Train describe in the environment (gloo on CPUs, NCCL
on GPUs). DDP for models that fit on one device; FSDP2 (``fully_shard`` on every Llama decoder
layer and ConvNeXt stage, then the root) for Magma-8B on several GPUs, with bf16 compute and fp32
master weights, gradient reductions and optimizer state.
"""

from __future__ import annotations

import datetime
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist


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

    def main_first(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on the main process first (it fills shared caches), then on the others."""
        if not self.is_main:
            self.barrier()
        result = work()
        if self.is_main:
            self.barrier()
        return result

    @property
    def _reduce_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def wrap(
    model: torch.nn.Module, processes: Processes, strategy: str, precision: str, frozen_as_stored: bool = False
) -> torch.nn.Module:
    """The model on this process's device as fp32 master weights: alone, under DDP, or sharded by FSDP.

    FSDP shards before the fp32 copy is made, so no process holds a full fp32 copy of an 8B model.
    ``frozen_as_stored`` (LoRA): only the trainable parameters become fp32; frozen weights keep
    their dtype, and quantized ones the device bitsandbytes put them on.
    """
    if processes.world_size > 1 and strategy == "fsdp":
        return shard(model, precision).to(torch.float32)
    if not getattr(model, "is_quantized", False):
        model = model.to(processes.device)
    if frozen_as_stored:
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    else:
        model = model.to(torch.float32)
    if processes.world_size > 1:
        device_ids = [processes.device.index] if processes.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return model


def shard(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """FSDP2: every decoder layer and ConvNeXt stage (``_no_split_modules``) is a unit, then the root.

    Parameters are gathered per unit for its forward and backward (bf16 when training in bf16),
    and gradients reduced in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if precision == "bf16" else None, reduce_dtype=torch.float32)
    split_names = unwrapped(model)._no_split_modules
    for unit in [module for module in model.modules() if type(module).__name__ in split_names]:
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def no_sync(model: torch.nn.Module, last_micro_batch: bool):
    """DDP reduces gradients only after the last micro-batch of a step."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) and not last_micro_batch:
        return model.no_sync()
    return nullcontext()


def autocast(precision: str, processes: Processes, strategy: str):
    """bf16 compute over fp32 weights (FSDP casts by itself, through its mixed-precision policy)."""
    if precision != "bf16" or (strategy == "fsdp" and processes.world_size > 1):
        return nullcontext()
    return torch.autocast(processes.device.type, dtype=torch.bfloat16)
