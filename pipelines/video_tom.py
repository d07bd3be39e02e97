"""video_tom: videos -> 16-frame windows -> point traces -> marks -> SoM image, ToM targets, Magma text.

Read ``stage_specs`` top to bottom: each line is one stage with its batch size and where it runs,
so the cost of each step is visible here. Planning runs on the driver (it only reads metadata and
video headers); the sink, also on the driver, commits shards as their windows come back.

Windows of Magma's released traces (a ``TracesSource``: ``--input magma_video_tom``, tracker
``released``) come with their tracks: one stage reads them and decodes only the first frame, in
place of decode and track; camera, marks and render are the same.
"""

from __future__ import annotations

from magma_data.config import RunConfig
from magma_data.pipelines.base import PlanContext, Pipeline, StageSpec, register_pipeline
from magma_data.sources.base import Source, TracesSource
from magma_data.stages.camera import CameraStage
from magma_data.stages.decode import DecodeStage
from magma_data.stages.marks import MarksStage
from magma_data.stages.plan import PLAN_COLUMNS, plan_source
from magma_data.stages.released_traces import ReleasedTracesStage, plan_released
from magma_data.stages.render import RenderStage
from magma_data.stages.track import TrackStage, tracks_from_source


@register_pipeline
class VideoTom(Pipeline):
    name = "video_tom"
    plan_columns = PLAN_COLUMNS

    def plan(self, source: Source, config: RunConfig, context: PlanContext | None = None) -> list[dict]:
        """The windows of every clip (or released record). Planning keeps nothing in the output folder."""
        context = context or PlanContext()
        released = isinstance(source, TracesSource)
        if released != tracks_from_source(config.track):
            raise ValueError("the released traces are the tracks of --input magma_video_tom, and only of it: leave "
                             "--tracker out" if released else
                             f"--tracker {config.track.tracker} reads Magma's released traces: use --input magma_video_tom")
        plan = plan_released if released else plan_source
        return plan(context.units(source), source.name, config.plan, limit=config.limit, probes=context.probes)

    def stage_specs(self, config: RunConfig, source: Source | None = None) -> list[StageSpec]:
        # Every step carries bounded Ray retries (execution.map_stage): a file that crashes its decoder
        # every time ends as error rows instead of looping forever.
        if tracks_from_source(config.track):  # reads the traces, decodes one frame a window
            frames_and_tracks = [StageSpec(ReleasedTracesStage(config.decode, config.released,
                                                               config.track.grid_size**2, config.video_roots()), batch_size=16)]
        else:
            track = TrackStage(config.track)
            frames_and_tracks = [
                # Decoded frames (~20 MB a window at 512x768) exist only between decode and track: small batches.
                StageSpec(DecodeStage(config.decode, config.video_roots()), batch_size=2),
                # GPU actors (CoTracker3), or tasks fused with the frame reader (Lucas-Kanade): the tracker's say
                StageSpec(track, batch_size=track.batch_size, placement=track.placement),
            ]
        return [
            *frames_and_tracks,
            StageSpec(CameraStage(config.camera), batch_size=16),
            StageSpec(MarksStage(config.marks, seed=config.seed), batch_size=16, redraw=True),
            StageSpec(RenderStage(config.render), batch_size=16, redraw=True),
        ]
