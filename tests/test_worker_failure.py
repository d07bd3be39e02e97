"""Ray workers that die mid-run: retried by Ray, and the run still ends with every unit accounted for.

The workers kill themselves with SIGKILL through the ``MAGMA_DATA_CRASH_AT`` hook
(magma_data/faults.py): once (a marker file lets the retry pass) for the transient case, every
time for a poisoned clip, as a decoder that segfaults on one file would.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from cli_runs import SMALL, data_files, magma_run, sample_ids, uninterrupted_run

from magma_data.execution import ACTOR_ARGS, CPU_TASK_ARGS


def test_killed_track_and_stage_workers_are_retried_and_the_dataset_is_unchanged(tmp_path, tmp_path_factory):
    output = tmp_path / "out"
    markers = tmp_path / "track.marker", tmp_path / "stage.marker"
    result = magma_run(output, *SMALL, crash_at=f"in_track:{markers[0]},in_stage:{markers[1]}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(marker.exists() for marker in markers), "the workers should have killed themselves once"
    assert data_files(output) == data_files(uninterrupted_run(tmp_path_factory))
    assert len(sample_ids(output)) == 8


@pytest.mark.slow
def test_a_clip_that_kills_its_worker_every_time_costs_only_its_own_windows(tmp_path):
    """Ray fuses the CPU stages into tasks of many windows; after Ray gives up on such a task, its
    windows run again one per task, and only the poisoned clip's windows end as WorkerLost."""
    output = tmp_path / "out"
    result = magma_run(output, *SMALL, crash_at="poison:zoom_two_boxes")
    assert result.returncode == 3, result.stderr[-3000:]
    errors = pq.read_table(sorted(output.glob("errors/*.parquet"))).to_pylist()
    rows = pq.read_table(output / "data" / "sample").to_pylist()
    poisoned = {"sample/zoom_two_boxes/00000000", "sample/zoom_two_boxes/00000008"}
    assert {e["unit_id"] for e in errors} == poisoned and len(errors) == 2
    assert {e["error_class"] for e in errors} == {"WorkerLost"} and {e["stage"] for e in errors} == {"ray"}
    assert len(rows) == 6 and all(row["clip_id"] != "zoom_two_boxes" for row in rows)
    summary = json.loads((output / "summary.json").read_text())["sample"]
    assert len(poisoned) <= summary["windows_rerun_alone"] <= 8  # the extra work: each lost window once, alone
    assert "WorkerLost" in result.stderr and "re-run alone" in result.stderr  # the summary table
    assert "Traceback" not in result.stderr  # Ray's task errors go to its log, not the terminal


def test_ray_retries_are_explicit_and_bounded():
    """Ray Data's defaults retry a dying task forever; ours stop, so a poisoned input cannot hang a run."""
    assert CPU_TASK_ARGS["max_retries"] > 0 and ACTOR_ARGS["max_task_retries"] > 0
    assert ACTOR_ARGS["max_restarts"] == -1  # actors die on preemption for reasons no unit caused
