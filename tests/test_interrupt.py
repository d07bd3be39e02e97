"""Ctrl-C on a real ``magma-data run``: it says what is committed and how to go on, exits 130, leaves no Ray behind.

The SIGINT goes to the run's whole process group, as a terminal sends it, while the driver holds
still right after committing its first shard (``MAGMA_DATA_HOLD_AT``; without it a fast machine
commits every shard before the signal lands); the same command then finishes the job.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

from cli_runs import MAGMA_DATA, SMALL, in_session, magma_run, reap, sample_ids

from magma_data.cli import EXIT_INTERRUPTED

#: 24 windows, 12 shards: enough left to do when the first shard is in
LONGER = (*SMALL, "--limit", "24")  # the last of a repeated option wins


def committed_shards(output) -> int:
    try:
        with sqlite3.connect(output / ".magma" / "sample" / "ledger.sqlite") as ledger:
            return ledger.execute("SELECT COUNT(*) FROM shards").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def test_ctrl_c_reports_the_committed_shards_exits_130_and_the_same_command_resumes(tmp_path):
    output = tmp_path / "out"
    command = [MAGMA_DATA, "run", "video_tom", "--output", str(output), "--num-cpus", "2", *LONGER]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                           env={**os.environ, "MAGMA_DATA_HOLD_AT": "after_shard:1"})
    try:
        deadline = time.monotonic() + 180
        while committed_shards(output) < 1 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert run.poll() is None, "the run ended before it could be interrupted"
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, stderr = run.communicate(timeout=60)
        time.sleep(2)  # Ray's processes exit on their own after the driver
        left = [process.name() for process in in_session(run.pid)]
    finally:
        run.kill()
        reap(run.pid)
    assert run.returncode == EXIT_INTERRUPTED, stderr[-3000:]
    assert committed_shards(output) == 1
    assert f"interrupted: 1 of 12 shards of 'sample' are committed in {output}" in stderr
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    assert left == [], f"processes left behind: {left}"

    resumed = magma_run(output, *LONGER)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ids = sample_ids(output)
    assert len(ids) == len(set(ids)) == 24
