"""``--tracker auto`` is resolved by the library: a Python caller of ``runner.run`` gets the CLI's tracker and hash.

The proof is the output folder: a Python run with ``auto`` into the folder a ``magma-data run``
made finds every shard committed under its own config hash (another hash would be refused).
"""

from __future__ import annotations

import json

import pytest
from cli_runs import SMALL, magma_run

from magma_data.config import RunConfig
from magma_data.runner import RunOptions, run
from magma_data.stages.track import TrackConfig, TrackerUnavailable, resolve_tracker


def test_a_python_run_with_tracker_auto_continues_the_dataset_the_cli_made_with_auto(tmp_path, monkeypatch):
    monkeypatch.delenv("MAGMA_COTRACKER3_CHECKPOINT", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-hub"))  # no checkpoint anywhere: Lucas-Kanade
    output = tmp_path / "out"
    cli_args = [arg if arg != "lk" else "auto" for arg in SMALL]
    done = magma_run(output, *cli_args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tracker: Lucas-Kanade on CPU (no CoTracker3 checkpoint found" in done.stderr

    config = RunConfig(source="sample", limit=8).with_overrides({
        "plan": {"window_len": 8, "window_stride": 8}, "decode": {"height": 128},
        "track": {"tracker": "auto", "grid_size": 5}, "sink": {"rows_per_shard": 2}})
    notes = []
    summary = run(config, RunOptions(output=output, num_cpus=2, progress=False, notify=notes.append))
    cli_summary = json.loads((output / "summary.json").read_text())["sample"]
    assert summary.nothing_to_do and summary.config_hash == cli_summary["config_hash"]
    assert summary.tracker == cli_summary["tracker"] == "lk"
    assert notes == ["tracker: Lucas-Kanade on CPU (no CoTracker3 checkpoint found; --checkpoint to use one)",
                     "text alignment: off (no CLIP checkpoint; --clip-checkpoint DIR drops windows whose frames do "
                     "not match their text)"]  # each said once, before any work


def test_a_tracker_that_needs_weights_and_has_none_is_refused_with_one_message(tmp_path, monkeypatch):
    monkeypatch.delenv("MAGMA_COTRACKER3_CHECKPOINT", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-hub"))
    with pytest.raises(TrackerUnavailable, match="no CoTracker3 checkpoint found; download scaled_online.pth"):
        resolve_tracker(TrackConfig(tracker="cotracker3", variant="online"))
    refused = magma_run(tmp_path / "out", "--input", "sample", "--tracker", "cotracker3", "--no-progress")
    assert refused.returncode == 2 and "no CoTracker3 checkpoint found" in refused.stderr

