"""Nothing wasted: a mistake on the command line is refused before any work, in one line, with exit 2.

Config values are checked against the type and range each stage config declares beside the
field; the tracker's weights are checked on the driver before Ray starts; a ``--root`` that does
not exist is refused. None of these leaves anything in the output folder.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from magma_data.cli import main
from magma_data.config import ConfigValueError, RunConfig, parse_assignments
from magma_data.models.cotracker3 import CoTracker3Offline, CoTracker3Online
from magma_data.stages.plan import PlanConfig
from magma_data.stages.track import TRACKERS


def run_cli(output, *args: str):
    return CliRunner().invoke(main, ["run", "video_tom", "--input", "sample", "--output", str(output),
                                     "--no-progress", *args])


@pytest.mark.parametrize(("args", "field", "takes"), [
    (("--set", "marks.moving_threshold_px=abc"), "marks.moving_threshold_px", "a number >= 0"),
    (("--set", "camera.force=maybe"), "camera.force", "true or false"),
    (("--set", "plan.window_len=abc"), "plan.window_len", "an integer >= 2"),
    (("--set", "plan.window_len=-4"), "plan.window_len", "an integer >= 2"),
    (("--set", "marks.moving_clusters=[5, 2]"), "marks.moving_clusters", "a list of 2 items, each an integer >= 1, "
                                                                          "with low <= high"),
    (("--set", "track.precision=fp8"), "track.precision", "one of fp32, bf16"),
    (("--window-len", "1"), "plan.window_len", "an integer >= 2"),
    (("--grid-size", "0"), "track.grid_size", "an integer >= 1"),
    (("--height", "0"), "decode.height", "an integer >= 16"),
    (("--fps", "-2"), "plan.fps", "a number > 0 or null"),
    (("--rows-per-shard", "0"), "sink.rows_per_shard", "an integer >= 1"),
    (("--limit", "0"), "limit", "an integer >= 1 or null"),
])
def test_a_value_its_field_does_not_take_is_refused_in_one_line_before_any_work(tmp_path, args, field, takes):
    output = tmp_path / "out"
    result = run_cli(output, *args)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {args[0]}") and f"{field} takes {takes}" in line
    assert not output.exists()  # no .magma/ left behind


def test_overrides_convert_to_the_fields_type_and_every_config_is_checked_when_made():
    config = RunConfig().with_overrides(parse_assignments(("plan.fps=30", "marks.static_clusters=[4, 9]",
                                                           "camera.force=yes", "plan.window_len=8.0")))
    assert config.plan.fps == 30.0 and isinstance(config.plan.fps, float)
    assert config.marks.static_clusters == (4, 9) and config.camera.force is True and config.plan.window_len == 8
    assert config.hash() == RunConfig().with_overrides({"plan": {"fps": 30.0, "window_len": 8},
                                                        "marks": {"static_clusters": (4, 9)},
                                                        "camera": {"force": True}}).hash()
    with pytest.raises(ConfigValueError, match="plan.window_len takes an integer >= 2, not 1"):
        RunConfig(plan=PlanConfig(window_len=1))  # a Python caller gets the same check


@pytest.mark.parametrize(("section", "name", "value", "takes"), [
    ("camera", "min_inlier_ratio", 1.5, "a number from 0 to 1"),
    ("render", "min_points_divisor", 0, "an integer >= 1 or null"),
    ("track", "tracker", "raft", f"one of auto, {', '.join(TRACKERS)}"),  # the registry's names
    ("action", "normalize", [True], "a list of 7 items, each true or false"),
])
def test_the_types_and_ranges_are_told_in_words(section, name, value, takes):
    with pytest.raises(ConfigValueError) as refused:
        RunConfig().with_overrides({section: {name: value}})
    assert str(refused.value) == f"{section}.{name} takes {takes}, not {value!r}"


@pytest.mark.parametrize(("make", "complaint"), [
    (None, "does not exist"),
    (lambda path: path.write_text("not a checkpoint"), "cannot be read as a PyTorch checkpoint"),
    (lambda path: path.write_bytes(_offline_bytes(path)[:5000]), "cannot be read as a PyTorch checkpoint"),
    (lambda path: torch.save(CoTracker3Online().state_dict(), path), "16-frame time_emb but the offline model"),
    (lambda path: torch.save({"weight": torch.zeros(3)}, path), "is not a CoTracker3 offline checkpoint"),
])
def test_tracker_weights_are_checked_on_the_driver_before_ray_starts(tmp_path, monkeypatch, make, complaint):
    monkeypatch.setattr("magma_data.runner.init_ray", lambda *_: pytest.fail("Ray was started"))
    weights = tmp_path / "scaled_offline.pth"
    if make:
        make(weights)
    output = tmp_path / "out"
    result = run_cli(output, "--tracker", "cotracker3", "--checkpoint", str(weights))
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert str(weights) in line and complaint in line and "huggingface.co/facebook/cotracker3" in line
    assert not output.exists()


def _offline_bytes(path):
    """A real offline checkpoint's bytes (cut short by the caller: a download that broke off)."""
    torch.save(CoTracker3Offline().state_dict(), path)
    return path.read_bytes()


def test_a_root_that_does_not_exist_is_a_usage_error(tmp_path):
    result = run_cli(tmp_path / "out", "--root", str(tmp_path / "nowhere"))
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "out").exists()
