"""video_tom: videos -> 16-frame windows -> point traces -> marks -> SoM image, ToM targets, Magma text.

Read ``build`` top to bottom: each line is one stage with its batch size and resources, so the
cost of each step is visible here. Planning runs on the driver (it only reads metadata and video
headers); the sink, also on the driver, commits shards as their windows come back.

Windows of Magma's released traces (``--input magma_video_tom``, tracker ``released``) come with
their tracks: one stage reads them and decodes only the first frame, in place of decode and
track; camera, marks and render are the same.
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
from magma_data.stages.released_traces import ReleasedTracesStage, plan_released
from magma_data.stages.render import RenderStage
from magma_data.stages.track import TrackStage, tracks_from_source

if TYPE_CHECKING:
    import ray

NAME = "video_tom"


def plan(source: Source, config: RunConfig, output: Path | None = None, probes: VideoProbes | None = None) -> list[dict]:
    """The windows of every clip; ``probes`` shares the container reads with a caller (``magma-data check``).
    Planning keeps nothing in ``output``."""
    released = getattr(source, "supplies_traces", False)
    if released != tracks_from_source(config.track):
        raise ValueError("the released traces are the tracks of --input magma_video_tom, and only of it: leave "
                         "--tracker out" if released else
                         f"--tracker {config.track.tracker} reads Magma's released traces: use --input magma_video_tom")
    if released:
        return plan_released(source.clips(), source.name, config.plan, limit=config.limit, probes=probes)
    return plan_source(source.clips(), source.name, config.plan, limit=config.limit, probes=probes)


def stages(config: RunConfig) -> list[Stage]:
    if tracks_from_source(config.track):
        frames_and_tracks = [ReleasedTracesStage(config.decode, config.released, config.track.grid_size**2,
                                                 config.video_roots())]
    else:
        frames_and_tracks = [DecodeStage(config.decode, config.video_roots()), TrackStage(config.track)]
    return [*frames_and_tracks, CameraStage(config.camera), MarksStage(config.marks, seed=config.seed),
            RenderStage(config.render)]


def build(windows: ray.data.Dataset, config: RunConfig, placement: Placement) -> ray.data.Dataset:
    *frames_and_tracks, camera, marks, render = stages(config)
    # Every CPU step carries bounded Ray retries (execution.CPU_TASK_ARGS): a file that crashes its
    # decoder every time ends as error rows instead of looping forever.
    if tracks_from_source(config.track):
        (released,) = frames_and_tracks
        windows = cpu_stage(windows, released, batch_size=16)  # reads the traces, decodes one frame a window
    else:
        decode, track = frames_and_tracks
        # Decoded frames (~20 MB a window at 512x768) exist only between decode and track: small batches.
        windows = cpu_stage(windows, decode, batch_size=2)
        windows = track_step(windows, track, placement)  # GPU actors, or tasks fused with the frame reader
    windows = cpu_stage(windows, camera, batch_size=16)
    windows = cpu_stage(windows, marks, batch_size=16)
    return cpu_stage(windows, render, batch_size=16)
