"""The column contract: each stage declares its columns once, and the schema, placeholders and docs follow.

A stage that returns a column it does not declare, or omits one it does, fails here; a row that
reaches the sink with an undeclared column is refused instead of losing the column; the README's
tables are the declarations' own. Also the layering the contract relies on: stages import no Ray.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import Features, List, Value
from stage_contract import assert_stage_contract

from magma_data.config import RunConfig
from magma_data.parquet_writer import ParquetShardWriter
from magma_data.pipelines import load_pipeline, shard_columns, shard_features
from magma_data.schema import SchemaMismatch, column_table, to_arrow_table, written_columns
from magma_data.sink import ShardContent, SinkConfig
from magma_data.sources import load_manifest, open_source
from magma_data.stages.base import Column

REPO = Path(__file__).resolve().parents[1]
SMALL = {"plan": {"window_len": 8, "max_windows_per_clip": 1}, "decode": {"height": 96},
         "track": {"tracker": "lk", "grid_size": 4}}


@pytest.fixture(scope="module")
def finished_window():
    """One sample window through every video_tom stage in this process, each stage's output kept."""
    config = RunConfig().with_overrides(SMALL)
    pipeline = load_pipeline("video_tom")
    [row] = pipeline.plan(open_source(load_manifest("sample"), None), RunConfig(limit=1).with_overrides(SMALL))
    outputs = []
    for stage in pipeline.stages(config):
        output = stage(row)
        outputs.append((stage, output))
        row.update(output)
        for column in stage.consumes:
            row.pop(column)
    return config, row, outputs


def test_every_video_tom_stage_returns_exactly_its_declared_columns(finished_window):
    _, _, outputs = finished_window
    assert [stage.name for stage, _ in outputs] == ["decode", "track", "camera", "marks", "render"]
    for stage, output in outputs:
        assert_stage_contract(stage, output)


def test_the_action_stage_returns_exactly_its_declared_columns():
    from magma_data.sources.openvla import DatasetStatistics
    from magma_data.sources.oxe import RobotEpisode
    from magma_data.stages.action_tokens import ActionTokensStage
    from magma_data.stages.plan import PlanConfig
    from magma_data.stages.robot_plan import plan_episodes

    actions = np.linspace(-1, 1, 28, dtype=np.float32).reshape(4, 7)
    episode = RobotEpisode(episode_id="toy/train/000000", dataset="toy", dataset_path="/data/toy/0.1.0", split="train",
                           episode_index=0, instruction="pick up the cup", image_key="image", num_steps=4,
                           actions=actions, steps=np.arange(4))
    [row, *_] = plan_episodes([episode], "oxe", PlanConfig(window_stride=1),
                              {"toy": DatasetStatistics.of([actions], "test")})
    stage = ActionTokensStage()
    assert_stage_contract(stage, stage({**row, "conversations": []}))


def test_a_stage_that_returns_an_undeclared_column_or_omits_one_fails_the_contract(finished_window):
    _, _, outputs = finished_window
    stage, output = outputs[2]  # camera
    with pytest.raises(AssertionError, match="undeclared \\['extra'\\]"):
        assert_stage_contract(stage, {**output, "extra": 1})
    with pytest.raises(AssertionError, match="omits declared \\['camera_status'\\]"):
        assert_stage_contract(stage, {k: v for k, v in output.items() if k != "camera_status"})


def test_a_finished_row_holds_exactly_the_shard_schemas_columns(finished_window):
    config, row, _ = finished_window
    columns = shard_columns(load_pipeline("video_tom"), config)
    kept = {key for key in row if key not in {c.name for c in columns if not c.written}}
    assert kept | {"config_hash"} == set(shard_features(load_pipeline("video_tom"), config))


def test_placeholders_derive_from_the_declaration():
    assert Column("tracks", "float32", ("T", "N", 2)).placeholder().shape == (0, 0, 2)
    assert Column("action", "float32", (7,)).placeholder().shape == (7,)
    assert isinstance(Column("tom_steps", "int32").placeholder(), np.int32)
    assert Column("tom_targets", "int32", ("M", "L", 2), ragged=True).placeholder() == []
    assert (Column("image", "image").placeholder(), Column("task", "string").placeholder()) == (b"", "")


def test_the_arrow_conversion_refuses_undeclared_and_missing_columns():
    features = Features({"sample_id": Value("string"), "xy": List(Value("float32"), length=2)})
    assert to_arrow_table([{"sample_id": "a", "xy": np.zeros(2, np.float32)}], features).num_rows == 1
    with pytest.raises(SchemaMismatch, match="does not declare \\['extra'\\]"):
        to_arrow_table([{"sample_id": "a", "xy": np.zeros(2, np.float32), "extra": 1}], features)
    with pytest.raises(SchemaMismatch, match="lacks \\['xy'\\]"):
        to_arrow_table([{"sample_id": "a"}], features)


def test_a_row_with_an_undeclared_column_becomes_a_sink_error_not_a_silent_loss(tmp_path):
    features = Features({"sample_id": Value("string"), "config_hash": Value("string")})
    writer = ParquetShardWriter(tmp_path, "src", features, SinkConfig())
    shard = writer.write(ShardContent(0, 1, [
        ("src/a", {"sample_id": "a", "config_hash": "c"}, None),
        ("src/b", {"sample_id": "b", "config_hash": "c", "stray": 1.0}, None),
    ], "c"))
    assert shard.rows == 1 and shard.error_classes == {"SchemaMismatch": 1}
    [error] = pq.read_table(dict(shard.files)[tmp_path / "errors" / "src-00000-of-00001.parquet"]).to_pylist()
    assert (error["unit_id"], error["stage"]) == ("src/b", "sink") and "stray" in error["message"]


def test_a_column_declared_twice_is_refused():
    with pytest.raises(ValueError, match="declared twice"):
        written_columns([Column("tracks", "float32", group="traces"), Column("tracks", "float32", group="traces")])


def test_the_readme_tables_are_the_declarations():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    tables = re.findall(r"<!-- columns: [^>]*-->\n(.*?)\n<!-- /columns -->", readme, re.S)
    video = shard_columns(load_pipeline("video_tom"), RunConfig())
    curated = RunConfig().with_overrides({"alignment": {"checkpoint": "/clip"},
                                          "quality": {"drop_camera_fallback": True}})
    curation = [c for c in shard_columns(load_pipeline("video_tom"), curated) if c not in video]
    robot = [c for c in shard_columns(load_pipeline("oxe_tom"), RunConfig(pipeline="oxe_tom")) if c.group == "robot"]
    assert tables == [column_table(video), column_table(robot), column_table(curation)]


def test_stages_import_neither_ray_nor_the_ray_adapters():
    for path in sorted((REPO / "stages").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not [n for n in names if n == "ray" or n.startswith(("ray.", "magma_data.execution"))], path
