"""Ctrl-C on a real ``magma-data run``: it says what is committed and how to go on, exits 130, leaves no Ray behind.

The SIGINT goes to the run's whole process group, as a terminal sends it, while the driver holds
still right after committing its first shard (``MAGMA_DATA_HOLD_AT``, until a signal ends it: the
state is the same on a fast machine and a loaded one); the same command then finishes the job.
Every wait is for a condition; the time limits only tell a hung run from a slow one.

The run is started with SIGINT as a terminal leaves it, and as a script's background job leaves
it: ignored (``cmd &`` in a non-interactive shell, so under many CI runners and agents), which
Python keeps unless the program restores it. A test suite started that way passed the ignored
SIGINT on to the run this test started, which then held on until the test gave up on it. Each
test sets SIGINT itself, as a shell does between fork and exec, so neither depends on how the
suite was started; it does so in a parent that then execs the run (``preexec_fn`` is not safe in
a process with threads, and an earlier test's in-process Ray leaves threads in this one).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

from cli_runs import HUNG_S, MAGMA_DATA, SMALL, in_session, magma_run, reap, run_env, sample_ids
from click.testing import CliRunner

from magma_data.cli import EXIT_INTERRUPTED, main

#: 24 windows, 12 shards: enough left to do when the first shard is in
LONGER = (*SMALL, "--limit", "24")  # the last of a repeated option wins
#: A parent that sets SIGINT as a shell would for the command it starts, then becomes that command
#: (same process, so the test's pid and session are the run's).
SETS_SIGINT = "import os, signal, sys; signal.signal(signal.SIGINT, signal.{}); os.execv(sys.argv[1], sys.argv[1:])"


def committed_shards(output) -> int:
    try:
        with sqlite3.connect(output / ".magma" / "sample" / "ledger.sqlite") as ledger:
            return ledger.execute("SELECT COUNT(*) FROM shards").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def interrupted_run(output, sigint) -> tuple[int, str, list[str]]:
    """Start the run with SIGINT set to ``sigint``, Ctrl-C it once its first shard is committed; its exit
    status, its stderr, and the processes of its session still alive once Ray had time to stop them."""
    command = [MAGMA_DATA, "run", "video_tom", "--output", str(output), "--num-cpus", "2", *LONGER]
    parent = [sys.executable, "-c", SETS_SIGINT.format(sigint.name)]
    run = subprocess.Popen([*parent, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True, env=run_env(MAGMA_DATA_HOLD_AT="after_shard:1"))
    try:
        deadline = time.monotonic() + HUNG_S
        while committed_shards(output) < 1 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert run.poll() is None, "the run ended before it could be interrupted"
        assert committed_shards(output) == 1, f"no shard committed in {HUNG_S} s"
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, stderr = run.communicate(timeout=HUNG_S)
        deadline = time.monotonic() + HUNG_S
        while (left := in_session(run.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)  # Ray's workers exit on their own once the driver stopped their raylet
        return run.returncode, stderr, [process.name() for process in left]
    finally:
        run.kill()
        reap(run.pid)


def assert_stopped_at_the_first_shard(output, status, stderr, left) -> None:
    assert status == EXIT_INTERRUPTED, stderr[-3000:]
    assert committed_shards(output) == 1
    assert f"interrupted: 1 of 12 shards of 'sample' are committed in {output}" in stderr
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    assert left == [], f"processes left behind: {left}"


def test_ctrl_c_reports_the_committed_shards_exits_130_and_the_same_command_resumes(tmp_path):
    output = tmp_path / "out"
    assert_stopped_at_the_first_shard(output, *interrupted_run(output, signal.SIG_DFL))

    resumed = magma_run(output, *LONGER)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ids = sample_ids(output)
    assert len(ids) == len(set(ids)) == 24


def test_ctrl_c_stops_a_run_started_as_a_background_job_of_a_script(tmp_path):
    output = tmp_path / "out"
    assert_stopped_at_the_first_shard(output, *interrupted_run(output, signal.SIG_IGN))


def test_a_program_that_calls_the_cli_with_sigint_ignored_gets_it_back_ignored():
    """The CLI takes SIGINT for its command only: a host process that ignores it (a daemon, or pytest
    started in a script's background) still does afterwards, whatever CLI tests ran in it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        result = CliRunner().invoke(main, ["run", "video_tom", "--help"])  # the group's callback runs first
        assert result.exit_code == 0, result.output
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
