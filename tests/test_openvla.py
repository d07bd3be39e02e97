"""The robot path on Magma's conventions: OpenVLA's standardisation and statistics, and Magma's 512 scale."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from magma_data.config import RunConfig
from magma_data.sources import load_manifest
from magma_data.sources.openvla import (
    STANDARDIZE,
    UNSUPPORTED,
    OXE_MAGIC_SOUP,
    binarize_gripper,
    rel2abs_gripper,
    standardization,
)
from magma_data.stages.camera import CameraStage
from magma_data.stages.marks import MarksStage


def test_every_mixture_dataset_is_either_standardised_or_refused_with_a_reason():
    assert set(OXE_MAGIC_SOUP) == (set(STANDARDIZE) - {"bridge_dataset"}) | set(UNSUPPORTED)
    for name in UNSUPPORTED:
        with pytest.raises(ValueError, match="tensorflow_graphics"):
            standardization(name)
    with pytest.raises(ValueError, match="standard_datasets"):
        standardization("my_robot")
    assert standardization("my_robot", frozenset({"my_robot"})).__name__ == "standard"


def test_relative_gripper_commands_become_open_and_closed_as_in_openvla():
    # +1 closes, -1 opens, 0 keeps; before the first command the gripper is in the other state
    assert rel2abs_gripper(np.array([0, 0, 1, 0, 0, -1, 0])).tolist() == [1, 1, 0, 0, 0, 1, 1]
    assert rel2abs_gripper(np.array([0, -1, 0, 1])).tolist() == [0, 1, 1, 0]
    assert rel2abs_gripper(np.zeros(3)).tolist() == [1, 1, 1]  # never commanded: open


def test_continuous_gripper_values_take_the_state_reached_after_them():
    values = np.array([1.0, 0.5, 0.4, 0.0, 0.0, 0.7, 1.0, 0.3])
    # the trailing 0.3 has no later state: it keeps its own value, as OpenVLA's scan starts from the last action
    np.testing.assert_allclose(binarize_gripper(values), [1, 0, 0, 0, 0, 1, 1, 0.3], rtol=1e-6)


def _row(tracks: np.ndarray, size: int) -> dict:
    return {"sample_id": "hand-built", "tracks": tracks.astype(np.float32), "visibility": np.ones(tracks.shape[:2], bool),
            "image_width": np.int32(size), "image_height": np.int32(size)}


def _grid_at_256(frames: int = 16) -> np.ndarray:
    """[T, 225, 2] a 15x15 grid on a 256x256 frame, static."""
    xs = np.linspace(8, 248, 15)
    grid = np.stack(np.meshgrid(xs, xs), axis=-1).reshape(-1, 2)
    return np.repeat(grid[None], frames, axis=0).astype(np.float64)


def _robot_config() -> RunConfig:
    return RunConfig(pipeline="oxe_tom", source="oxe").with_overrides(load_manifest("oxe").defaults)


def test_an_arm_moving_0_85_px_a_frame_at_256_is_moving_at_magmas_512_scale():
    """Magma rescales robot traces from 256 to the 512 frame before its 1 px rules: 6 moving traces."""
    config = _robot_config()
    tracks = _grid_at_256()
    arm = np.arange(6) * 37  # six points of the grid move together
    tracks[:, arm, 0] += 0.85 * np.arange(16)[:, None]
    scale = config.decode.height / 256  # the frames stage stretches robot frames to decode.height
    row = _row(tracks * scale, config.decode.height)
    row.update(CameraStage(config.camera)(row))
    marks = MarksStage(config.marks)(row)
    assert int(marks["num_moving_points"]) == 6 and not row["camera_motion"]
    # the same thresholds at 256 (the scale robot frames used to be tracked at) see nothing moving
    at_256 = _row(tracks, 256)
    at_256.update(CameraStage(config.camera)(at_256))
    assert int(MarksStage(config.marks)(at_256)["num_moving_points"]) == 0


def test_a_camera_drifting_0_6_px_a_frame_at_256_is_compensated_at_magmas_512_scale():
    config = _robot_config()
    tracks = _grid_at_256() + np.array([0.6, 0.0]) * np.arange(16)[:, None, None]
    scale = config.decode.height / 256
    compensated = CameraStage(config.camera)(_row(tracks * scale, config.decode.height))
    assert compensated["camera_motion"] and compensated["camera_status"] == "applied"
    np.testing.assert_allclose(compensated["tracks"][-1], compensated["tracks"][0], atol=1e-3)
    assert not CameraStage(config.camera)(_row(tracks, 256))["camera_motion"]


pytest.importorskip("tensorflow_datasets", reason="the [oxe] extra (tensorflow-datasets) is not installed")
pytest.importorskip("tensorflow", reason="the [oxe] extra (TensorFlow, to read TFRecord) is not installed")

from rlds_fixtures import TABLETOP, TABLETOP_EPISODES, golden_miniature, oxe_miniature  # noqa: E402

from magma_data.pipelines import load_pipeline  # noqa: E402
from magma_data.pipelines.base import PlanContext  # noqa: E402
from magma_data.sources import open_source  # noqa: E402
from magma_data.sources.openvla import STATISTICS_FILE  # noqa: E402
from magma_data.stages.action_tokens import ActionTokensStage  # noqa: E402

OPEN, CLOSED, ZERO = 127744, 127872, 127872  # gripper 1 and 0, and a normalised 0


@pytest.fixture(scope="module")
def golden_root(tmp_path_factory):
    return golden_miniature(tmp_path_factory.mktemp("golden"))


@pytest.fixture(scope="module")
def oxe_root(tmp_path_factory):
    return oxe_miniature(tmp_path_factory.mktemp("oxe"))


def _tokens(root, dataset, output=None, limit=None) -> dict[int, list[int]]:
    """frame_index -> the action token ids of its window (one episode per dataset here; the last one
    wins otherwise), as the oxe_tom pipeline plans and tokenises them."""
    config = dataclasses.replace(_robot_config(), limit=limit)
    source = open_source(load_manifest("oxe"), root, datasets=[dataset])
    rows = load_pipeline("oxe_tom").plan(source, config, PlanContext(output=output))
    stage = ActionTokensStage(config.action)
    return {row["frame_index"]: stage({**row, "conversations": []})["action_token_ids"].tolist()
            for row in rows if not row.get("drop_kind")}


def test_golden_tokens_of_an_rt1_style_episode(golden_root):
    """x = t/128 (q01 1/128, q99 99/128), y constant, z = -t/128, no rotation; the gripper is closed by
    a +1 command at step 10 and opened by -1 at 50: OpenVLA's 1 = open, 0 = closed, never -1."""
    tokens = _tokens(golden_root, "fractal20220817_data")
    assert len(tokens) == 101
    assert tokens[0] == [127999, ZERO, 127744, ZERO, ZERO, ZERO, OPEN]
    assert tokens[10] == [127976, ZERO, 127768, ZERO, ZERO, ZERO, CLOSED]
    assert tokens[50] == [127872, ZERO, 127872, ZERO, ZERO, ZERO, OPEN]
    assert tokens[75] == [127807, ZERO, 127937, ZERO, ZERO, ZERO, OPEN]
    assert tokens[100] == [127744, ZERO, 127999, ZERO, ZERO, ZERO, OPEN]


