"""The Open-X reader on RLDS datasets written by tensorflow-datasets in the official layout."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from magma_data.sources import load_manifest, open_source
from magma_data.sources.base import ClipProblem
from magma_data.sources.oxe import MISSING_EXTRA, OpenXSource, RobotEpisode, import_tfds


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'magma-data\[oxe\]'"):
        import_tfds()
    assert "TensorFlow" in MISSING_EXTRA


pytest.importorskip("tensorflow_datasets", reason="the [oxe] extra (tensorflow-datasets) is not installed")
pytest.importorskip("tensorflow", reason="the [oxe] extra (TensorFlow, to read TFRecord) is not installed")

from rlds_fixtures import TABLETOP, TABLETOP_EPISODES, oxe_miniature, tabletop_action  # noqa: E402


@pytest.fixture(scope="module")
def oxe_root(tmp_path_factory):
    return oxe_miniature(tmp_path_factory.mktemp("oxe"))


@pytest.fixture(scope="module")
def units(oxe_root):
    return list(open_source(load_manifest("oxe"), oxe_root).clips())


def _episodes(units):
    return [u for u in units if isinstance(u, RobotEpisode)]


def test_episodes_carry_instruction_camera_length_and_actions(units, oxe_root):
    tabletop = {e.num_steps: e for e in _episodes(units) if e.dataset == TABLETOP}
    assert sorted(tabletop) == [3, 20]
    long = tabletop[20]
    assert long.instruction == "pick up the café cup and put it in the 瓶"
    assert long.image_key == "image" and long.image_size == (48, 64) and long.tom
    assert long.dataset_path == str(oxe_root.resolve() / TABLETOP / "0.1.0")
    assert long.episode_id == f"{TABLETOP}/train/{long.episode_index:06d}"
    raw = np.array([tabletop_action(t, 20) for t in range(20)])
    np.testing.assert_allclose(long.actions[:, :6], raw[:, :6], rtol=1e-6)
    np.testing.assert_array_equal(long.actions[:, 6], 1 - raw[:, 6])  # utaustin_mutex: 1 = open after inversion
    assert long.steps.tolist() == list(range(20))


def test_rt1_dict_actions_and_observation_instructions(units):
    (fractal,) = [e for e in _episodes(units) if e.dataset == "fractal20220817_data"]
    assert fractal.instruction == "open the top drawer"
    assert fractal.actions.shape == (4, 7)
    # a constant close command (+1): OpenVLA's rel2abs makes the gripper closed (0) throughout
    np.testing.assert_allclose(fractal.actions[2], [0.2, 0.2, 0.2, 0, 0, 0, 0], rtol=1e-6)


def test_awkward_episodes_and_datasets_are_problems(units):
    problems = [u for u in units if isinstance(u, ClipProblem)]
    classes = sorted(p.error_class for p in problems)
    assert classes == ["EpisodeWithoutInstruction", "ImageKeyMissing", "TextNotUtf8"]
    missing_camera = next(p for p in problems if p.error_class == "ImageKeyMissing")
    assert missing_camera.unit_id == "oxe/viola" and "agentview_rgb" in missing_camera.message
    assert "'image'" in missing_camera.message  # lists the cameras it does have
    assert all(p.unit_id.startswith(f"oxe/{TABLETOP}/train/") for p in problems if p.unit_id != "oxe/viola")


def test_every_episode_is_accounted_for_in_a_stable_order(units, oxe_root):
    tabletop = [u for u in units if getattr(u, "dataset", "") == TABLETOP
                or getattr(u, "unit_id", "").startswith(f"oxe/{TABLETOP}/")]
    assert len(tabletop) == len(TABLETOP_EPISODES)
    again = list(open_source(load_manifest("oxe"), oxe_root).clips())
    assert [getattr(u, "episode_id", getattr(u, "unit_id", "")) for u in again] == \
        [getattr(u, "episode_id", getattr(u, "unit_id", "")) for u in units]


def test_datasets_can_be_chosen_and_a_missing_one_is_reported(oxe_root):
    units = list(OpenXSource(oxe_root, "oxe", datasets=["fractal20220817_data", "bridge_orig", "../etc"]).clips())
    assert [type(u).__name__ for u in units] == ["RobotEpisode", "ClipProblem", "ClipProblem"]
    assert [u.error_class for u in units[1:]] == ["DatasetMissing", "PathEscapesRoot"]


def test_root_may_be_one_version_folder(oxe_root):
    units = list(OpenXSource(oxe_root / "fractal20220817_data" / "0.1.0", "oxe").clips())
    assert [u.dataset for u in units] == ["fractal20220817_data"]


def test_no_tom_datasets(oxe_root):
    units = list(OpenXSource(oxe_root, "oxe", datasets=["fractal20220817_data"],
                             no_tom_datasets=["fractal20220817_data"]).clips())
    assert units[0].tom is False


def test_not_utf8_bytes_are_reported(units):
    problem = next(u for u in units if isinstance(u, ClipProblem) and u.error_class == "TextNotUtf8")
    assert "\\xff" in problem.message
