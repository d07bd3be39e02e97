"""Adding a tracker, an export format or a pipeline is one class and one registry line, nothing else.

Each toy below is defined here, in the test, and registered with the registry's own decorator
(the one line); then the real run (local Ray), ``magma-data export`` and the dataset card take
it as they take the built-in ones: no pipeline, executor, runner or CLI code names it. The toy
tracker runs in an actor (the placement CoTracker3 has), so the actor path runs here without a
checkpoint; the toy pipeline has a filter stage, whose dropped windows end in the filtered table
with the stage and the rule.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from magma_data.config import RunConfig
from magma_data.export import EXPORT_FORMATS, ExportFormat, export, register_export
from magma_data.outputs import SourceOutput
from magma_data.pipelines.base import PIPELINES, PlanContext, Pipeline, StageSpec, register_pipeline
from magma_data.runner import RunOptions, run
from magma_data.sink import ShardContent, WrittenShard
from magma_data.sources.base import Source
from magma_data.stages.base import Column, Filtered, Row, Stage
from magma_data.stages.camera import CameraStage
from magma_data.stages.decode import DecodeStage
from magma_data.stages.marks import MarksStage
from magma_data.stages.plan import PLAN_COLUMNS, plan_source
from magma_data.stages.render import RenderStage
from magma_data.stages.track import TRACKERS, TrackConfig, Tracker, TrackStage, grid_points, register_tracker

SMALL = {"plan": {"window_len": 8, "window_stride": 8, "max_windows_per_clip": 2}, "decode": {"height": 64},
         "track": {"grid_size": 4}, "sink": {"rows_per_shard": 4}}


@pytest.fixture(autouse=True, scope="module")
def shipped_by_value():
    """Ray workers cannot import this test module: its classes travel with the stages that use them."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


# -- a tracker ------------------------------------------------------------------------------------

