"""Filtered: a unit a rule of the recipe drops on purpose, with the rule's name and the figure it judged.

The curation rules (a shot too short for a window, a window whose frames do not match its text,
a window that barely moves) decide per unit; ``Filtered`` is what such a decision says. In the
stream a unit's drop travels as its row's ``drop_*`` columns (``magma_data.dropped``), so a stage
that filters a window returns ``Filtered.columns(stage)`` in place of its own columns: the stage
runner (``magma_data.execution.apply_stage``) takes them like any result, gives the row the
stage's placeholders, lets no later stage touch it, and the sink writes it to ``filtered/``. The
filtered table has no column for the figure yet, so the message states it, in one format.
"""

from __future__ import annotations

from dataclasses import dataclass

from magma_data.dropped import FILTERED, Dropped

from .base import Row


@dataclass(frozen=True)
class Filtered:
    """``rule`` dropped the unit: its name (the filtered table's ``rule``), the figure it judged
    (``value``, also in the message) and why, in words the user can act on."""

    rule: str
    value: float
    message: str

    def dropped(self, stage: str) -> Dropped:
        return Dropped(FILTERED, stage, self.rule, f"{self.message} [value {self.value:.6g}]")

    def columns(self, stage: str) -> Row:
        """The ``drop_*`` columns a stage returns for a window this rule drops."""
        return self.dropped(stage).columns()
