"""Test hooks: make a process SIGKILL itself, or hold still, at a named point, so crash-and-resume
and interrupt tests are exact.

Set ``MAGMA_DATA_CRASH_AT=<point>:<arg>[,<point>:<arg>...]`` in the environment of ``magma-data
run``. Unset (the normal case) every call below is one dictionary lookup. Points on the driver, ``arg`` a count
within this process (so a point is reached whatever order Ray returns windows in, and whatever
an earlier run committed):

- ``shots_cached:N``   planning: the cuts of the N-th clip span this run detected are in the shot cache
- ``during_stream:N``  the N-th finished row reached the shard collector (other windows are in flight)
- ``during_write:N``   the N-th shard this run writes is on disk under its temporary name, not renamed
- ``before_ledger:N``  the N-th shard is renamed into place, the ledger does not record it yet
- ``after_shard:N``    the N-th shard is committed in the ledger (between shards)

Points in Ray workers, ``arg`` a marker file: the first worker to get there creates the marker
and dies; Ray's retry (and every later worker) finds the marker and goes on.

- ``in_stage:PATH``    inside any stage's task or actor, before it runs a batch
- ``in_<name>:PATH``   inside the stage of that name only: ``in_track`` (a CoTracker3 actor, or a
                       Lucas-Kanade task), ``in_decode``, ``in_camera``...

And one that never passes, like a decoder that segfaults on one file every time:

- ``poison:CLIP``      every stage task or actor that gets a window of clip CLIP dies

``MAGMA_DATA_HOLD_AT=<point>:<N>`` takes the driver points above and, instead of dying, holds
the process there until a signal ends it: a test can then send Ctrl-C at a known state (one
shard committed, the rest not) however fast or loaded the machine is.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "MAGMA_DATA_CRASH_AT"
HOLD_ENV = "MAGMA_DATA_HOLD_AT"


def crash_point(point: str, count: int) -> None:
    """Die (or hold still) here when a hook names this point and this count."""
    if f"{point}:{count}" in _specs():
        _die()
    if f"{point}:{count}" in _specs(HOLD_ENV):
        while True:  # Ctrl-C raises KeyboardInterrupt here
            time.sleep(60)


def crash_once(point: str) -> None:
    """Die here once per marker file, for worker points; the retried task passes."""
    for spec in _specs():
        name, _, marker = spec.partition(":")
        if name != point:
            continue
        try:
            Path(marker).touch(exist_ok=False)
        except FileExistsError:
            continue
        _die()


def crash_on_clips(clip_ids) -> None:
    """Die here, every time, when a row of the poisoned clip is in the batch."""
    poisoned = {spec.partition(":")[2] for spec in _specs() if spec.startswith("poison:")}
    if poisoned and poisoned.intersection(str(clip) for clip in clip_ids):
        _die()


def _specs(env: str = ENV) -> list[str]:
    spec = os.environ.get(env)
    return spec.split(",") if spec else []


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
