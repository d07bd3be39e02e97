"""oxe_tom: Open-X episodes -> a window of 16 future steps per step -> traces -> marks -> SoM/ToM + action turn.

The robot twin of ``video_tom``: the same tracker, camera, marks and render stages with Magma's
robot settings from the manifest (moving threshold 1 px, 2-4 moving and 4-9 static clusters,
homography only when the global-motion rule fires, the robot ToM template), fed by RLDS frames
instead of decoded video, and followed by the action turn: the step's 7-D action as 7 tokens.
Read ``build`` top to bottom; planning reads the episodes (instructions, actions) on the driver.
"""

from __future__ import annotations

import ray
from datasets import Features, List, Value

from magma_data.config import RunConfig
from magma_data.execution import CPU_TASK_ARGS, Resources, run_stage, track_windows
from magma_data.schema import video_tom_features
from magma_data.sources.base import Source
from magma_data.stages.action_tokens import ActionTokensStage
from magma_data.stages.camera import CameraStage
from magma_data.stages.marks import MarksStage
from magma_data.stages.render import RenderStage
from magma_data.stages.rlds_frames import RldsFramesStage
from magma_data.stages.robot_plan import plan_episodes

NAME = "oxe_tom"


def features(config: RunConfig) -> Features:
    """video_tom's row (``video_uid``/``clip_id`` = the episode, ``video_path`` = its RLDS folder) plus the robot's."""
    def fixed7(dtype: str) -> List:
        return List(Value(dtype), length=7)

    return Features({
        **video_tom_features(config.plan.window_len, config.track.grid_size**2),
        "dataset": Value("string"),
        "split": Value("string"),
        "episode_index": Value("int64"),
        "image_key": Value("string"),
        "tom": Value("bool"),
        "action": fixed7("float32"),
        "action_q01": fixed7("float32"),
        "action_q99": fixed7("float32"),
        "action_normalized": fixed7("float32"),
        "action_token_ids": fixed7("int32"),
    })


def plan(source: Source, config: RunConfig) -> list[dict]:
    return plan_episodes(source.clips(), source.name, config.plan, limit=config.limit)


def build(windows: ray.data.Dataset, config: RunConfig, resources: Resources) -> ray.data.Dataset:
    # Frames exist only between the frame read and track; TensorFlow reads the episode once per worker.
    windows = windows.map_batches(
        run_stage, fn_args=(RldsFramesStage(config.decode),), batch_size=16, num_cpus=1, **CPU_TASK_ARGS
    )
    windows = track_windows(windows, config.track, resources)  # GPU actors, or tasks fused with the read
    windows = windows.map_batches(
        run_stage, fn_args=(CameraStage(config.camera),), batch_size=16, num_cpus=1, **CPU_TASK_ARGS
    )
    windows = windows.map_batches(
        run_stage, fn_args=(MarksStage(config.marks, seed=config.seed),), batch_size=16, num_cpus=1, **CPU_TASK_ARGS
    )
    windows = windows.map_batches(
        run_stage, fn_args=(RenderStage(config.render),), batch_size=16, num_cpus=1, **CPU_TASK_ARGS
    )
    return windows.map_batches(
        run_stage, fn_args=(ActionTokensStage(config.action),), batch_size=64, num_cpus=1, **CPU_TASK_ARGS
    )
