"""Sink: gather each shard's units, commit its files atomically, and keep the ledger that makes runs resumable.

This layer knows nothing of file formats; a shard writer (``magma_data.parquet_writer``) turns a
shard's units into files under temporary names, and ``OutputFolder.commit`` renames them into
place and then records the shard in the ledger. The writer needs only the shard's content, so it
can run anywhere that reaches the output folder (a Ray task); the commit stays with the driver.

Every planned unit has a fixed place: unit ``i`` of a source belongs to shard ``i // rows_per_shard``.
A shard is written when all of its units have come back (as rows, errors or filtered units). A
crashed run therefore leaves whole shards or nothing, and the re-run redoes exactly the shards the
ledger lacks, so its output equals an uninterrupted run's, byte for byte (no timestamps inside
data files). ``.magma/<source>/`` holds the ledger and the resolved config of the latest run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

from annotated_types import Ge

from magma_data.dropped import NOT_DROPPED, Dropped
from magma_data.faults import crash_point
from magma_data.stages.base import Column

log = logging.getLogger(__name__)

#: The sink's own column: every row names the config that made it.
CONFIG_HASH = Column("config_hash", "string", doc="hash of the run's config (.magma/<source>/config.json)",
                     group="identity")


@dataclass(frozen=True)
class SinkConfig:
    rows_per_shard: Annotated[int, Ge(1)] = 256  # windows per shard: ~50-100 MB of Parquet with two JPEGs a row
    rows_per_row_group: Annotated[int, Ge(1)] = 32  # small row groups stream well (datasets, duckdb)


class ConfigMismatch(RuntimeError):
    """The output folder holds this source's data from another config, or from another plan."""


def temporary_path(final: Path) -> Path:
    """Where a writer puts a file's bytes until the commit renames them to ``final``."""
    return final.with_name(f".{final.name}.partial")


def is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".partial")


@dataclass(frozen=True)
class ShardContent:
    """One shard's units in plan order: unit id, row, and why the unit is not data (None: it is).

    A data row holds exactly the shard's columns; a dropped unit's row holds what is known of it
    (``magma_data.dropped.UNIT_KEYS``).
    """

    index: int
    total: int
    units: list[tuple[str, dict[str, Any], Dropped | None]]
    config_hash: str


@dataclass(frozen=True)
class WrittenShard:
    """A shard on disk under temporary names, ready to commit, and what it holds.

    ``files`` pairs each final path with the temporary file holding its bytes, or with None when
    the shard has no such file (a stale one from a dead run is removed). A dropped unit the
    format could not write is an error here, so the counts are the shard's, not the plan's.
    """

    index: int
    total: int
    files: tuple[tuple[Path, Path | None], ...]
    rows: int
    error_classes: dict[str, int] = field(default_factory=dict)
    filter_rules: dict[str, int] = field(default_factory=dict)


class ShardWriter(Protocol):
    """One output format: the files of a shard, and which files of the output folder are its own."""

    def write(self, shard: ShardContent) -> WrittenShard: ...

    def files(self) -> Iterable[Path]:
        """Every file this format has in the output folder for the source (committed or temporary)."""
        ...


class Ledger:
    """Which shards of a source are committed, in a SQLite file beside the data."""

    COLUMNS = {"shard": "INTEGER PRIMARY KEY", "num_shards": "INTEGER", "units": "INTEGER", "rows": "INTEGER",
               "errors": "INTEGER", "error_classes": "TEXT", "filtered": "INTEGER NOT NULL DEFAULT 0",
               "filter_rules": "TEXT NOT NULL DEFAULT '{}'"}

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        columns = ", ".join(f"{name} {kind}" for name, kind in self.COLUMNS.items())
        self.db.execute(f"CREATE TABLE IF NOT EXISTS shards ({columns})")
        existing = {row[1] for row in self.db.execute("PRAGMA table_info(shards)")}
        for name, kind in self.COLUMNS.items():  # a ledger from before filtered units had their own table
            if name not in existing:
                self.db.execute(f"ALTER TABLE shards ADD COLUMN {name} {kind}")
        self.db.commit()

    def get(self, key: str) -> str | None:
        found = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return found[0] if found else None

    def set(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        self.db.commit()

    def committed(self) -> dict[int, dict]:
        rows = self.db.execute(
            "SELECT shard, units, rows, errors, error_classes, filtered, filter_rules FROM shards").fetchall()
        return {s: {"units": u, "rows": r, "errors": e, "error_classes": json.loads(c), "filtered": f,
                    "filter_rules": json.loads(fr)} for s, u, r, e, c, f, fr in rows}

    def commit(self, shard: WrittenShard) -> None:
        errors, filtered = sum(shard.error_classes.values()), sum(shard.filter_rules.values())
        self.db.execute(
            "INSERT OR REPLACE INTO shards (shard, num_shards, units, rows, errors, error_classes, filtered, "
            "filter_rules) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (shard.index, shard.total, shard.rows + errors + filtered, shard.rows, errors,
             json.dumps(shard.error_classes, sort_keys=True), filtered, json.dumps(shard.filter_rules, sort_keys=True)),
        )
        self.db.commit()

    def close(self) -> None:
        self.db.close()