def test_golden_tokens_of_a_bridge_style_episode(golden_root):
    """Bridge drops its first step and relabels actions as the state change reached (dropping the last
    step): y moves (j + 1)/128 at standardised step j (q01 2/128, q99 100/128), x a constant 0.5
    (min == max: 0), the gripper binarised with in-between values taking the next state."""
    tokens = _tokens(golden_root, "bridge_orig")
    assert sorted(tokens) == list(range(1, 102))  # frame_index: the RLDS steps kept
    assert tokens[1] == [ZERO, 127999, ZERO, ZERO, ZERO, ZERO, OPEN]
    assert tokens[31] == [ZERO, 127924, ZERO, ZERO, ZERO, ZERO, CLOSED]  # 0.5 before closing: closed
    assert tokens[50] == [ZERO, 127875, ZERO, ZERO, ZERO, ZERO, CLOSED]
    assert tokens[51] == [ZERO, 127872, ZERO, ZERO, ZERO, ZERO, CLOSED]
    assert tokens[71] == [ZERO, 127820, ZERO, ZERO, ZERO, ZERO, OPEN]  # 0.6 before opening: open
    assert tokens[100] == [ZERO, 127744, ZERO, ZERO, ZERO, ZERO, OPEN]


def test_bridge_windows_read_the_frames_of_the_steps_they_kept(golden_root):
    source = open_source(load_manifest("oxe"), golden_root, datasets=["bridge_orig"])
    rows = load_pipeline("oxe_tom").plan(source, _robot_config())
    assert rows[0]["frame_index"] == 1 and rows[0]["frame_indices"].tolist() == list(range(1, 17))
    assert rows[-1]["frame_indices"].tolist() == [101] * 16  # clamped at the last kept step, not 102


