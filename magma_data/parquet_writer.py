"""The Parquet format: shards in the Hugging Face layout, the errors and filtered tables, and the dataset card.

Layout of an output folder (the commit layer, ``magma_data.sink``, adds ``.magma/<source>/``)::

    data/<source>/train-00000-of-00004.parquet    rows (one config per source in the card)
    errors/<source>-00000-of-00004.parquet        units that failed: stage, error class, message
    filtered/<source>-00000-of-00004.parquet      units a rule of the recipe dropped, and the rule
    summary.json, README.md                       statistics and the dataset card (``magma_data.card``)

A shard with no unit of a kind has no file of that kind. The Hub's naming and the card's configs:
docs/sources.md §Hugging Face layout.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features

from magma_data.dropped import ERROR, FILTERED, Dropped, record
from magma_data.schema import ERROR_FEATURES, FILTERED_FEATURES, to_arrow_table
from magma_data.sink import ShardContent, SinkConfig, WrittenShard, temporary_path

SHARD_NUMBER = "[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]"
DATA = "data"


def table_folders(root: Path, source: str) -> dict[str, tuple[Path, str]]:
    """Each kind of file (data, error, filtered) of a source: its folder and the glob of its shards' names.

    The glob names the source exactly: ``foo-00000-of-00002.parquet`` is ``foo``'s, never ``foo-bar``'s.
    """
    return {
        DATA: (root / "data" / source, f"train-{SHARD_NUMBER}.parquet"),
        ERROR: (root / "errors", f"{source}-{SHARD_NUMBER}.parquet"),
        FILTERED: (root / "filtered", f"{source}-{SHARD_NUMBER}.parquet"),
    }


def table_files(root: Path, source: str, kind: str) -> list[Path]:
    """The committed shards of one kind of a source in an output folder, in shard order."""
    folder, pattern = table_folders(Path(root), source)[kind]
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


class ParquetShardWriter:
    """Writes a shard's rows, errors and filtered units as Parquet files under temporary names."""

    def __init__(self, root: Path, source: str, features: Features, config: SinkConfig):
        self.root, self.source, self.features, self.config = Path(root), source, features, config
        self.folders = table_folders(self.root, source)

    def path(self, kind: str, index: int, total: int) -> Path:
        folder, _ = self.folders[kind]
        name = "train" if kind == DATA else self.source
        return folder / f"{name}-{index:05d}-of-{total:05d}.parquet"

    def files(self) -> Iterator[Path]:
        for folder, pattern in self.folders.values():
            if folder.is_dir():
                yield from folder.glob(pattern)
                yield from folder.glob(temporary_path(Path(pattern)).name)

    def write(self, shard: ShardContent) -> WrittenShard:
        data = [row for _, row, dropped in shard.units if dropped is None]
        table, unwritable = self._table(data)
        records: dict[str, list[dict]] = {ERROR: [], FILTERED: []}
        position = 0
        for unit_id, row, dropped in shard.units:  # plan order, a row the table refused in its place
            if dropped is None:
                dropped, position = unwritable.get(position), position + 1
                if dropped is None:
                    continue
            records[dropped.kind].append(record({**row, "unit_id": unit_id}, dropped, shard.config_hash))
        tables = {DATA: table if table.num_rows else None,
                  ERROR: to_arrow_table(records[ERROR], ERROR_FEATURES) if records[ERROR] else None,
                  FILTERED: to_arrow_table(records[FILTERED], FILTERED_FEATURES) if records[FILTERED] else None}
        files = []
        for kind, content in tables.items():
            final = self.path(kind, shard.index, shard.total)
            files.append((final, self._write(final, content) if content is not None else None))
        return WrittenShard(
            shard.index, shard.total, tuple(files), rows=table.num_rows,
            error_classes=dict(Counter(r["error_class"] for r in records[ERROR])),
            filter_rules=dict(Counter(r["rule"] for r in records[FILTERED])),
        )

    def _table(self, rows: list[dict]) -> tuple[pa.Table, dict[int, Dropped]]:
        """The shard's Arrow table; a row that does not fit the schema becomes a ``sink`` error instead."""
        try:
            return to_arrow_table(rows, self.features), {}
        except Exception:  # find the culprits row by row; the rest are still written
            good, bad = [], {}
            for position, row in enumerate(rows):
                try:
                    to_arrow_table([row], self.features)
                    good.append(row)
                except Exception as error:
                    bad[position] = Dropped.failure("sink", error)
            return to_arrow_table(good, self.features), bad

    def _write(self, final: Path, table: pa.Table) -> Path:
        """The table's bytes under ``final``'s temporary name, on disk (fsync) for the commit to rename."""
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = temporary_path(final)
        pq.write_table(
            table,
            partial,
            row_group_size=self.config.rows_per_row_group,
            compression="zstd",
            write_page_index=True,
            use_content_defined_chunking=True,
        )
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        return partial
