"""What a run did, per source: from the ledger (what the output folder holds) and from this run's stream."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunSummary:
    source: str
    pipeline: str
    config_hash: str
    windows_planned: int = 0
    rows_written: int = 0
    error_rows: int = 0
    filtered_rows: int = 0  # units a rule of the recipe dropped; they do not make a run fail
    shards: int = 0
    shards_skipped: int = 0  # committed by an earlier run of the same config
    wall_time_s: float = 0.0
    windows_processed: int = 0  # by this run
    error_classes: dict[str, int] = field(default_factory=dict)
    filter_rules: dict[str, int] = field(default_factory=dict)
    tracker: str = ""
    windows_after_oom: int = 0  # tracked in a batch halved after CUDA ran out of memory
    #: windows of Ray tasks whose worker died on every retry, run once more one window a task (the
    #: bound on that extra work: each such window runs alone once); those lost again are WorkerLost errors
    windows_rerun_alone: int = 0

    @property
    def nothing_to_do(self) -> bool:
        """A re-run of a finished job: every shard was already committed."""
        return self.shards_skipped == self.shards and not self.windows_processed

    @property
    def windows_per_s(self) -> float:
        return self.windows_processed / self.wall_time_s if self.wall_time_s else 0.0

    def count_committed(self, ledger: dict[int, dict]) -> None:
        """Rows, error rows and filtered units of every committed shard, this run's and earlier ones'."""
        self.rows_written = sum(shard["rows"] for shard in ledger.values())
        self.error_rows = sum(shard["errors"] for shard in ledger.values())
        self.filtered_rows = sum(shard["filtered"] for shard in ledger.values())
        classes: Counter = Counter()
        rules: Counter = Counter()
        for shard in ledger.values():
            classes.update(shard["error_classes"])
            rules.update(shard["filter_rules"])
        self.error_classes = dict(sorted(classes.items()))
        self.filter_rules = dict(sorted(rules.items()))

    def to_dict(self) -> dict:
        return {**self.__dict__, "windows_per_s": round(self.windows_per_s, 3)}


def write_summary(root: Path, summary: RunSummary) -> None:
    """``summary.json``: one entry per source the output folder holds; this source's is replaced."""
    path = Path(root) / "summary.json"
    existing = json.loads(path.read_text()) if path.exists() else {}
    existing[summary.source] = summary.to_dict()
    path.write_text(json.dumps(existing, indent=2, sort_keys=True))
