"""video_tom: videos -> 16-frame windows -> point traces -> marks -> SoM image, ToM targets, Magma text.

Read ``stage_specs`` top to bottom: each line is one stage with its batch size and where it runs,
so the cost of each step is visible here. Planning runs on the driver (it reads metadata and
video headers, and with shots on finds each clip's cuts in Ray tasks that decode it); the sink,
also on the driver, commits shards as their windows come back.

Curation, each part off unless the source's manifest or the user turns it on (README.md
§Curation): shots (windows planned inside shots: ``stages.shots``, cuts cached under
``.magma/<source>/shots/`` so a resumed run does not decode again), text alignment (CLIP between
decode and track, so the windows it drops are never tracked: ``stages.text_alignment``) and the
quality rules (after camera, before marks: ``stages.quality``). A stage that is off is left out,
so rows keep their columns and bytes.

Windows of Magma's released traces (a ``TracesSource``: ``--input magma_video_tom``, tracker
``released``) come with their tracks: one stage reads them and decodes only the marked frame, in
place of decode and track; camera, marks and render are the same.
"""

from __future__ import annotations

from magma_data.config import RunConfig
from magma_data.pipelines.base import PlanContext, Pipeline, StageSpec, register_pipeline
from magma_data.sources.base import Source, TracesSource
from magma_data.stages.camera import CameraStage
from magma_data.stages.decode import DecodeStage
from magma_data.stages.marked_frame import MarkedFrame
from magma_data.stages.marks import MarksStage
from magma_data.stages.plan import PLAN_COLUMNS, plan_source
from magma_data.stages.quality import QualityStage, quality_note
from magma_data.stages.released_traces import ReleasedTracesStage, plan_released
from magma_data.stages.render import RenderStage
from magma_data.stages.shots import ShotCache, ShotDetector, shots_note
from magma_data.stages.text_alignment import TextAlignmentStage, alignment_note
from magma_data.stages.track import TrackStage, tracks_from_source


#: The share of each GPU a CLIP actor holds when alignment is on; the tracker's actor on the same
#: GPU holds the rest. CLIP scores 4 frames a window in one forward, CoTracker3 tracks all 16
#: frames in several iterations: the tracker is the one to give the most of the GPU to.
ALIGNMENT_GPU_SHARE = 0.25


@register_pipeline
class VideoTom(Pipeline):
    name = "video_tom"
    plan_columns = PLAN_COLUMNS

    def check(self, source: Source, config: RunConfig) -> list[str]:
        released = isinstance(source, TracesSource)
        if released != tracks_from_source(config.track):
            raise ValueError("the released traces are the tracks of --input magma_video_tom, and only of it: leave "
                             "--tracker out" if released else
                             f"--tracker {config.track.tracker} reads Magma's released traces: use --input magma_video_tom")
        if released and (config.shots.enabled or config.alignment.enabled):
            raise ValueError("Magma's released traces come as windows with their tracks, already cut and filtered: "
                             "shots and text alignment do not apply to them; leave shots.enabled and "
                             "alignment.checkpoint (--clip-checkpoint) out (the quality rules do apply)")
        notes = [] if released else [alignment_note(config.alignment)]
        if config.shots.enabled:
            notes.append(shots_note(config.shots))
        if config.quality.enabled:
            notes.append(quality_note(config.quality))
        return notes

    def plan(self, source: Source, config: RunConfig, context: PlanContext | None = None) -> list[dict]:
        """The windows of every clip (or released record), inside shots when shots are on."""
        context = context or PlanContext()
        self.check(source, config)
        if isinstance(source, TracesSource):
            return plan_released(context.units(source), source.name, config.plan, limit=config.limit,
                                 probes=context.probes)
        shots, threads = None, {}
        if config.shots.enabled:  # every frame of every clip is decoded once: in Ray tasks during a run
            remote, folder = context.remote_calls(), context.state(source, "shots")
            shots = ShotDetector(config.shots, config.decode, ShotCache(folder) if folder else None, remote)
            threads = {"threads": max(remote.slots, 8)} if remote else {}  # keep every CPU of the cluster busy
        return plan_source(context.units(source), source.name, config.plan, limit=config.limit, probes=context.probes,
                           shots=shots, **threads)

    def stage_specs(self, config: RunConfig, source: Source | None = None) -> list[StageSpec]:
        # Every step carries bounded Ray retries (execution.map_stage): a file that crashes its decoder
        # every time ends as error rows instead of looping forever.
        marked_frame = MarkedFrame(config.marks.frame_pos, config.marks.step_rightmost_ratio, config.seed)
        if tracks_from_source(config.track):  # reads the traces, decodes one frame a window
            released = ReleasedTracesStage(config.decode, config.released, config.track.grid_size**2,
                                           config.video_roots(), marked_frame)
            frames_and_tracks = [StageSpec(released, batch_size=16)]
        else:
            track = TrackStage(config.track, marked_frame=marked_frame)  # draws frame_pos, keeps that frame
            align = [TextAlignmentStage(config.alignment)] if config.alignment.enabled else []
            frames_and_tracks = [
                # Decoded frames (~20 MB a window at 512x768) exist only between decode and track: small batches.
                StageSpec(DecodeStage(config.decode, config.video_roots()), batch_size=2),
                # CLIP on 4 frames a window, when a checkpoint is given: actors (one per GPU, beside the tracker's,
                # or one on CPU) load it once; every forward holds the same number of windows. What it drops is
                # never tracked.
                *(StageSpec(stage, batch_size=stage.windows_per_forward, placement="actors",
                            gpu_share=ALIGNMENT_GPU_SHARE) for stage in align),
                # GPU actors (CoTracker3), or tasks fused with the frame reader (Lucas-Kanade): the tracker's say
                StageSpec(track, batch_size=track.batch_size, placement=track.placement,
                          gpu_share=1.0 - ALIGNMENT_GPU_SHARE if align else 1.0),
            ]
        quality = [QualityStage(config.quality, config.marks)] if config.quality.enabled else []
        return [
            *frames_and_tracks,
            StageSpec(CameraStage(config.camera), batch_size=16),
            *(StageSpec(stage, batch_size=16) for stage in quality),  # the quality rules, when any is on
            StageSpec(MarksStage(config.marks, seed=config.seed), batch_size=16, redraw=True),
            StageSpec(RenderStage(config.render), batch_size=16, redraw=True),
        ]
