"""Sink: Parquet shards in Hugging Face layout, the errors table, and the ledger that makes runs resumable.

Every planned unit has a fixed place: unit ``i`` of a source belongs to shard ``i // rows_per_shard``.
A shard is written when all of its units have come back (as rows or as errors), under a temporary
name, then renamed into place; only then does the ledger record it. A crashed run therefore
leaves whole shards or nothing, and the re-run redoes exactly the shards the ledger lacks, so
its output equals an uninterrupted run's, byte for byte (no timestamps inside data files).

Layout of an output folder::

    data/<source>/train-00000-of-00004.parquet    rows (one config per source in the card)
    errors/<source>-00000-of-00004.parquet        what failed, where and why (only when something did)
    .magma/<source>/ledger.sqlite                 committed shards, the run's config hash and plan digest
    .magma/<source>/config.json                   the resolved config of the run
    summary.json, README.md                       statistics and the dataset card
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from magma_data.faults import crash_point
from magma_data.schema import ERROR_FEATURES, to_arrow_table


@dataclass(frozen=True)
class SinkConfig:
    rows_per_shard: int = 256  # windows per shard: ~50-100 MB of Parquet with two JPEGs a row
    rows_per_row_group: int = 32  # small row groups stream well (datasets, duckdb)


class ConfigMismatch(RuntimeError):
    """The output folder holds this source's data from another config, or from another plan."""


def shard_name(index: int, total: int) -> str:
    return f"train-{index:05d}-of-{total:05d}.parquet"


class Ledger:
    """Which shards of a source are committed, in a SQLite file beside the data."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS shards (shard INTEGER PRIMARY KEY, num_shards INTEGER, "
            "units INTEGER, rows INTEGER, errors INTEGER, error_classes TEXT)"
        )
        self.db.commit()

    def get(self, key: str) -> str | None:
        found = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return found[0] if found else None

    def set(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        self.db.commit()

    def committed(self) -> dict[int, dict]:
        rows = self.db.execute("SELECT shard, units, rows, errors, error_classes FROM shards").fetchall()
        return {s: {"units": u, "rows": r, "errors": e, "error_classes": json.loads(c)} for s, u, r, e, c in rows}

    def commit(self, shard: int, num_shards: int, units: int, rows: int, errors: int, error_classes: dict) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?, ?, ?)",
            (shard, num_shards, units, rows, errors, json.dumps(error_classes, sort_keys=True)),
        )
        self.db.commit()

    def close(self) -> None:
        self.db.close()


class OutputFolder:
    """One source's part of an output folder: its ledger, its shards, and the config that made them."""

    def __init__(self, root: Path, source: str, config_hash: str, config_json: str, plan_digest: str,
                 num_units: int, overwrite: bool = False):
        self.root, self.source, self.config_hash = Path(root), source, config_hash
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
        if recorded is None:
            (self.state_dir / "config.json").write_text(config_json)
            self.ledger.set("config_hash", config_hash)
        if planned is None:
            self.ledger.set("plan_digest", plan_digest)
        self.data_dir = self.root / "data" / source
        self.errors_dir = self.root / "errors"
        self._discard_partial_files()
        self.shards_written = 0  # by this process; the crash test hook counts them

    def _clear(self) -> None:
        for path in (self.root / "data" / self.source, self.state_dir):
            shutil.rmtree(path, ignore_errors=True)
        for path in (self.root / "errors").glob(f"{self.source}-*.parquet"):
            path.unlink()

    def _discard_partial_files(self) -> None:
        for folder in (self.data_dir, self.errors_dir):
            if folder.is_dir():
                for path in folder.glob(".*.partial"):
                    path.unlink()

    def committed_shards(self) -> dict[int, dict]:
        return self.ledger.committed()

    def write_shard(self, index: int, total: int, rows: pa.Table | None, errors: list[dict], sink: SinkConfig) -> None:
        """Write one shard's rows and errors atomically, then record it in the ledger.

        Files already in place from a run that died before its ledger commit are replaced; a
        shard with no rows (or no errors) has no file of that kind, and a stale one is removed (a
        dead run may have written a unit as WorkerLost that this run brought back as a row).
        """
        self.shards_written += 1
        num_rows = rows.num_rows if rows is not None else 0
        data_path = self.data_dir / shard_name(index, total)
        errors_path = self.errors_dir / f"{self.source}-{index:05d}-of-{total:05d}.parquet"
        if num_rows:
            self._write(data_path, rows, sink)
        else:
            data_path.unlink(missing_ok=True)
        if errors:
            self._write(errors_path, to_arrow_table(errors, ERROR_FEATURES), sink)
        else:
            errors_path.unlink(missing_ok=True)
        crash_point("before_ledger", self.shards_written)
        classes = Counter(error["error_class"] for error in errors)
        self.ledger.commit(index, total, num_rows + len(errors), num_rows, len(errors), dict(classes))
        crash_point("after_shard", self.shards_written)

    def _write(self, path: Path, table: pa.Table, sink: SinkConfig) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        pq.write_table(
            table,
            partial,
            row_group_size=sink.rows_per_row_group,
            compression="zstd",
            write_page_index=True,
            use_content_defined_chunking=True,
        )
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        crash_point("during_write", self.shards_written)
        os.replace(partial, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def close(self) -> None:
        self.ledger.close()


def write_dataset_card(root: Path, pipeline: str) -> None:
    """README.md with one config per source folder (and a default over all), so both
    ``load_dataset(root)`` and ``load_dataset(root, "<source>")`` work."""
    sources = sorted(p.name for p in (root / "data").iterdir() if p.is_dir() and any(p.glob("train-*.parquet")))
    lines = ["---", "configs:"]
    lines += ["- config_name: default", "  default: true", "  data_files:", "  - split: train", "    path: data/*/train-*"]
    for source in sources:
        lines += [f"- config_name: {source}", "  data_files:", "  - split: train", f"    path: data/{source}/train-*"]
    lines += ["tags:", "- set-of-mark", "- trace-of-mark", "- magma", "---", ""]
    lines += [
        f"# SoM/ToM windows made by magma-data ({pipeline})",
        "",
        "One row per window: the first frame (`image`), the frame with numbered marks (`som_image`), point",
        "tracks after camera-motion removal, homographies and their quality, marks, Trace-of-Mark targets on",
        "the 256x256 grid, and Magma conversation turns (`conversations`). Inputs that could not become rows",
        "are listed with stage, error class and message under `errors/`.",
        "",
        "Sources: " + (", ".join(f"`{s}`" for s in sources) or "none yet") + ".",
        "",
    ]
    (root / "README.md").write_text("\n".join(lines))
