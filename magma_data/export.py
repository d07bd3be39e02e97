"""``magma-data export``: a finished output folder in Magma's formats, written through the sink's shard-writer seam.

Each source's committed data shards are read in order and handed, one shard at a time, to a
format's shard writer, as the run hands its shards to the Parquet writer; the commit layer
(``magma_data.sink.OutputFolder``) renames the files into place and keeps a ledger in the export
folder, so an interrupted export resumes. When every shard is in, the writer's ``finish`` writes
what covers them all. A format is an ``ExportFormat`` class under ``@register_export`` (its name,
its words for the CLI, what it refuses, its writer); it holds every pipeline's rows except those a
pipeline names in ``Pipeline.refused_exports``. Formats:

``magma-video-tom``: Magma-Video-ToM's schema in ``datasets``' ``save_to_disk`` layout, loadable
with ``datasets.load_from_disk(DIR/<source>)``, so tools written for the released dataset read ours::

    DIR/<source>/data-00000-of-00004.arrow ..., dataset_info.json, state.json

with ``trace`` the raw tracks (the camera compensation undone) in pixels of frames 512 pixels high
as the release's are (``MAGMA_TRACE_HEIGHT``), ``trace_visibility``, and ``frame_index`` the
window's first frame within ``video_name`` at native fps. Rows made from Magma's own records
(``--input magma_video_tom``) give their record's ``dataset_name``, ``video_name`` and
``frame_index`` back; ours name the video by its id and count frames from its start.

``llava``: ``[{id, image: [...], conversations}]`` JSON and the image files, the layout Magma's
training code and most VLM trainers read, with one image per ``<image>`` of the conversation::

    DIR/<source>.json                  every record of the source, in plan order
    DIR/<source>/images/<sample_id>.jpg, <sample_id>.som.jpg   (paths in the JSON are relative to DIR)
    DIR/<source>/parts/<source>-00000-of-00004.json            one shard's records (what the ledger commits)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import pyarrow.parquet as pq
from datasets import Dataset, DatasetInfo, Features, List, Value

from magma_data.magma_text import turn_images
from magma_data.outputs import SourceOutput, data_shards, finished_sources
from magma_data.pipelines import PIPELINES
from magma_data.sink import OutputFolder, ShardContent, ShardWriter, WrittenShard, is_temporary, temporary_path
from magma_data.stages.camera import raw_tracks
from magma_data.stages.released_traces import MAGMA_TRACE_HEIGHT
from magma_data.stages.track import tracks_from_source

#: Magma's names for the datasets our sources read (its loaders' dataset tags).
MAGMA_DATASET_NAMES = {"ego4d": "ego4d", "ssv2": "sthv2", "epic_kitchens": "epic"}

#: Magma-Video-ToM's fields (the card, issue #66), with the types this export gives them.
MAGMA_VIDEO_TOM_FEATURES = Features({
    "dataset_name": Value("string"), "video_name": Value("string"), "task_string": Value("string"),
    "trace": List(List(List(Value("float32")))), "trace_visibility": List(List(Value("bool"))),
    "frame_index": Value("int64"),
})


class ExportRefused(ValueError):
    """A source that the chosen format cannot hold."""


class ExportWriter(ShardWriter, Protocol):
    def finish(self) -> None:
        """Write what covers every committed shard (an index, a state file), atomically."""
        ...


class ExportFormat(Protocol):
    """One format of ``magma-data export``: its name (``--format``), its words for the CLI, and its writer."""

    name: ClassVar[str]
    help: ClassVar[str]

    def refusal(self, source: SourceOutput) -> str | None:
        """Why this format cannot hold ``source``'s rows, beyond its pipeline's ``refused_exports``; None: it can."""
        return None

    def writer(self, destination: Path, source: SourceOutput) -> ExportWriter:
        """The shard writer of ``source``'s export under ``destination``."""
        ...


#: Every export format, by the name ``--format`` takes.
EXPORT_FORMATS: dict[str, ExportFormat] = {}


def register_export(export_format: type[ExportFormat]) -> type[ExportFormat]:
    """Class decorator: ``export_format`` becomes ``magma-data export --format <its name>``."""
    EXPORT_FORMATS[export_format.name] = export_format()
    return export_format


@dataclass(frozen=True)
class ExportSummary:
    source: str
    shards: int
    shards_skipped: int  # committed by an earlier export into the same folder
    rows: int


