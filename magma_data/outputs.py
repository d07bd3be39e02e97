"""An output folder as the commands that read it see it: its sources, how far each got, and what made them.

``magma-data export`` and ``push`` work on finished sources only: every shard the run planned is
in the ledger and no half-written file is left. The ledger (``.magma/<source>/ledger.sqlite``) is
only read; the counts of rows, error rows and filtered units come from it, the
config from ``.magma/<source>/config.json``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from magma_data.config import RunConfig
from magma_data.parquet_writer import DATA, table_files
from magma_data.sink import is_temporary
from magma_data.sources.base import video_file

STATE = ".magma"


class UnfinishedOutput(RuntimeError):
    """An output folder whose run has not committed every shard."""


@dataclass(frozen=True)
class SourceOutput:
    """One source of an output folder, from its ledger and its config."""

    source: str
    config: RunConfig
    config_hash: str
    plan_digest: str  # names the units the run planned (``magma_data.sink.ShardPlan.digest``)
    shards: int | None  # planned shards; None when the ledger has none committed yet
    committed: int
    rows: int = 0
    errors: int = 0
    filtered: int = 0
    error_classes: dict[str, int] = field(default_factory=dict)
    filter_rules: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.shards is not None and self.committed == self.shards

    def video_file(self, video_path: str, roots: Sequence[str | Path] | None = None) -> Path:
        """The file a row's ``video_path`` names: under the folders the run read (its root, or its
        ``--videos``), or under ``roots`` where the videos lie now (another machine)."""
        return video_file(video_path, self.config.video_roots() if roots is None else roots)


def source_outputs(root: Path) -> list[SourceOutput]:
    """Every source the folder holds a ledger for, sorted by name."""
    found = []
    for state in sorted((Path(root) / STATE).glob("*/ledger.sqlite")):
        found.append(_read(state.parent))
    return found


def _read(state: Path) -> SourceOutput:
    db = sqlite3.connect(state / "ledger.sqlite")  # only read; the last connection's close tidies the WAL files
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        shards = db.execute("SELECT num_shards, rows, errors, error_classes, filtered, filter_rules FROM shards").fetchall()
    finally:
        db.close()
    errors: dict[str, int] = {}
    rules: dict[str, int] = {}
    for _, _, _, classes, _, filter_rules in shards:
        for name, count in json.loads(classes).items():
            errors[name] = errors.get(name, 0) + count
        for name, count in json.loads(filter_rules).items():
            rules[name] = rules.get(name, 0) + count
    return SourceOutput(
        source=state.name, config=RunConfig.from_dict(json.loads((state / "config.json").read_text())),
        config_hash=meta.get("config_hash", ""), plan_digest=meta.get("plan_digest", ""), shards=max((row[0] for row in shards), default=None),
        committed=len(shards), rows=sum(row[1] for row in shards), errors=sum(row[2] for row in shards),
        filtered=sum(row[4] for row in shards), error_classes=dict(sorted(errors.items())),
        filter_rules=dict(sorted(rules.items())))


def finished_sources(root: Path, sources: tuple[str, ...] = ()) -> list[SourceOutput]:
    """The folder's sources (or those named), refusing the folder if one of them is unfinished."""
    root = Path(root)
    found = {output.source: output for output in source_outputs(root)}
    if not found:
        raise UnfinishedOutput(f"{root} has no {STATE}/<source>/ledger.sqlite: it is not the --output of a "
                               "magma-data run")
    unknown = [name for name in sources if name not in found]
    if unknown:
        raise UnfinishedOutput(f"{root} holds no source {', '.join(unknown)}; it holds {', '.join(found)}")
    chosen = [found[name] for name in sources] if sources else list(found.values())
    unfinished = [f"{o.source} ({o.committed} of {o.shards if o.shards is not None else '?'} shards committed)"
                  for o in chosen if not o.finished]
    partial = sorted(str(p.relative_to(root)) for p in root.rglob("*") if is_temporary(p) and STATE not in p.parts)
    if unfinished or partial:
        what = "; ".join(filter(None, [", ".join(unfinished), partial and f"half-written files {partial[:5]}"]))
        raise UnfinishedOutput(f"{root} is not finished: {what}; run the same magma-data run command again to "
                               "finish it (it resumes where it stopped)")
    return chosen


def data_shards(root: Path, source: str) -> dict[int, Path]:
    """Shard index -> its data file, for the shards that have rows."""
    return {int(path.name.split("-")[1]): path for path in table_files(root, source, DATA)}
