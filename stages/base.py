"""What every stage shares: the row it works on, the errors it raises, and seeded randomness.

A stage is a small class with one job. Its constructor takes a typed config; ``__call__`` takes
one window's row (a dict of NumPy arrays and scalars) and returns the columns it adds or
replaces. ``placeholders`` are the same columns for a row that failed earlier, so every row in a
batch keeps one schema (Ray Data cannot mix ``None`` with arrays in a column). Stages import no
Ray: ``magma_data.execution`` wires them into ``map_batches``.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Protocol

import numpy as np

Row = dict[str, Any]


class StageError(Exception):
    """An input that cannot become a sample, with a reason the user can act on.

    Stages raise it for bad input (a clip shorter than a window, a video that cannot be
    decoded); the runner turns it, like any other exception, into a row of the errors table.
    """


class Stage(Protocol):
    name: ClassVar[str]
    #: columns this stage removes from the row once it has run (e.g. decoded frames after tracking)
    consumes: ClassVar[tuple[str, ...]]

    def placeholders(self) -> Row:
        """The columns ``__call__`` returns, empty, for rows that failed before this stage."""
        ...

    def __call__(self, row: Row) -> Row: ...


def seeded_rng(seed: int, sample_id: str, purpose: str) -> np.random.Generator:
    """A generator fixed by the run seed, the sample and what the numbers are for.

    Keying on ``purpose`` keeps draws independent: adding a draw for one purpose never shifts
    the numbers another purpose sees.
    """
    digest = hashlib.sha256(f"{seed}\x00{sample_id}\x00{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))
