"""oxe_tom: robot windows (16 future steps, clamped), action tokens and the robot turns, end to end."""

from __future__ import annotations

import numpy as np
import pytest

from magma_data.sources.base import ClipProblem
from magma_data.sources.openvla import DatasetStatistics
from magma_data.sources.oxe import RobotEpisode
from magma_data.stages.action_tokens import ActionConfig, ActionTokensStage, action_token_ids
from magma_data.stages.plan import PlanConfig
from magma_data.stages.robot_plan import future_indices, plan_episodes


def _episode(dataset="toy", index=0, num_steps=20, instruction="pick up the cup", tom=True, first_step=0):
    actions = np.linspace(-1, 1, num_steps * 7, dtype=np.float32).reshape(num_steps, 7)
    return RobotEpisode(episode_id=f"{dataset}/train/{index:06d}", dataset=dataset, dataset_path=f"/data/{dataset}/0.1.0",
                        split="train", episode_index=index, instruction=instruction, image_key="image",
                        num_steps=num_steps, actions=actions, steps=np.arange(num_steps) + first_step, tom=tom)


def _statistics(*episodes):
    by_dataset = {}
    for episode in episodes:
        by_dataset.setdefault(episode.dataset, []).append(episode.actions)
    return {name: DatasetStatistics.of(actions, "test") for name, actions in by_dataset.items()}


def test_manifest_sets_magmas_robot_settings():
    from magma_data.config import RunConfig
    from magma_data.sources import load_manifest

    config = RunConfig(pipeline="oxe_tom", source="oxe").with_overrides(load_manifest("oxe").defaults)
    assert (config.marks.moving_threshold_px, config.marks.moving_clusters, config.marks.static_clusters) == \
        (1.0, (2, 4), (4, 9))
    assert config.camera.force is False and config.camera.global_motion_px == 1.0
    assert (config.render.style, config.render.speed_threshold, config.render.min_points_divisor) == ("robot", 1.0, None)
    assert (config.plan.window_stride, config.plan.window_len, config.decode.height) == (1, 16, 512)


def test_future_steps_are_clamped_at_the_episode_end():
    assert future_indices(0, 20, 16).tolist() == list(range(16))
    assert future_indices(10, 20, 16).tolist() == list(range(10, 20)) + [19] * 6
    assert future_indices(2, 3, 4).tolist() == [2, 2, 2, 2]


def test_every_step_starts_a_window_and_problems_stay_in_order():
    units = [_episode(num_steps=20), ClipProblem("oxe/toy/train/000001", "EpisodeWithoutInstruction", "no text"),
             _episode(index=2, num_steps=3)]
    rows = plan_episodes(units, "oxe", PlanConfig(window_len=16, window_stride=1), _statistics(units[0], units[2]))
    assert len(rows) == 20 + 1 + 3
    assert [r["frame_index"] for r in rows[:20]] == list(range(20))
    assert rows[20]["drop_stage"] == "plan" and rows[20]["drop_reason"] == "EpisodeWithoutInstruction"
    last = rows[-1]
    assert last["unit_id"] == "oxe/toy/train/000002/000002" and last["frame_indices"].tolist() == [2] * 16
    np.testing.assert_array_equal(rows[5]["action"], units[0].actions[5])
    assert len({r["unit_id"] for r in rows}) == len(rows)
    assert len({r["sample_id"] for r in rows if "sample_id" in r}) == len(rows)


