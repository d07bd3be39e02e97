"""video_tom: videos -> 16-frame windows -> point traces -> marks -> SoM image, ToM targets, Magma text.

Read ``build`` top to bottom: each line is one stage with its batch size and resources, so the
cost of each step is visible here. Planning runs on the driver (it only reads metadata and video
headers); the sink, also on the driver, commits shards as their windows come back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magma_data.config import RunConfig
from magma_data.execution import Placement, cpu_stage
from magma_data.pipelines import track_step
from magma_data.sources.base import Source
from magma_data.stages.base import Stage
from magma_data.stages.camera import CameraStage
from magma_data.stages.decode import DecodeStage
from magma_data.stages.marks import MarksStage
from magma_data.stages.plan import PLAN_COLUMNS, VideoProbes, plan_source  # noqa: F401  (this pipeline's)
from magma_data.stages.render import RenderStage
from magma_data.stages.track import TrackStage

if TYPE_CHECKING:
    import ray

NAME = "video_tom"


def plan(source: Source, config: RunConfig, output: Path | None = None, probes: VideoProbes | None = None) -> list[dict]:
    """The windows of every clip; ``probes`` shares the container reads with a caller (``magma-data check``).
    Planning keeps nothing in ``output``."""
    return plan_source(source.clips(), source.name, config.plan, limit=config.limit, probes=probes)


def stages(config: RunConfig) -> list[Stage]:
    return [DecodeStage(config.decode), TrackStage(config.track), CameraStage(config.camera),
            MarksStage(config.marks, seed=config.seed), RenderStage(config.render)]


def build(windows: ray.data.Dataset, config: RunConfig, placement: Placement) -> ray.data.Dataset:
    decode, track, camera, marks, render = stages(config)
    # Every CPU step carries bounded Ray retries (execution.CPU_TASK_ARGS): a file that crashes its
    # decoder every time ends as error rows instead of looping forever.
    # Decoded frames (~20 MB a window at 512x768) exist only between decode and track: small batches.
    windows = cpu_stage(windows, decode, batch_size=2)
    windows = track_step(windows, track, placement)  # GPU actors, or tasks fused with the frame reader
    windows = cpu_stage(windows, camera, batch_size=16)
    windows = cpu_stage(windows, marks, batch_size=16)
    return cpu_stage(windows, render, batch_size=16)
