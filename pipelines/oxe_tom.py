"""oxe_tom: robot episodes -> a window of 16 future steps per step -> traces -> marks -> SoM/ToM + action turn.

The robot twin of ``video_tom``: the same tracker, camera, marks and render stages with Magma's
robot settings from the manifest (moving threshold 1 px, 2-4 moving and 4-9 static clusters,
homography only when the global-motion rule fires, the robot ToM template), fed by the episode's
frames instead of decoded video, and followed by the action turn: the step's 7-D action as 7
tokens. Any ``RobotSource`` feeds it (Open-X RLDS: ``--input oxe``). Rows have video_tom's columns
(``video_uid``/``clip_id`` = the episode, ``video_path`` = its dataset folder) and the robot's.
Read ``stage_specs`` top to bottom; planning reads the episodes (instructions, actions) on the
driver, and each dataset's action statistics once, over all of its episodes, into
``dataset_statistics.json`` in the output folder, where a resumed run finds them.
"""

from __future__ import annotations

from pathlib import Path

from magma_data.config import RunConfig
from magma_data.pipelines.base import PlanContext, Pipeline, StageSpec, register_pipeline
from magma_data.sources.base import Source
from magma_data.sources.openvla import STATISTICS_FILE, StatisticsFile
from magma_data.sources.robot import RobotSource
from magma_data.stages.action_tokens import ActionTokensStage
from magma_data.stages.camera import CameraStage
from magma_data.stages.marks import MarksStage
from magma_data.stages.quality import QualityStage, quality_note
from magma_data.stages.render import RenderStage
from magma_data.stages.robot_frames import RobotFramesStage
from magma_data.stages.robot_plan import ROBOT_PLAN_COLUMNS, plan_episodes
from magma_data.stages.track import TrackStage


@register_pipeline
class OxeTom(Pipeline):
    name = "oxe_tom"
    plan_columns = ROBOT_PLAN_COLUMNS
    refused_exports = {"magma-video-tom": "Magma-Video-ToM holds video windows only (Magma-OXE-ToM's record layout "
                                          "is not established): use --format llava"}

    def check(self, source: Source, config: RunConfig) -> list[str]:
        if not isinstance(source, RobotSource):
            raise ValueError(f"source {source.name!r} holds no robot episodes; oxe_tom reads a robot source "
                             "(--input oxe)")
        if config.shots.enabled or config.alignment.enabled:
            raise ValueError("an episode has no camera cuts and Magma filtered no robot window by CLIP: shots and "
                             "text alignment are video_tom's; leave shots.enabled and alignment.checkpoint "
                             "(--clip-checkpoint) out (the quality rules do apply)")
        if config.marks.frame_pos != "first":
            raise ValueError("a robot window's marks sit on its own step's frame, the one its action turn shows "
                             "(Magma's robot loader draws no frame_pos): set marks.frame_pos: first in the source "
                             "manifest's defaults (as manifests/oxe.yaml does), or --set marks.frame_pos=first")
        return [quality_note(config.quality)] if config.quality.enabled else []

    def plan(self, source: Source, config: RunConfig, context: PlanContext | None = None) -> list[dict]:
        """The windows of every episode; statistics kept in the output folder (none: computed, not kept)."""
        context = context or PlanContext()
        self.check(source, config)
        path = Path(context.output) / STATISTICS_FILE if context.output is not None else None
        statistics = StatisticsFile(path, source.dataset_statistics, source.fingerprint, config.action.normalize)
        return plan_episodes(context.units(source), source.name, config.plan, statistics, limit=config.limit)

    def stage_specs(self, config: RunConfig, source: Source | None = None) -> list[StageSpec]:
        track = TrackStage(config.track)  # marks on the step's own frame (frame_pos 0: check refuses another)
        quality = [QualityStage(config.quality, config.marks)] if config.quality.enabled else []
        return [
            # Frames exist only between the frame read and track; a reader reads an episode once per worker.
            StageSpec(RobotFramesStage(config.decode, source), batch_size=16),
            # GPU actors (CoTracker3), or tasks fused with the frame reader (Lucas-Kanade): the tracker's say
            StageSpec(track, batch_size=track.batch_size, placement=track.placement),
            StageSpec(CameraStage(config.camera), batch_size=16),
            *(StageSpec(stage, batch_size=16) for stage in quality),  # the quality rules, when any is on
            StageSpec(MarksStage(config.marks, seed=config.seed), batch_size=16, redraw=True),
            StageSpec(RenderStage(config.render), batch_size=16, redraw=True),
            StageSpec(ActionTokensStage(config.action), batch_size=64, redraw=True),
        ]
