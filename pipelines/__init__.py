"""Pipelines: each module is one readable list of stages with its Ray resources.

A pipeline module provides ``NAME``, ``PLAN_COLUMNS`` (what its planner puts in a window's row),
``plan(source, config, output)`` (the units, on the driver; ``output`` is the run's output folder,
where planning keeps what it computes once, e.g. oxe_tom's action statistics, or None), ``stages(config)`` (its stages in order,
without Ray: benchmarks and tests run them in one process) and ``build(windows, config,
placement)`` (the Ray Data graph from planned windows to finished rows, every step with its batch
size and resources: ``cpu_stage`` for the CPU stages, ``track_step`` below for the tracker). Its
shard schema derives from the columns the planner, the stages and the sink declare
(``shard_columns``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from datasets import Features

from magma_data.config import RunConfig
from magma_data.execution import ACTOR_ARGS, Placement, StageActor, cpu_stage, task_batch_size
from magma_data.schema import features
from magma_data.sink import CONFIG_HASH
from magma_data.stages.base import Column
from magma_data.stages.track import DEFAULT_BATCH_SIZE, MAX_WINDOWS_PER_CALL, TrackStage

PIPELINES = ("video_tom", "oxe_tom")


def load_pipeline(name: str) -> ModuleType:
    if name not in PIPELINES:
        raise KeyError(f"unknown pipeline {name!r}; available: {', '.join(PIPELINES)}")
    return importlib.import_module(f"magma_data.pipelines.{name}")


def column_dims(config: RunConfig) -> dict[str, int]:
    """Sizes of the dimensions the config fixes for every row: frames per window, tracked points."""
    return {"T": config.plan.window_len, "N": config.track.grid_size**2}


def shard_columns(pipeline: ModuleType, config: RunConfig) -> list[Column]:
    """Every column a finished row of ``pipeline`` holds, in pipeline order: the planner's, each
    stage's, and the sink's config hash."""
    return [*pipeline.PLAN_COLUMNS, *(c for stage in pipeline.stages(config) for c in stage.columns), CONFIG_HASH]


def shard_features(pipeline: ModuleType, config: RunConfig) -> Features:
    return features(shard_columns(pipeline, config), column_dims(config))


def track_step(windows, track: TrackStage, placement: Placement):
    """The track step of every pipeline, placed as the tracker registry says (``stages.track.TRACKERS``).

    A weight-free tracker (Lucas-Kanade) runs in plain CPU tasks that Ray fuses with the frame
    reader, so decoded frames never leave the worker that made them. A tracker with weights
    (CoTracker3) runs in one actor per GPU (one on CPU without GPUs) that loads them once, and
    windows of equal shape share a forward. Without ``--batch-size``, an actor is handed enough
    windows to fill the batch its tracker chooses from the device's memory (``TrackStage.process``).
    """
    if placement.in_tasks:
        return cpu_stage(windows, track, batch_size=track.config.batch_size or DEFAULT_BATCH_SIZE)
    import ray

    windows_per_call = track.config.batch_size or MAX_WINDOWS_PER_CALL
    return windows.map_batches(
        StageActor, fn_constructor_args=(track,), batch_size=task_batch_size(windows_per_call),
        num_gpus=placement.gpus_per_actor, num_cpus=placement.cpus_per_actor,
        compute=ray.data.ActorPoolStrategy(size=placement.actors), **ACTOR_ARGS,
    )
