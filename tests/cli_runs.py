"""Run ``magma-data run`` as a real subprocess, kill it at named points, and compare output folders.

Every run is started in a session of its own; the local Ray it starts (raylet, GCS, workers,
agents) stays in that session, so after a run (killed or not) ``reap`` ends exactly the processes
that run started and no others. A SIGKILLed driver leaves Ray's agents behind otherwise.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq

MAGMA_DATA = str(Path(sys.executable).with_name("magma-data"))

#: Small and fast: 8 windows of 8 frames from the synthetic sample, 2 windows a shard -> 4 shards.
SMALL = ("--input", "sample", "--tracker", "lk", "--height", "128", "--grid-size", "5", "--window-len", "8",
         "--window-stride", "8", "--limit", "8", "--rows-per-shard", "2", "--no-progress")


#: How long a run may take before a test calls it hung: a guard, not a measure (``SMALL`` takes 10
#: to 60 s on a shared 2-core machine under heavy load).
HUNG_S = 600


def run_env(**hooks: str) -> dict[str, str]:
    """The environment of a run a test starts: this one without what an earlier test's in-process Ray
    or a hook left in it (``RAY_*``, ``MAGMA_DATA_*``), with ``hooks`` (magma_data.faults) set."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "MAGMA_DATA_"))}
    return {**env, **hooks}


def magma_run(output: Path, *args: str, crash_at: str | None = None, timeout: float = HUNG_S):
    """``magma-data run video_tom --output OUTPUT ARGS``; ``crash_at`` sets the kill hook (magma_data.faults)."""
    env = run_env(**({"MAGMA_DATA_CRASH_AT": crash_at} if crash_at else {}))
    command = [MAGMA_DATA, "run", "video_tom", "--output", str(output), "--num-cpus", "2", *args]
    driver = subprocess.Popen(command, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = driver.communicate(timeout=timeout)
    finally:
        driver.kill()
        reap(driver.pid)
    return subprocess.CompletedProcess(driver.args, driver.returncode, stdout, stderr)


def reap(session: int, grace_s: float = 5.0) -> None:
    """SIGKILL what is left of the session ``magma_run`` started its driver in."""
    deadline = time.monotonic() + grace_s
    while (left := in_session(session)) and time.monotonic() < deadline:
        time.sleep(0.5)  # a driver that exited cleanly shuts its Ray down by itself
    for process in left:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=5)


def in_session(session: int) -> list[psutil.Process]:
    found = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == session:
                found.append(psutil.Process(pid))
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return found


def data_files(output: Path) -> dict[str, str]:
    """Relative path -> sha256 of every shard and errors file (the dataset, without run statistics)."""
    files = sorted([*output.glob("data/*/*.parquet"), *output.glob("errors/*.parquet")])
    return {p.relative_to(output).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def stray_files(output: Path) -> list[str]:
    """Temporary files a crash may leave; a finished run must have removed them."""
    return sorted(p.relative_to(output).as_posix() for p in output.rglob("*.partial"))


def sample_ids(output: Path) -> list[str]:
    return [sid for p in sorted(output.glob("data/*/*.parquet")) for sid in pq.read_table(p)["sample_id"].to_pylist()]


_BASELINE: list[Path] = []


def uninterrupted_run(tmp_path_factory) -> Path:
    """One clean ``SMALL`` run per test session, the reference the crash and determinism tests compare to."""
    if not _BASELINE:
        output = tmp_path_factory.mktemp("uninterrupted")
        result = magma_run(output, *SMALL)
        assert result.returncode == 0, result.stderr
        _BASELINE.append(output)
    return _BASELINE[0]


_UNFINISHED: list[Path] = []


def unfinished_run(tmp_path_factory) -> Path:
    """One ``SMALL`` run per test session killed after its first shard: a real unfinished output folder."""
    if not _UNFINISHED:
        output = tmp_path_factory.mktemp("unfinished")
        result = magma_run(output, *SMALL, crash_at="after_shard:1")
        assert result.returncode != 0, "the crash hook did not fire"
        _UNFINISHED.append(output)
    return _UNFINISHED[0]