def export(output: Path, fmt: str, destination: Path, sources: tuple[str, ...] = (),
           overwrite: bool = False) -> list[ExportSummary]:
    """Export every source of ``output`` (or those named) to ``destination`` in ``fmt``."""
    if fmt not in EXPORT_FORMATS:
        raise ExportRefused(f"unknown format {fmt!r}; formats: {', '.join(EXPORT_FORMATS)}")
    chosen = finished_sources(Path(output), sources)
    for source in chosen:  # refuse before writing anything
        _writer(fmt, Path(destination), source)
    return [_export_source(Path(output), fmt, Path(destination), source, overwrite) for source in chosen]


def _writer(fmt: str, destination: Path, source: SourceOutput) -> ExportWriter:
    """The format's writer for ``source``, or ``ExportRefused`` saying why the format cannot hold its rows."""
    export_format = EXPORT_FORMATS[fmt]
    pipeline = source.config.pipeline
    if pipeline not in PIPELINES:
        raise ExportRefused(f"{source.source} was made by the pipeline {pipeline!r}, which is not registered here")
    refused = PIPELINES[pipeline].refused_exports.get(fmt)
    reason = f"{source.source} holds {pipeline} rows; {refused}" if refused else export_format.refusal(source)
    if reason:
        raise ExportRefused(reason)
    return export_format.writer(destination, source)


def _export_source(output: Path, fmt: str, destination: Path, source: SourceOutput, overwrite: bool) -> ExportSummary:
    writer = _writer(fmt, destination, source)
    shards = data_shards(output, source.source)
    total = source.shards or 0
    # the export of one run's data in one format: the same again resumes, anything else is refused
    digest = hashlib.sha256(f"{fmt}\x00{source.config_hash}\x00{source.plan_digest}".encode()).hexdigest()[:16]
    folder = OutputFolder(destination, source.source, digest, json.dumps({"format": fmt, "from": str(output),
                                                                         "config_hash": source.config_hash}),
                          digest, source.rows, writer, overwrite=overwrite)
    try:
        done = folder.committed_shards()
        for index in range(total):
            if index in done:
                continue
            rows = pq.read_table(shards[index]).to_pylist() if index in shards else []
            content = ShardContent(index, total, [(row["sample_id"], row, None) for row in rows], source.config_hash)
            folder.commit(writer.write(content))
        writer.finish()
    finally:
        folder.close()
    return ExportSummary(source.source, total, len(done), source.rows)


