"""magma-data run with --tracker cotracker3: random weights in a temporary checkpoint, real local Ray."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
from cli_runs import HUNG_S, run_env

from magma_data.models.cotracker3 import CoTracker3Offline


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "scaled_offline.pth"
    torch.save(CoTracker3Offline().state_dict(), path)
    return path


def test_cotracker3_tracks_every_window_in_its_actor_which_ray_restarts_once_killed(random_checkpoint, tmp_path,
                                                                                     monkeypatch):
    output = tmp_path / "out"
    marker = tmp_path / "actor-killed"
    command = [
        sys.executable, "-m", "magma_data", "run", "video_tom", "--input", "sample", "--output", str(output),
        "--tracker", "cotracker3", "--checkpoint", str(random_checkpoint),
        "--limit", "2", "--window-len", "8", "--grid-size", "3", "--height", "128", "--batch-size", "2",
        "--num-cpus", "2", "--no-progress",
    ]
    environment = run_env(MAGMA_DATA_CRASH_AT=f"in_track:{marker}")  # magma_data/faults.py
    done = subprocess.run(command, capture_output=True, text=True, timeout=HUNG_S, env=environment)
    assert done.returncode in (0, 3), done.stderr[-3000:]
    assert marker.exists(), "the tracker actor should have killed itself once"
    assert "tracker: CoTracker3 offline from" in done.stderr
    non_commercial = "tracks by CoTracker3: licence cc-by-nc-4.0 (non-commercial use only)"
    assert done.stderr.strip().splitlines()[-1] == f"wrote {output}; {non_commercial}"
    assert f"- `cotracker3`: {non_commercial}" in (output / "README.md").read_text()
    pushed = subprocess.run([sys.executable, "-m", "magma_data", "push", str(output), "--repo-id", "someone/windows",
                             "--dry-run", "--license", "apache-2.0"], capture_output=True, text=True, timeout=300)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert (f"licence: apache-2.0; {non_commercial}\nwarning: the card's licence apache-2.0 allows commercial use, "
            "but the tracks of sample were made by CoTracker3") in pushed.stderr

    summary = json.loads((output / "summary.json").read_text())["sample"]
    assert summary["tracker"] == "cotracker3"
    assert summary["windows_planned"] == 2
    assert summary["rows_written"] + summary["error_rows"] == 2
    errors = [pq.read_table(p).to_pylist() for p in (output / "errors").glob("*.parquet")]
    assert not [e for shard in errors for e in shard if e["stage"] == "track"]  # tracking itself never failed
    config = json.loads((output / ".magma" / "sample" / "config.json").read_text())
    assert config["track"]["tracker"] == "cotracker3" and config["tracker_weights"]
    if summary["rows_written"]:
        table = pq.read_table(output / "data" / "sample", columns=["tracker", "tracks"])
        assert set(table["tracker"].to_pylist()) == {"cotracker3"}
        assert len(table["tracks"][0].as_py()) == 8 and len(table["tracks"][0].as_py()[0]) == 9

    # From Python, ``auto`` with the checkpoint in the environment is the CLI's run: same tracker, same
    # hash (weights' digest included), so the folder is found complete instead of refused.
    from magma_data.config import RunConfig
    from magma_data.runner import RunOptions, run

    monkeypatch.setenv("MAGMA_COTRACKER3_CHECKPOINT", str(random_checkpoint))
    config = RunConfig(source="sample", limit=2).with_overrides(
        {"plan": {"window_len": 8}, "decode": {"height": 128}, "track": {"tracker": "auto", "grid_size": 3}})
    again = run(config, RunOptions(output=output, num_cpus=2, progress=False))
    assert again.nothing_to_do and (again.tracker, again.config_hash) == ("cotracker3", summary["config_hash"])


def test_auto_picks_cotracker3_when_the_environment_names_a_checkpoint(random_checkpoint, monkeypatch):
    from magma_data.config import RunConfig
    from magma_data.runner import resolve

    monkeypatch.setenv("MAGMA_COTRACKER3_CHECKPOINT", str(random_checkpoint))
    resolved, _ = resolve(RunConfig())
    assert resolved.track.tracker == "cotracker3" and resolved.track.checkpoint == str(random_checkpoint)
    assert resolved.hash() != RunConfig().hash()
    assert resolve(resolved)[0] == resolved  # the runner re-resolving a resolved config changes nothing
    monkeypatch.delenv("MAGMA_COTRACKER3_CHECKPOINT")
    monkeypatch.setenv("TORCH_HOME", str(random_checkpoint.parent / "empty-hub"))
    assert resolve(RunConfig())[0].track.tracker == "lk"
