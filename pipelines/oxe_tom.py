"""oxe_tom: Open-X episodes -> a window of 16 future steps per step -> traces -> marks -> SoM/ToM + action turn.

The robot twin of ``video_tom``: the same tracker, camera, marks and render stages with Magma's
robot settings from the manifest (moving threshold 1 px, 2-4 moving and 4-9 static clusters,
homography only when the global-motion rule fires, the robot ToM template), fed by RLDS frames
instead of decoded video, and followed by the action turn: the step's 7-D action as 7 tokens.
Rows have video_tom's columns (``video_uid``/``clip_id`` = the episode, ``video_path`` = its RLDS
folder) and the robot's. Read ``build`` top to bottom; planning reads the episodes (instructions,
actions) on the driver, and each dataset's action statistics once, over all of its episodes,
into ``dataset_statistics.json`` in the output folder, where a resumed run finds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magma_data.config import RunConfig
from magma_data.execution import Placement, cpu_stage
from magma_data.pipelines import track_step
from magma_data.sources.base import Source
from magma_data.sources.openvla import STATISTICS_FILE, StatisticsFile
from magma_data.stages.action_tokens import ActionTokensStage
from magma_data.stages.base import Stage
from magma_data.stages.camera import CameraStage
from magma_data.stages.marks import MarksStage
from magma_data.stages.render import RenderStage
from magma_data.stages.rlds_frames import RldsFramesStage
from magma_data.stages.robot_plan import ROBOT_PLAN_COLUMNS, plan_episodes
from magma_data.stages.track import TrackStage

if TYPE_CHECKING:
    import ray

NAME = "oxe_tom"
PLAN_COLUMNS = ROBOT_PLAN_COLUMNS


def plan(source: Source, config: RunConfig, output: Path | None = None) -> list[dict]:
    """The windows of every episode; statistics kept in ``output`` (None: computed, not kept)."""
    path = Path(output) / STATISTICS_FILE if output is not None else None
    statistics = StatisticsFile(path, source.dataset_statistics, source.fingerprint, config.action.normalize)
    return plan_episodes(source.clips(), source.name, config.plan, statistics, limit=config.limit)


def stages(config: RunConfig) -> list[Stage]:
    return [RldsFramesStage(config.decode, config.video_roots()), TrackStage(config.track), CameraStage(config.camera),
            MarksStage(config.marks, seed=config.seed), RenderStage(config.render), ActionTokensStage(config.action)]


def build(windows: ray.data.Dataset, config: RunConfig, placement: Placement) -> ray.data.Dataset:
    frames, track, camera, marks, render, action_tokens = stages(config)
    # Frames exist only between the frame read and track; TensorFlow reads the episode once per worker.
    windows = cpu_stage(windows, frames, batch_size=16)
    windows = track_step(windows, track, placement)  # GPU actors, or tasks fused with the frame reader
    windows = cpu_stage(windows, camera, batch_size=16)
    windows = cpu_stage(windows, marks, batch_size=16)
    windows = cpu_stage(windows, render, batch_size=16)
    return cpu_stage(windows, action_tokens, batch_size=64)