def _fsync_write(path: Path, data: bytes) -> Path:
    """``data`` under ``path``'s temporary name, on disk, for the commit to rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = temporary_path(path)
    with open(partial, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return partial


def _replace(path: Path, data: bytes) -> None:
    os.replace(_fsync_write(path, data), path)


def _own_files(folder: Path, patterns: Iterable[str]) -> Iterator[Path]:
    """Files of ``folder`` matching ``patterns``, with their temporary twins."""
    if folder.is_dir():
        for pattern in patterns:
            yield from folder.glob(pattern)
            yield from folder.glob(temporary_path(Path(pattern)).name)


# -- magma-video-tom -------------------------------------------------------------------------------

def magma_video_tom_record(row: dict) -> dict:
    """One of our rows as a Magma-Video-ToM record."""
    scale = MAGMA_TRACE_HEIGHT / int(row["image_height"])
    trace = raw_tracks(row["tracks"], row["homography"], row["homography_ok"]) * scale
    released = row.get("released_video_name")
    return {
        "dataset_name": row["released_dataset"] if released else MAGMA_DATASET_NAMES.get(row["source"], row["source"]),
        "video_name": released or row["video_uid"],
        "task_string": row["task"],
        "trace": trace.astype(np.float32).tolist(),
        "trace_visibility": np.asarray(row["visibility"], bool).tolist(),
        "frame_index": int(row["released_frame_index"] if released else row["frame_index"]),
    }


@register_export
class MagmaVideoTom(ExportFormat):
    name = "magma-video-tom"
    help = "Magma-Video-ToM's schema (datasets.load_from_disk)"

    def refusal(self, source: SourceOutput) -> str | None:
        if tracks_from_source(source.config.track) and source.config.released.trace_height is None:
            return (f"{source.source} was read with released.trace_height null (native pixels); the rows do not "
                    "record the videos' native size to write them back")
        return None

    def writer(self, destination: Path, source: SourceOutput) -> MagmaVideoTomWriter:
        return MagmaVideoTomWriter(destination, source.source)


class MagmaVideoTomWriter:
    """``save_to_disk`` shards of Magma-Video-ToM records, and the state files ``load_from_disk`` reads."""

    def __init__(self, root: Path, source: str):
        self.folder = Path(root) / source

    def files(self) -> Iterator[Path]:
        yield from _own_files(self.folder, ("data-*-of-*.arrow", "state.json", "dataset_info.json"))

    def write(self, shard: ShardContent) -> WrittenShard:
        final = self.folder / f"data-{shard.index:05d}-of-{shard.total:05d}.arrow"
        records = [magma_video_tom_record(row) for _, row, _ in shard.units]
        if not records:
            return WrittenShard(shard.index, shard.total, ((final, None),), rows=0)
        from datasets.arrow_writer import ArrowWriter

        self.folder.mkdir(parents=True, exist_ok=True)
        partial = temporary_path(final)
        with ArrowWriter(features=MAGMA_VIDEO_TOM_FEATURES, path=str(partial)) as writer:
            writer.write_table(Dataset.from_list(records, features=MAGMA_VIDEO_TOM_FEATURES).data.table)
            writer.finalize()
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        return WrittenShard(shard.index, shard.total, ((final, partial),), rows=len(records))

    def finish(self) -> None:
        shards = sorted(p.name for p in self.folder.glob("data-*-of-*.arrow") if not is_temporary(p))
        digest = hashlib.sha256()
        for name in shards:
            digest.update(f"{name}\x00{(self.folder / name).stat().st_size}\x00".encode())
        state = {"_data_files": [{"filename": name} for name in shards], "_fingerprint": digest.hexdigest()[:16],
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
                 "_output_all_columns": False, "_split": None}
        self.folder.mkdir(parents=True, exist_ok=True)
        DatasetInfo(features=MAGMA_VIDEO_TOM_FEATURES).write_to_directory(str(self.folder))
        _replace(self.folder / "state.json", json.dumps(state, indent=2, sort_keys=True).encode())


# -- llava -----------------------------------------------------------------------------------------

IMAGE_SUFFIXES = {"image": ".jpg", "som_image": ".som.jpg"}


def llava_record(row: dict, image_paths: list[str]) -> dict:
    record = {"id": row["sample_id"], "image": image_paths,
              "conversations": [{"from": turn["from"], "value": turn["value"]} for turn in row["conversations"]]}
    if row.get("action_token_ids") is not None:  # robot rows: the ids the <action> placeholders stand for
        record["action_token_ids"] = [int(i) for i in row["action_token_ids"]]
    return record


@register_export
class Llava(ExportFormat):
    name = "llava"
    help = "JSON + images"

    def writer(self, destination: Path, source: SourceOutput) -> LlavaWriter:
        return LlavaWriter(destination, source.source)


class LlavaWriter:
    """Per shard: the images its records show and the records as a JSON part; ``finish`` joins the parts."""

    def __init__(self, root: Path, source: str):
        self.root, self.source = Path(root), source
        self.folder = self.root / source

    def files(self) -> Iterator[Path]:
        yield from _own_files(self.folder / "images", ("*.jpg",))
        yield from _own_files(self.folder / "parts", (f"{self.source}-*-of-*.json",))
        yield from _own_files(self.root, (f"{self.source}.json",))

    def write(self, shard: ShardContent) -> WrittenShard:
        files, records = [], []
        for _, row, _ in shard.units:
            paths = []
            for column in turn_images(row["conversations"]):
                image = self.folder / "images" / f"{row['sample_id']}{IMAGE_SUFFIXES[column]}"
                files.append((image, _fsync_write(image, row[column]["bytes"])))
                paths.append(image.relative_to(self.root).as_posix())
            records.append(llava_record(row, paths))
        part = self.folder / "parts" / f"{self.source}-{shard.index:05d}-of-{shard.total:05d}.json"
        files.append((part, _fsync_write(part, json.dumps(records, ensure_ascii=False).encode())))
        return WrittenShard(shard.index, shard.total, tuple(files), rows=len(records))

    def finish(self) -> None:
        records = []
        for part in sorted((self.folder / "parts").glob(f"{self.source}-*-of-*.json")):
            if not is_temporary(part):
                records.extend(json.loads(part.read_text()))
        _replace(self.root / f"{self.source}.json", json.dumps(records, ensure_ascii=False, indent=1).encode())