class StandingStill:
    """Every grid point stays where it starts, visible: the simplest ``PointTracker``."""

    name = "standing_still"

    def __init__(self, grid_size: int):
        self.grid_size = grid_size

    def batch_size(self, frames: int, height: int, width: int) -> int:
        return 4

    def track(self, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch, frames, _, height, width = video.shape
        grid = grid_points(self.grid_size, height, width)
        return np.broadcast_to(grid, (batch, frames, *grid.shape)).copy(), np.ones((batch, frames, len(grid)), bool)


class StandingStillTracker(Tracker):
    name = "standing_still"
    label = "points that never move (a test's)"
    citation = "@misc{standing_still, title = {A tracker defined in a test}}"
    placement = "actors"

    def point_tracker(self, config: TrackConfig, weights: Path | None) -> StandingStill:
        return StandingStill(config.grid_size)


@pytest.fixture(scope="module")
def toy_tracker():
    register_tracker(StandingStillTracker)  # the registry line
    yield StandingStillTracker.name
    TRACKERS.pop(StandingStillTracker.name)


@pytest.fixture(scope="module")
def tracked_by_the_toy(toy_tracker, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("toy-tracker") / "out"
    config = RunConfig(source="sample").with_overrides(SMALL).with_overrides({"track": {"tracker": toy_tracker}})
    summary = run(config, RunOptions(output=output, num_cpus=2, progress=False))
    assert summary.windows_planned == 8 and summary.tracker == toy_tracker
    return output


def test_a_tracker_defined_in_a_test_runs_in_an_actor_of_a_real_run(tracked_by_the_toy):
    rows = pq.read_table(sorted((tracked_by_the_toy / "data" / "sample").glob("train-*.parquet"))).to_pylist()
    errors = list((tracked_by_the_toy / "errors").glob("*.parquet"))
    assert len(rows) + sum(pq.read_metadata(path).num_rows for path in errors) == 8
    assert rows and {row["tracker"] for row in rows} == {"standing_still"}
    tracks = np.asarray(rows[0]["tracks"])
    assert tracks.shape == (8, 16, 2) and (tracks == tracks[:1]).all()  # nothing moved
    card = (tracked_by_the_toy / "README.md").read_text()
    assert StandingStillTracker.citation in card  # the card cites it from its registry entry


def test_the_config_takes_a_registered_trackers_name_and_only_then(toy_tracker):
    assert RunConfig().with_overrides({"track": {"tracker": toy_tracker}}).track.tracker == toy_tracker
    TRACKERS.pop(toy_tracker)
    try:
        with pytest.raises(ValueError,
                           match="track.tracker takes one of auto, lk, cotracker3, tapnextpp, released, not"):
            RunConfig().with_overrides({"track": {"tracker": toy_tracker}})
    finally:
        register_tracker(StandingStillTracker)


def test_the_track_stage_runs_where_its_tracker_says(toy_tracker):
    assert (TrackStage(TrackConfig(tracker="lk")).placement, TrackStage(TrackConfig(tracker="cotracker3")).placement,
            TrackStage(TrackConfig(tracker=toy_tracker)).placement) == ("tasks", "actors", "actors")
    assert TrackStage(TrackConfig(tracker=toy_tracker)).batch_size == 64  # an actor fills its own batches
    assert TrackStage(TrackConfig(tracker="lk", batch_size=3)).batch_size == 3


# -- an export format ------------------------------------------------------------------------------

class TasksWriter:
    """One JSON file per shard: each row's sample id and task."""

    def __init__(self, root: Path, source: str):
        self.folder = Path(root) / source

    def files(self):
        yield from self.folder.glob("*.json")

    def write(self, shard: ShardContent) -> WrittenShard:
        path = self.folder / f"{shard.index:05d}.json"
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps([[row["sample_id"], row["task"]] for _, row, _ in shard.units]))
        return WrittenShard(shard.index, shard.total, ((path, partial),), rows=len(shard.units))

    def finish(self) -> None:
        pass


class TasksExport(ExportFormat):
    name = "tasks-json"
    help = "each row's sample id and task (a test's)"

    def writer(self, destination: Path, source: SourceOutput) -> TasksWriter:
        return TasksWriter(destination, source.source)


@pytest.fixture
def toy_export():
    register_export(TasksExport)  # the registry line
    yield TasksExport.name
    EXPORT_FORMATS.pop(TasksExport.name)


def test_an_export_format_defined_in_a_test_exports_a_real_run(tracked_by_the_toy, toy_export, tmp_path):
    [summary] = export(tracked_by_the_toy, toy_export, tmp_path / "export")
    records = [record for path in sorted((tmp_path / "export" / "sample").glob("*.json"))
               for record in json.loads(path.read_text())]
    assert len(records) == summary.rows > 0 and all(task for _, task in records)
    from click.testing import CliRunner

    from magma_data.cli import export as export_command

    again = CliRunner().invoke(export_command, [str(tracked_by_the_toy), "--format", toy_export,
                                                "--output", str(tmp_path / "cli")])
    assert again.exit_code == 0, again.output  # the CLI offers the formats registered when it parses a value


# -- a pipeline ------------------------------------------------------------------------------------

class FirstWindowOnly(Stage):
    """A filter: a clip's later windows are dropped on purpose, naming the rule and the value."""

    name = "first_window_only"
    columns = (Column("window_number", "int32", doc="the window's position in its clip", group="identity"),)

    def __call__(self, row: Row) -> Row | Filtered:
        number = int(row["frame_index"]) // int(row["window_len"])
        if number > 0:
            return Filtered("later_window", f"window {number} of its clip; this recipe keeps window 0")
        return {"window_number": np.int32(number)}


class FirstWindows(Pipeline):
    """video_tom's stages with a filter after decode: one list, top to bottom."""

    name = "first_windows"
    plan_columns = PLAN_COLUMNS
    refused_exports = {"magma-video-tom": "a test's rows"}

    def plan(self, source: Source, config: RunConfig, context: PlanContext | None = None) -> list[dict]:
        context = context or PlanContext()
        return plan_source(context.units(source), source.name, config.plan, limit=config.limit, probes=context.probes)

    def stage_specs(self, config: RunConfig, source: Source | None = None) -> list[StageSpec]:
        track = TrackStage(config.track)
        return [
            StageSpec(DecodeStage(config.decode, config.video_roots()), batch_size=2),
            StageSpec(FirstWindowOnly(), batch_size=8),
            StageSpec(track, batch_size=track.batch_size, placement=track.placement),
            StageSpec(CameraStage(config.camera), batch_size=8),
            StageSpec(MarksStage(config.marks, seed=config.seed), batch_size=8, redraw=True),
            StageSpec(RenderStage(config.render), batch_size=8, redraw=True),
        ]


@pytest.fixture(scope="module")
def toy_pipeline():
    register_pipeline(FirstWindows)  # the registry line
    yield FirstWindows.name
    PIPELINES.pop(FirstWindows.name)


def test_a_pipeline_defined_in_a_test_runs_and_its_filter_fills_the_filtered_table(toy_pipeline, tmp_path):
    config = RunConfig(pipeline=toy_pipeline, source="sample").with_overrides(SMALL).with_overrides(
        {"track": {"tracker": "lk"}})
    output = tmp_path / "out"
    summary = run(config, RunOptions(output=output, num_cpus=2, progress=False))
    rows = pq.read_table(sorted((output / "data" / "sample").glob("train-*.parquet"))).to_pylist()
    filtered = pq.read_table(sorted((output / "filtered").glob("sample-*.parquet"))).to_pylist()
    assert summary.windows_planned == 8 and len(rows) == 4 and len(filtered) == 4
    assert {row["window_number"] for row in rows} == {0} and {row["frame_index"] for row in rows} == {0}
    assert {f["rule"] for f in filtered} == {"later_window"} and all(f["frame_index"] > 0 for f in filtered)
    assert all(f["message"].endswith("of its clip; this recipe keeps window 0") for f in filtered)
    assert summary.filter_rules == {"later_window": 4} and summary.filtered_rows == 4
    from magma_data.export import ExportRefused

    with pytest.raises(ExportRefused, match="sample holds first_windows rows; a test's rows"):
        export(output, "magma-video-tom", tmp_path / "export")
    assert [stage.name for stage in PIPELINES[toy_pipeline].redraw_stages(config, seed=3)] == ["marks", "render"]


def test_a_name_taken_by_another_class_is_refused_and_the_same_class_registers_once():
    for registry in (PIPELINES, TRACKERS, EXPORT_FORMATS):
        name, known = next(iter(registry.items()))
        impostor = type("Impostor", (), {"name": name})
        with pytest.raises(ValueError, match=f"{registry.kind} '{name}' is registered twice"):
            registry.register(impostor)
        assert registry[name] is known
        registry.register(type(known))  # a module imported again: nothing changes
        assert registry[name] is known
