"""Where training and eval read rows: one reader class per data layout, behind one protocol.

A reader reads its rows in place, a block at a time. A block is the unit of I/O: a Parquet row
group of a magma-data shard (32 rows, as the sink writes them), or 32 rows of a LLaVA JSON file.
Opening a reader lists its files and reads nothing else; a shard's footer (its blocks' row counts)
is read when the order first reaches the shard (``order.py``), a block's unit column (video_uid)
when a row of the block is first drawn, and the block's other columns only when one of its rows
belongs to the split. Nothing is copied: no cache, no index file, no Arrow copy.

The split holds out whole units (a hash of ``video_uid``; of the image path for LLaVA rows), so no
window of a validation video is ever trained on, and the split is the same in every run and
process.

To add a layout: a class with the ``Reader`` methods, and its line in ``open_data``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from magma_data.config import RunConfig
from magma_data.outputs import STATE
from magma_data.parquet_writer import DATA, table_files
from magma_data.pipelines import load_pipeline
from magma_data.stages.base import StageError

from .samples import BadRow, decode_image
from .settings import Split

if TYPE_CHECKING:
    from PIL import Image

    from .samples import SampleMaker

#: Columns a training sample reads from a magma-data row (``--redraw-marks`` reads them all).
SAMPLE_COLUMNS = ("sample_id", "source", "conversations", "image", "som_image", "action_normalized")
#: What the split holds out whole in a magma-data folder: every window of one video goes one way.
UNIT_COLUMN = "video_uid"
#: A LLaVA file's rows per block and per shard (the magma-data sink's own defaults).
LLAVA_BLOCK_ROWS = 32
LLAVA_SHARD_ROWS = 256


@dataclass(frozen=True)
class DataSpec:
    """One ``--data`` entry: a magma-data output folder or a LLaVA JSON file, and its weight."""

    path: Path
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        path, _, weight = text.rpartition(":")
        if path and _is_number(weight):
            if float(weight) <= 0:
                raise ValueError(f"--data {text}: the weight must be positive")
            return cls(Path(path), float(weight))
        return cls(Path(text))


@dataclass(frozen=True)
class SplitRule:
    """Which rows a split holds: whole units go to validation, by a hash of the unit."""

    split: Split
    fraction: float

    def keeps(self, units: Sequence[str]) -> np.ndarray:
        """[len(units)] bool: the rows of the split."""
        if self.split == "all":
            return np.ones(len(units), bool)
        unique, inverse = np.unique(np.asarray(units, dtype=object).astype(str), return_inverse=True)
        held = np.array([held_out(unit, self.fraction) for unit in unique], bool)[inverse]
        return held if self.split == "validation" else ~held


@functools.lru_cache(maxsize=1 << 16)
def held_out(unit: str, fraction: float) -> bool:
    """The same answer in every run and process: a hash of the unit, not a random draw."""
    digest = hashlib.sha256(f"validation\x00{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


class Reader(Protocol):
    """One data layout, read in place: its shards, their blocks, and how its rows become samples."""

    name: str
    weight: float

    def shard_count(self) -> int:
        """Shards (the order's unit of shuffling) the reader holds; known without reading any."""

    def block_rows(self, shard: int) -> list[int]:
        """Rows of each block of the shard (a Parquet footer)."""

    def units(self, shard: int, block: int) -> list[str]:
        """Each row's unit, the key of the split (the block's small id column)."""

    def shard_units(self, shard: int) -> list[str]:
        """The units of every row of the shard, in one read (counting the split)."""

    def rows(self, shard: int, block: int, indices: np.ndarray, columns: Sequence[str] | None) -> list[dict[str, Any]]:
        """The block's rows at ``indices``, with ``columns`` (None: all)."""

    def content(self, maker: SampleMaker, row: dict[str, Any], epoch: int
                ) -> tuple[list[dict], list[Image.Image], int | None]:
        """The row's turns, its images and their crop count, by the branch of Magma's loader the layout follows
        (``epoch``: the SoM / ToM drop's draw)."""

    def redraw(self, row: dict[str, Any], seed: int, epoch: int) -> dict[str, Any]:
        """The row with new marks (``--redraw-marks``), or as it is where the layout has none."""

    def check_redraw(self) -> None:
        """Raise, before training, where ``--redraw-marks`` cannot work on these rows."""


class MagmaShards:
    """A source folder of a magma-data output: its shards as ``parquet_writer.table_files`` lists them.

    Files are opened on demand (a few kept open); each shard's block sizes are kept once read.
    """

    OPEN_FILES = 8

    def __init__(self, name: str, files: Sequence[Path], weight: float = 1.0, run_config: RunConfig | None = None):
        self.name, self.files, self.weight, self.run_config = name, list(files), weight, run_config
        self._blocks: dict[int, list[int]] = {}
        self._open: OrderedDict[int, pq.ParquetFile] = OrderedDict()
        self._schema: pa.Schema | None = None

    @classmethod
    def open(cls, spec: DataSpec) -> list[MagmaShards]:
        """``<folder>/data/<source>/``: one reader per source; the run config from ``.magma/<source>/``."""
        data = spec.path / DATA
        names = sorted(folder.name for folder in data.iterdir() if folder.is_dir()) if data.is_dir() else []
        shards = {name: files for name in names if (files := table_files(spec.path, name, DATA))}
        if not shards:
            raise FileNotFoundError(
                f"--data {spec.path}: no data/<source>/*.parquet in it; pass the --output folder of `magma-data run`"
            )
        readers = []
        for name, files in shards.items():
            config_file = spec.path / STATE / name / "config.json"
            config = RunConfig.from_dict(json.loads(config_file.read_text())) if config_file.is_file() else None
            readers.append(cls(name, files, spec.weight, config))
        return readers

    def shard_count(self) -> int:
        return len(self.files)

    def block_rows(self, shard: int) -> list[int]:
        if shard not in self._blocks:
            metadata = self._file(shard).metadata
            self._blocks[shard] = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        return self._blocks[shard]

    def units(self, shard: int, block: int) -> list[str]:
        return self._file(shard).read_row_group(block, columns=[UNIT_COLUMN]).column(0).to_pylist()

    def shard_units(self, shard: int) -> list[str]:
        return self._file(shard).read(columns=[UNIT_COLUMN]).column(0).to_pylist()

    def rows(self, shard: int, block: int, indices: np.ndarray, columns: Sequence[str] | None) -> list[dict[str, Any]]:
        file = self._file(shard)
        names = None if columns is None else [name for name in columns if name in file.schema_arrow.names]
        return file.read_row_group(block, columns=names).take(pa.array(indices, pa.int64())).to_pylist()

    def content(self, maker: SampleMaker, row: dict[str, Any], epoch: int):
        return maker.magma_content(row, epoch)

    def check_redraw(self) -> None:
        if self.run_config is None:
            raise ValueError(
                f"--redraw-marks needs the config of the run that wrote {self.name} (.magma/{self.name}/config.json "
                "in its output folder); pass the whole output folder of `magma-data run` as --data"
            )

    def redraw(self, row: dict[str, Any], seed: int, epoch: int) -> dict[str, Any]:
        """The row with marks, ``som_image``, ToM targets and turns drawn again by the pipeline's stages.

        The marks stage is seeded from (run seed, epoch) and keys its draws on the sample id, so a
        sample gets new marks every epoch and the same marks in every run, as Magma draws new marks
        each time it loads a sample. ``image`` stays as stored, and so does the marked frame it is
        (``frame_pos``: the row keeps that frame's pixels only). The stages take NumPy arrays, as the
        pipeline hands them: the shards' fixed-size list columns are.
        """
        stage_seed = int.from_bytes(hashlib.sha256(f"redraw\x00{seed}\x00{epoch}".encode()).digest()[:4], "little")
        stages = load_pipeline(self.run_config.pipeline).redraw_stages(self.run_config, stage_seed)
        redrawn = dict(row, marked_frame=np.asarray(decode_image(row["image"])))  # the row's frame_pos stays
        redrawn.update({name: np.asarray(row[name]) for name in self.array_columns() if name in row})
        try:
            for stage in stages:  # robot rows: the action turn goes first again
                redrawn.update(stage(redrawn))
        except StageError as error:
            raise BadRow("marks cannot be redrawn", str(error)) from error
        del redrawn["marked_frame"]
        redrawn["image"] = row["image"]
        return redrawn

    def array_columns(self) -> list[str]:
        """Columns stored as fixed-shape arrays (tracks, visibility, homographies, actions)."""
        if self._schema is None:
            self._schema = self._file(0).schema_arrow
        return [field.name for field in self._schema if pa.types.is_fixed_size_list(field.type)]

    def _file(self, shard: int) -> pq.ParquetFile:
        if shard in self._open:
            self._open.move_to_end(shard)
        else:
            self._open[shard] = pq.ParquetFile(self.files[shard])
            if len(self._open) > self.OPEN_FILES:
                self._open.popitem(last=False)[1].close()
        return self._open[shard]

    def __getstate__(self) -> dict[str, Any]:
        """Loader workers get the reader without its open files."""
        return {**self.__dict__, "_open": OrderedDict()}


class LlavaJson:
    """A LLaVA-format JSON file (Magma-820K's layout: ``id``, ``image``, ``conversations``), images
    relative to its folder. Held in memory, as Magma's own loader holds it; ``.jsonl`` too."""

    def __init__(self, path: Path, weight: float = 1.0):
        self.name, self.weight, self.image_folder = path.stem, weight, path.parent
        text = path.read_text()
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
        if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
            raise ValueError(f"--data {path}: a LLaVA file is a list of objects (id, image, conversations)")
        if not any("conversations" in record for record in records):
            found = sorted({key for record in records for key in record})
            raise ValueError(f"--data {path}: LLaVA rows need 'conversations' (and 'image', 'id'); found {found}")
        self.records = records

    def shard_count(self) -> int:
        return math.ceil(len(self.records) / LLAVA_SHARD_ROWS)

    def block_rows(self, shard: int) -> list[int]:
        rows = min(LLAVA_SHARD_ROWS, len(self.records) - shard * LLAVA_SHARD_ROWS)
        return [min(LLAVA_BLOCK_ROWS, rows - start) for start in range(0, rows, LLAVA_BLOCK_ROWS)]

    def units(self, shard: int, block: int) -> list[str]:
        """The image (a multi-image row goes with its first), else the id."""
        units = []
        for record in self._block(shard, block):
            image = record.get("image")
            image = image[0] if isinstance(image, list) and image else image
            units.append(str(image) if image else str(record.get("id")))
        return units

    def shard_units(self, shard: int) -> list[str]:
        return [unit for block in range(len(self.block_rows(shard))) for unit in self.units(shard, block)]

    def rows(self, shard: int, block: int, indices: np.ndarray, columns: Sequence[str] | None) -> list[dict[str, Any]]:
        records = self._block(shard, block)
        return [records[int(index)] for index in indices]

    def content(self, maker: SampleMaker, row: dict[str, Any], epoch: int):
        return maker.llava_content(row, self.image_folder)

    def check_redraw(self) -> None:
        """LLaVA rows have no traces: they train as they are."""

    def redraw(self, row: dict[str, Any], seed: int, epoch: int) -> dict[str, Any]:
        return row

    def _block(self, shard: int, block: int) -> list[dict[str, Any]]:
        start = shard * LLAVA_SHARD_ROWS + block * LLAVA_BLOCK_ROWS
        return self.records[start : start + LLAVA_BLOCK_ROWS]


def open_data(specs: Sequence[DataSpec]) -> list[Reader]:
    """A reader for every source of every ``--data`` entry, refused before training when a path is not data."""
    readers: list[Reader] = []
    for spec in specs:
        if spec.path.is_file() and spec.path.suffix in (".json", ".jsonl"):
            readers.append(LlavaJson(spec.path, spec.weight))
        elif spec.path.is_dir():
            readers += MagmaShards.open(spec)
        else:
            raise FileNotFoundError(f"--data {spec.path}: neither a magma-data output folder nor a LLaVA .json file")
    names = [reader.name for reader in readers]
    if len(set(names)) != len(names):
        raise ValueError(f"two --data entries hold a source of the same name: {sorted(names)}; results are per source")
    return readers


def split_rows(reader: Reader, rule: SplitRule, limit: int | None = None, rank: int = 0, world_size: int = 1,
               columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """The first ``limit`` rows of the split in stored order (eval): every process reads the unit
    columns, and the rest of the blocks ``b`` with ``b % world_size == rank`` only."""
    taken, block_number = 0, 0
    for shard in range(reader.shard_count()):
        for block in range(len(reader.block_rows(shard))):
            kept = np.flatnonzero(rule.keeps(reader.units(shard, block)))
            if limit is not None:
                kept = kept[: limit - taken]
            taken += len(kept)
            if len(kept) and block_number % world_size == rank:
                yield from reader.rows(shard, block, kept, columns)
            block_number += 1
            if limit is not None and taken >= limit:
                return


def count_rows(reader: Reader, rule: SplitRule, rank: int = 0, world_size: int = 1) -> int:
    """Rows of the split in the shards ``s`` with ``s % world_size == rank``: unit columns only."""
    shards = range(rank, reader.shard_count(), world_size)
    return sum(int(rule.keeps(reader.shard_units(shard)).sum()) for shard in shards)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