def test_limit_leaves_every_action_token_unchanged(oxe_root):
    def tokens(limit):
        config = dataclasses.replace(_robot_config(), limit=limit)
        rows = load_pipeline("oxe_tom").plan(open_source(load_manifest("oxe"), oxe_root, datasets=[TABLETOP]), config)
        return {row["unit_id"]: row["action_normalized"].tolist() for row in rows if not row.get("drop_kind")}

    everything, first_ones = tokens(None), tokens(5)
    assert 0 < len(first_ones) < len(everything)
    assert all(everything[unit] == normalized for unit, normalized in first_ones.items())


def test_statistics_cover_every_episode_and_are_kept_beside_the_output(oxe_root, tmp_path):
    source = open_source(load_manifest("oxe"), oxe_root, datasets=[TABLETOP])
    calls = []
    compute = source.dataset_statistics
    source.dataset_statistics = lambda name: calls.append(name) or compute(name)
    load_pipeline("oxe_tom").plan(source, dataclasses.replace(_robot_config(), limit=3), PlanContext(output=tmp_path))
    stored = json.loads((tmp_path / STATISTICS_FILE).read_text())
    assert calls == [TABLETOP] and list(stored) == [TABLETOP]
    entry = stored[TABLETOP]
    # every episode, those without (usable) instruction too, as OpenVLA's statistics are
    assert entry["num_trajectories"] == len(TABLETOP_EPISODES)
    assert entry["num_transitions"] == sum(length for length, _ in TABLETOP_EPISODES)
    assert set(entry["action"]) == {"mean", "std", "max", "min", "q01", "q99", "mask"}
    assert entry["action"]["mask"] == [True] * 6 + [False]
    load_pipeline("oxe_tom").plan(source, _robot_config(), PlanContext(output=tmp_path))  # a resumed run reads it
    assert calls == [TABLETOP]


def test_unsupported_and_unknown_datasets_are_refused_as_problems(tmp_path):
    from rlds_fixtures import ToyTabletop, _write

    _write(tmp_path, ((ToyTabletop, "furniture_bench_dataset_converted_externally_to_rlds"),
                      (ToyTabletop, "my_robot")))
    units = list(open_source(load_manifest("oxe"), tmp_path).clips())
    assert [(u.unit_id, u.error_class) for u in units] == [
        ("oxe/furniture_bench_dataset_converted_externally_to_rlds", "DatasetNotSupported"),
        ("oxe/my_robot", "DatasetNotSupported")]
    assert "standard_datasets" in units[1].message
    taken = list(open_source(load_manifest("oxe"), tmp_path, datasets=["my_robot"],
                             standard_datasets=["my_robot"]).clips())
    assert sum(type(u).__name__ == "RobotEpisode" for u in taken) == 2
