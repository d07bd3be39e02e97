"""The shard schema, derived from the columns the plan and the stages declare; and the tables of dropped units.

Hugging Face ``Features`` come first and the Arrow schema from them: declaring features in the
Parquet metadata lets ``datasets`` type every column without guessing (``image`` and
``som_image`` load as PIL images). Arrays are plain fixed-size lists, never Ray's tensor
extension type, which breaks ``datasets.load_dataset`` in any process that imported ``ray.data``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pyarrow as pa
from datasets import Features, Image, List, Value

from magma_data.stages.base import Column

#: The order of column groups in a shard and in the docs; within a group, the pipeline's order.
GROUPS = ("identity", "text", "images", "image size", "traces", "camera", "quality", "marks", "ToM", "robot")

_UNIT = {
    "unit_id": Value("string"),
    "sample_id": Value("string"),
    "source": Value("string"),
    "clip_id": Value("string"),
    "video_path": Value("string"),
    "frame_index": Value("int64"),
}
#: A unit that failed: where, why, after how many tries (``magma_data.dropped.record``).
ERROR_FEATURES = Features({**_UNIT, "stage": Value("string"), "error_class": Value("string"),
                           "message": Value("string"), "attempt": Value("int32"), "config_hash": Value("string")})
#: A unit a rule of the recipe dropped on purpose: the rule, the figure it judged (null where it
#: judged none; files written before the column existed lack it, and read it as null) and why.
FILTERED_FEATURES = Features({**_UNIT, "rule": Value("string"), "value": Value("float64"),
                              "message": Value("string"), "config_hash": Value("string")})


class SchemaMismatch(ValueError):
    """A row whose columns are not the schema's: a stage returned a column it does not declare, or lost one."""


def written_columns(columns: Iterable[Column]) -> list[Column]:
    """The columns a shard holds, each once (a replaced column is one declaration), in ``GROUPS`` order."""
    found: dict[str, Column] = {}
    for column in columns:
        if column.written and found.setdefault(column.name, column) is not column:
            raise ValueError(f"column {column.name!r} is declared twice; a stage that replaces a column must "
                             "reuse the declaration of the stage that adds it")
    unknown = {column.group for column in found.values()} - set(GROUPS)
    if unknown:
        raise ValueError(f"column groups {sorted(unknown)} are not in schema.GROUPS {GROUPS}")
    return sorted(found.values(), key=lambda column: GROUPS.index(column.group))


def feature(column: Column, dims: Mapping[str, int]):
    """The Hugging Face feature of a column; ``dims`` sizes the config-fixed dimensions ("T", "N")."""
    value = {"image": Image(), "turn": {"from": Value("string"), "value": Value("string")}}.get(
        column.dtype) or Value(column.dtype)
    for size in reversed(column.shape):
        fixed = size if isinstance(size, int) else dims.get(size)
        value = List(value, length=fixed) if fixed is not None else List(value)
    return value


def features(columns: Iterable[Column], dims: Mapping[str, int]) -> Features:
    return Features({column.name: feature(column, dims) for column in written_columns(columns)})


def column_table(columns: Iterable[Column]) -> str:
    """The docs' table of written columns: group, name, type, meaning (README, dataset card)."""
    lines = ["| group | column | type | meaning |", "|---|---|---|---|"]
    for column in written_columns(columns):
        lines.append(f"| {column.group} | `{column.name}` | {column.describe_type()} | {column.doc} |")
    return "\n".join(lines)


def to_arrow_table(rows: list[dict], features: Features) -> pa.Table:
    """Rows of NumPy arrays and scalars -> an Arrow table with exactly the features' schema.

    A row with a column the schema lacks, or without one it has, is refused: nothing vanishes.
    """
    for row in rows:
        if row.keys() != features.keys():
            raise SchemaMismatch(
                f"row {row.get('sample_id', '?')} has columns the schema does not declare "
                f"{sorted(row.keys() - features.keys())} and lacks {sorted(features.keys() - row.keys())}; "
                "declare every column a stage returns in its Stage.columns")
    schema = features.arrow_schema
    columns = []
    for field in schema:
        values = [row[field.name] for row in rows]
        if isinstance(features[field.name], Image):
            columns.append(_image_array(values, field.type))
        else:
            columns.append(_array_from_numpy(values, field.type) or pa.array([_plain(v) for v in values], field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _image_array(values: list[bytes], image_type: pa.StructType) -> pa.Array:
    """JPEG bytes -> the ``{bytes, path}`` structs of a Hugging Face ``Image`` column (no path)."""
    return pa.StructArray.from_arrays([pa.array(values, pa.binary()), pa.nulls(len(values), pa.string())],
                                      fields=list(image_type))


def _array_from_numpy(values: list, arrow_type: pa.DataType) -> pa.Array | None:
    """A column of NumPy arrays as one flat buffer wrapped in list types, without a Python value per element.

    The driver writes every row; going through Python lists costs most of its time (benchmarks/sink.py).
    Handles fixed-size lists of a primitive type, inside at most one variable-length list (``tracks``
    [T, N, 2], ``mark_xy`` [K, 2]); None for anything else (ragged lists, structs, scalars), which
    takes the Python path. The Arrow data, and so the Parquet bytes, are the same either way.
    """
    sizes, leaf = [], arrow_type  # outermost first; None: a variable-length list
    while pa.types.is_list(leaf) or pa.types.is_fixed_size_list(leaf):
        sizes.append(leaf.list_size if pa.types.is_fixed_size_list(leaf) else None)
        leaf = leaf.value_type
    if not values or not sizes or None in sizes[1:] or not pa.types.is_primitive(leaf):
        return None
    fixed = tuple(sizes[1:] if sizes[0] is None else sizes)
    if not all(isinstance(v, np.ndarray) and v.ndim == len(sizes) and v.shape[v.ndim - len(fixed):] == fixed
               for v in values):
        return None
    flat = np.concatenate([v.reshape(-1) for v in values]).astype(leaf.to_pandas_dtype(), copy=False)
    array = pa.array(flat, type=leaf)
    for size in reversed(fixed):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    if sizes[0] is None:
        offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int32)
        array = pa.ListArray.from_arrays(pa.array(offsets), array)
    return array.cast(arrow_type)


def _plain(value):
    """NumPy values -> Python values pyarrow accepts for nested list types."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