class OutputFolder:
    """One source's part of an output folder: its ledger, its committed shards, and the config that made them."""

    def __init__(self, root: Path, source: str, config_hash: str, config_json: str, plan_digest: str,
                 num_units: int, writer: ShardWriter, overwrite: bool = False):
        self.root, self.source, self.config_hash, self.writer = Path(root), source, config_hash, writer
        self.state_dir = self.root / ".magma" / source
        if overwrite:
            self._clear()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.state_dir / "ledger.sqlite")
        recorded = self.ledger.get("config_hash")
        if recorded is not None and recorded != config_hash:
            raise ConfigMismatch(
                f"{self.root} already holds {source!r} data made with config {recorded}, and this run's "
                f"config is {config_hash}; use another --output, the same options as before, or --overwrite "
                "to start over"
            )
        planned = self.ledger.get("plan_digest")
        if planned is not None and planned != plan_digest:
            raise ConfigMismatch(
                f"the input of {source!r} changed since {self.root} was started: the same config now plans "
                f"{num_units} units, and not the units the committed shards were cut from (files added, removed "
                "or renamed under --root, or a video that could not be probed then or now); use another --output, "
                "or --overwrite to start over"
            )
        # The latest run's config, of the same hash: where its input lay this time (root, videos),
        # in the current format (an older config.json is rewritten, migrated).
        config_file = self.state_dir / "config.json"
        temporary_path(config_file).write_text(config_json)
        os.replace(temporary_path(config_file), config_file)
        if recorded is None:
            self.ledger.set("config_hash", config_hash)
        if planned is None:
            self.ledger.set("plan_digest", plan_digest)
        for path in list(self.writer.files()):  # a dead run's half-written files
            if is_temporary(path):
                path.unlink()
        self.shards_committed = 0  # by this process; the crash test hook counts them

    def _clear(self) -> None:
        """Every shard file, the ledger and the config. The state planning keeps in folders of its own
        beside them (shot cuts) is the planner's: it emptied them itself before this run planned
        (``PlanContext.state``), and what it wrote since is this run's."""
        for path in list(self.writer.files()):
            path.unlink()
        if self.state_dir.is_dir():
            for path in self.state_dir.iterdir():
                if not path.is_dir():
                    path.unlink()

    def committed_shards(self) -> dict[int, dict]:
        return self.ledger.committed()

    def commit(self, shard: WrittenShard) -> None:
        """Rename a written shard's files into place, then record the shard in the ledger.

        Files already in place from a run that died before its ledger commit are replaced; a kind
        of file the shard does not have is removed (a dead run may have written a unit as
        WorkerLost that this run brought back as a row).
        """
        self.shards_committed += 1
        crash_point("during_write", self.shards_committed)
        for final, temporary in shard.files:
            if temporary is None:
                final.unlink(missing_ok=True)
                continue
            os.replace(temporary, final)
            directory = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        crash_point("before_ledger", self.shards_committed)
        self.ledger.commit(shard)
        crash_point("after_shard", self.shards_committed)

    def close(self) -> None:
        self.ledger.close()


class ShardPlan:
    """Which shard each planned unit belongs to, and the digest that names the plan."""

    def __init__(self, units: list[dict], rows_per_shard: int):
        self.units, self.rows_per_shard = units, rows_per_shard
        self.shard_of = {unit["unit_id"]: i // rows_per_shard for i, unit in enumerate(units)}
        if len(self.shard_of) != len(units):
            raise RuntimeError("two planned units share an id; the source yields duplicate clip ids")
        self.total = -(-len(units) // rows_per_shard)

    @property
    def digest(self) -> str:
        """Names the plan: which units, in which order, cut into which shards."""
        digest = hashlib.sha256(str(self.rows_per_shard).encode())
        for unit in self.units:
            digest.update(b"\x00" + unit["unit_id"].encode())
        return digest.hexdigest()[:16]

    def todo(self, committed: Iterable[int]) -> list[dict]:
        """The units of the shards not committed yet."""
        done = set(committed)
        return [unit for unit in self.units if self.shard_of[unit["unit_id"]] not in done]


class ShardCollector:
    """Gathers the units of each shard as they stream in, and writes and commits a shard once it is whole.

    Each planned unit is taken once: a second copy (Ray re-running a task whose output was
    already delivered) is dropped, so no row is written twice. A finished row loses the columns
    that only travel between stages (``transient``: the unit id, the drop columns, decoded frames)
    and gains the config hash; anything else it holds goes to the writer, which refuses columns the
    schema does not declare.
    """

    def __init__(self, output: OutputFolder, plan: ShardPlan, todo: list[dict], transient: Iterable[str]):
        self.output, self.plan = output, plan
        self.transient = {*transient, *NOT_DROPPED}
        self.pending = {unit["unit_id"]: unit for unit in todo}
        self.expected = Counter(plan.shard_of[unit_id] for unit_id in self.pending)
        self.received: dict[int, list[dict]] = defaultdict(list)
        self.order = {unit: i for i, unit in enumerate(plan.shard_of)}
        self.arrived = 0

    def add(self, row: dict) -> None:
        unit = self.pending.pop(row["unit_id"], None)
        if unit is None:
            log.warning("dropped a second copy of unit %s", row["unit_id"])
            return
        self.arrived += 1
        crash_point("during_stream", self.arrived)
        shard = self.plan.shard_of[row["unit_id"]]
        self.received[shard].append(row)
        if len(self.received[shard]) == self.expected[shard]:
            self._commit(shard)

    def add_lost(self, lost: Dropped) -> int:
        """Turn the units that never came back (Ray gave up on their task) into ``lost`` drops."""
        units = list(self.pending.values())
        for unit in units:
            self.add({**unit, **lost.columns()})
        return len(units)

    def _commit(self, shard: int) -> None:
        rows = sorted(self.received.pop(shard), key=lambda row: self.order[row["unit_id"]])
        units = []
        for row in rows:
            dropped = Dropped.of_row(row)
            if dropped is None:
                data = {key: value for key, value in row.items() if key not in self.transient}
                units.append((row["unit_id"], {**data, CONFIG_HASH.name: self.output.config_hash}, None))
            else:
                units.append((row["unit_id"], row, dropped))
        content = ShardContent(shard, self.plan.total, units, self.output.config_hash)
        self.output.commit(self.output.writer.write(content))
