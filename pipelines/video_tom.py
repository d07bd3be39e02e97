"""video_tom: videos -> 16-frame windows -> point traces -> marks -> SoM image, ToM targets, Magma text.

Read ``build`` top to bottom: each line is one stage with its batch size and resources, so the
cost of each step is visible here. Planning runs on the driver (it only reads metadata and video
headers); the sink, also on the driver, commits shards as their windows come back.
"""

from __future__ import annotations

import ray

from magma_data.config import RunConfig
from magma_data.execution import CPU_TASK_ARGS, Resources, run_stage, track_windows
from magma_data.schema import video_tom_features
from magma_data.sources.base import Source
from magma_data.stages.camera import CameraStage
from magma_data.stages.decode import DecodeStage
from magma_data.stages.marks import MarksStage
from magma_data.stages.plan import plan_source
from magma_data.stages.render import RenderStage

NAME = "video_tom"


def features(config: RunConfig):
    return video_tom_features(config.plan.window_len, config.track.grid_size**2)


def plan(source: Source, config: RunConfig) -> list[dict]:
    return plan_source(source.clips(), source.name, config.plan, limit=config.limit)


def build(windows: ray.data.Dataset, config: RunConfig, resources: Resources) -> ray.data.Dataset:
    # Every CPU step carries bounded Ray retries (execution.CPU_TASK_ARGS): a file that crashes its
    # decoder every time ends as error rows instead of looping forever.
    # Decoded frames (~20 MB a window at 512x768) exist only between decode and track: small batches.
    windows = windows.map_batches(
        run_stage, fn_args=(DecodeStage(config.decode),), batch_size=2, num_cpus=1, **CPU_TASK_ARGS
    )
    windows = track_windows(windows, config.track, resources)  # GPU actors, or tasks fused with decode
    windows = windows.map_batches(
        run_stage, fn_args=(CameraStage(config.camera),), batch_size=16, num_cpus=1, **CPU_TASK_ARGS
    )
    windows = windows.map_batches(
        run_stage, fn_args=(MarksStage(config.marks, seed=config.seed),), batch_size=16, num_cpus=1, **CPU_TASK_ARGS
    )
    return windows.map_batches(
        run_stage, fn_args=(RenderStage(config.render),), batch_size=16, num_cpus=1, **CPU_TASK_ARGS
    )
