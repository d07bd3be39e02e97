"""What every stage shares: the columns it declares, the row it works on, the errors it raises, seeded randomness.

A stage is a small class with one job. Its constructor takes a typed config; ``__call__`` takes
one window's row (a dict of NumPy arrays and scalars) and returns the columns it adds or
replaces, exactly the ``columns`` it declares, or ``Filtered`` when a rule of the recipe drops the
row on purpose. Each declaration is the one place a column's type,
shape, meaning and failed-row placeholder are written: the shard schema, the placeholders and the
column tables of the docs derive from it. Stages import no Ray: ``magma_data.execution`` wires
them into ``map_batches``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

Row = dict[str, Any]

#: Errors worth another try: the input may be fine and the system briefly not (network file
#: systems, object stores). A stage raises them as they are; anything else fails the window at once.
TRANSIENT_ERRORS = (TimeoutError, ConnectionError, BlockingIOError, InterruptedError)

#: Dimensions every row of a run shares, fixed by its config: frames per window, tracked points.
CONFIG_DIMENSIONS = ("T", "N")

#: Where a stage runs (``pipelines.base.StageSpec``; ``magma_data.execution.map_stage`` makes it Ray's):
#: "tasks", plain CPU tasks that Ray fuses with their neighbours (so decoded frames never leave the
#: worker that made them); "actors", a pool of actors that each load the stage's model once
#: (``Stage.setup``) and batch many windows per call: one actor per GPU on a cluster with GPUs,
#: one CPU actor otherwise.
Placement = Literal["tasks", "actors"]


@dataclass(frozen=True)
class Column:
    """One column of a window's row: its type, shape and meaning, and what a failed row holds instead.

    ``dtype`` is a NumPy / Arrow value type ("float32", "int32", "bool", "string", ...), "image"
    (JPEG bytes, a Hugging Face ``Image``) or "turn" (a ``{"from", "value"}`` chat turn).
    ``shape`` lists dimensions outermost first: an int is fixed, "T" and "N" are fixed by the run's
    config (``CONFIG_DIMENSIONS``), any other name varies from row to row. ``ragged`` marks a
    list whose inner lists differ in length, so it is a Python list rather than one array.
    ``group`` places the column in the shard schema and the docs; ``None`` marks a column that
    only passes between stages (decoded frames) and is never written.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...] = ()
    doc: str = ""
    group: str | None = None
    ragged: bool = False

    @property
    def written(self) -> bool:
        return self.group is not None

    def placeholder(self) -> Any:
        """The value of this column in a row that failed before its stage ran: empty, same type and rank.

        Ray Data cannot mix ``None`` with arrays in a column, so every row of a batch keeps one schema.
        """
        if self.dtype == "turn" or self.ragged:
            return []
        if self.dtype == "image":
            return b""
        if self.dtype == "string":
            return ""
        if not self.shape:
            return np.dtype(self.dtype).type(0)
        return np.zeros([size if isinstance(size, int) else 0 for size in self.shape], self.dtype)

    def describe_type(self) -> str:
        """The type as the docs write it: ``float32 [T, N, 2]``, ``string``, ``image (JPEG)``."""
        names = {"image": "image (JPEG)", "turn": "chat turns {from, value}"}
        base = names.get(self.dtype, self.dtype)
        if not self.shape or self.dtype == "turn":
            return base
        return f"{base} [{', '.join(str(size) for size in self.shape)}]"


class StageError(Exception):
    """An input that cannot become a sample, with a reason the user can act on.

    Stages raise it for bad input (a clip shorter than a window, a video that cannot be
    decoded); the runner turns it, like any other exception, into a row of the errors table.
    """


@dataclass(frozen=True)
class Filtered:
    """A stage's answer for a row that a rule of the recipe drops on purpose (not an error).

    ``rule`` names the rule (the filtered table's ``rule``), ``message`` says why in words the user
    can act on ("CLIP similarity 0.12 below 0.25"), ``value`` is the figure the rule judged (the
    filtered table's ``value``; None where it judged none). The executor records the row as
    ``Dropped("filtered", stage, rule, message, value=value)``; it goes to the filtered table, never
    the data.
    """

    rule: str
    message: str
    value: float | None = None


class Stage:
    """One step of a pipeline over windows; subclasses set ``name``, ``columns`` and implement ``__call__``.

    A stage that works on a batch at once (the tracker batches equal-shape windows into one
    forward) overrides ``process`` instead; either way the executor calls ``process``.
    """

    name: ClassVar[str]
    #: the columns ``__call__`` returns, each declared once (a column a later stage replaces is
    #: the same ``Column`` object, imported from the stage that first adds it)
    columns: ClassVar[tuple[Column, ...]]
    #: columns this stage removes from the row once it has run (e.g. decoded frames after tracking)
    consumes: ClassVar[tuple[str, ...]] = ()

    def __call__(self, row: Row) -> Row | Filtered:
        raise NotImplementedError(f"{type(self).__name__} implements neither __call__ nor process")

    def process(self, rows: list[Row]) -> list[Row | Filtered | Exception]:
        """One result per row, in order: its new columns, the rule that filters it, or the exception that failed it."""
        results: list[Row | Filtered | Exception] = []
        for row in rows:
            try:
                results.append(self(row))
            except Exception as error:  # one bad window must never stop the others
                results.append(error)
        return results

    def placeholders(self) -> Row:
        """The declared columns, empty, for rows that failed before this stage."""
        return {column.name: column.placeholder() for column in self.columns}

    def setup(self) -> None:
        """Load what the stage needs once per worker (a model); a Ray actor calls it when it starts."""


@dataclass(frozen=True)
class OneOf:
    """A config field's rule: text that is one of ``choices()``, asked when a value is checked.

    For a choice among a registry's names (``track.tracker``): a tracker registered after the
    config class was defined is accepted all the same. ``magma_data.config`` words it as "one of ...".
    """

    choices: Callable[[], Iterable[str]]

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def _check(self, value: str) -> str:
        if value not in tuple(self.choices()):
            raise ValueError(f"{value!r} is not one of {', '.join(self.choices())}")
        return value


def update_with_file(digest: Any, path: Path) -> None:
    """Feed ``path``'s bytes to ``digest`` in 1 MiB blocks: weight files run to gigabytes."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def seeded_rng(seed: int, sample_id: str, purpose: str) -> np.random.Generator:
    """A generator fixed by the run seed, the sample and what the numbers are for.

    Keying on ``purpose`` keeps draws independent: adding a draw for one purpose never shifts
    the numbers another purpose sees.
    """
    digest = hashlib.sha256(f"{seed}\x00{sample_id}\x00{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))