def test_frames_are_the_rlds_steps_the_standardised_steps_came_from():
    episode = _episode(num_steps=5, first_step=1)  # Bridge drops the episode's first step
    rows = plan_episodes([episode], "oxe", PlanConfig(window_len=4, window_stride=1), _statistics(episode))
    assert [r["frame_index"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[3]["frame_indices"].tolist() == [4, 5, 5, 5] and rows[3]["unit_id"] == "oxe/toy/train/000000/000004"


def test_limit_stops_reading_episodes_early():
    def endless():
        index = 0
        while True:
            yield _episode(index=index)
            index += 1

    rows = plan_episodes(endless(), "oxe", PlanConfig(window_stride=1), _statistics(_episode()), limit=25)
    assert len(rows) == 25


def test_bounds_normalisation_and_tokens_follow_openvla():
    episode = _episode(num_steps=100)
    episode.actions[:, 5] = 0.25  # a dimension that never changes
    statistics = DatasetStatistics.of([episode.actions], "test")
    np.testing.assert_allclose(statistics.q01, np.quantile(episode.actions, 0.01, axis=0), rtol=1e-6)
    normalized = statistics.normalize(np.array([statistics.q01[0], statistics.q99[1], 99, 0, 0, 0.25, 0.5]))
    assert normalized[0] == pytest.approx(-1) and normalized[1] == pytest.approx(1) and normalized[2] == 1
    assert normalized[5] == 0  # min == max: OpenVLA maps the unused dimension to 0
    assert normalized[6] == pytest.approx(0.5)  # the gripper is not normalised
    ids = action_token_ids(np.array([-1.0, 1.0, 0.0, -0.5, 0.5, 0.999, -2.0]), ActionConfig())
    assert ids.tolist() == [127999, 127744, 127872, 127936, 127808, 127745, 127999]
    assert ids.min() >= 128000 - 256 and ids.max() < 128000


def _rendered_row(tom=True):
    episode = _episode(tom=tom)
    row = plan_episodes([episode], "oxe", PlanConfig(window_stride=1), _statistics(episode))[3]
    row["conversations"] = [{"from": "human", "value": "<image>\n\nThe image is split ..."},
                            {"from": "gpt", "value": "Mark 1 at [1,2] should be moved..."}]
    return row


def test_action_turn_comes_first_with_seven_placeholders():
    out = ActionTokensStage()(_rendered_row())
    turns = out["conversations"]
    assert turns[0] == {"from": "human", "value": "<image>\n\nWhat action should the robot take to pick up the cup?"}
    assert turns[1] == {"from": "gpt", "value": "<action>" * 7}
    assert len(turns) == 4 and turns[2]["value"].startswith("<image>\n\nThe image is split")
    assert out["action_token_ids"].shape == (7,) and out["action_token_ids"].dtype == np.int32


def test_datasets_without_tom_keep_only_the_action_turn():
    assert len(ActionTokensStage()(_rendered_row(tom=False))["conversations"]) == 2


pytest.importorskip("tensorflow_datasets", reason="the [oxe] extra (tensorflow-datasets) is not installed")
pytest.importorskip("tensorflow", reason="the [oxe] extra (TensorFlow, to read TFRecord) is not installed")

from rlds_fixtures import HEIGHT, TABLETOP, WIDTH, oxe_miniature  # noqa: E402


@pytest.fixture(scope="module")
def oxe_root(tmp_path_factory):
    return oxe_miniature(tmp_path_factory.mktemp("oxe"))


def test_robot_frames_reads_the_window_of_its_episode_from_rlds(oxe_root):
    from magma_data.sources.oxe import OpenXSource
    from magma_data.stages.decode import DecodeConfig
    from magma_data.stages.robot_frames import RobotFramesStage

    source = OpenXSource(oxe_root, "oxe", datasets=[TABLETOP])
    (episode,) = [u for u in source.clips() if isinstance(u, RobotEpisode) and u.num_steps == 20]
    rows = plan_episodes([episode], "oxe", PlanConfig(window_stride=1), _statistics(episode))
    stage = RobotFramesStage(DecodeConfig(height=32), source)
    late = stage(rows[10])
    assert late["frames"].shape == (16, 32, 32, 3) and (late["image_width"], late["image_height"]) == (32, 32)
    np.testing.assert_array_equal(late["frames"][-1], late["frames"][9])  # clamped: steps 19, 19, ...
    native = RobotFramesStage(DecodeConfig(height=HEIGHT), source)(rows[0])["frames"]
    assert native.shape == (16, HEIGHT, HEIGHT, 3) and WIDTH != HEIGHT  # stretched to a square


@pytest.mark.slow
def test_run_oxe_tom_end_to_end(oxe_root, tmp_path):
    """Local Ray, Lucas-Kanade: every step of every episode ends as a row or an error row."""
    import pyarrow.parquet as pq

    from magma_data.config import RunConfig
    from magma_data.runner import RunOptions, run
    from magma_data.sources import load_manifest

    config = RunConfig(pipeline="oxe_tom", source="oxe").with_overrides(load_manifest("oxe").defaults)
    config = config.with_overrides({"track": {"tracker": "lk", "grid_size": 8}, "decode": {"height": 64},
                                    "plan": {"window_stride": 1}, "sink": {"rows_per_shard": 64}})
    summary = run(config, RunOptions(output=tmp_path / "out", root=oxe_root / TABLETOP / "0.1.0",
                                     num_cpus=2, progress=False))
    rows = pq.read_table(sorted((tmp_path / "out" / "data" / "oxe").glob("train-*.parquet"))).to_pylist()
    assert summary.windows_planned == 20 + 3 + 2 and len(rows) == 23
    by_episode = {}
    for row in rows:
        by_episode.setdefault(row["clip_id"], []).append(row["frame_index"])
    assert sorted(sorted(v) for v in by_episode.values()) == [list(range(3)), list(range(20))]
    row = next(r for r in rows if r["frame_index"] == 12 and len(by_episode[r["clip_id"]]) == 20)
    assert row["frame_indices"] == list(range(12, 20)) + [19] * 8
    assert row["task"] == "pick up the café cup and put it in the 瓶"
    assert row["conversations"][0]["value"] == (
        "<image>\n\nWhat action should the robot take to pick up the café cup and put it in the 瓶?")
    assert row["conversations"][1]["value"] == "<action>" * 7
    assert all(127744 <= t < 128000 for t in row["action_token_ids"])
    assert any("labeled with numeric marks:" in turn["value"] for r in rows for turn in r["conversations"])
    errors = pq.read_table(sorted((tmp_path / "out" / "errors").glob("oxe-*.parquet"))).to_pylist()
    assert sorted(e["error_class"] for e in errors) == ["EpisodeWithoutInstruction", "TextNotUtf8"]
