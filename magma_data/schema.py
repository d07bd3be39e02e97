"""The shard schema: Hugging Face ``Features`` first, the Arrow schema derived from them.

Declaring features in the Parquet metadata lets ``datasets`` type every column without guessing
(``image`` and ``som_image`` load as PIL images). Arrays are plain fixed-size lists, never Ray's
tensor extension type, which breaks ``datasets.load_dataset`` in any process that imported
``ray.data``.
"""

from __future__ import annotations

import pyarrow as pa
from datasets import Features, Image, List, Value


def _fixed(feature, *shape: int):
    """A nested fixed-size list with the given shape, outermost dimension first."""
    for size in reversed(shape):
        feature = List(feature, length=size)
    return feature


def video_tom_features(window_len: int, num_points: int) -> Features:
    """One row per window: identity, text, images, traces after compensation, camera QC, marks, ToM."""
    t, n = window_len, num_points
    return Features(
        {
            "sample_id": Value("string"),
            "source": Value("string"),
            "video_uid": Value("string"),
            "clip_id": Value("string"),
            "video_path": Value("string"),
            "frame_index": Value("int64"),
            "frame_indices": _fixed(Value("int64"), t),
            "fps": Value("float32"),
            "window_fps": Value("float32"),
            "window_len": Value("int32"),
            "config_hash": Value("string"),
            "task": Value("string"),
            "conversations": List({"from": Value("string"), "value": Value("string")}),
            "image": Image(),
            "som_image": Image(),
            "image_width": Value("int32"),
            "image_height": Value("int32"),
            "tracker": Value("string"),
            "tracks": _fixed(Value("float32"), t, n, 2),
            "visibility": _fixed(Value("bool"), t, n),
            "homography": _fixed(Value("float32"), t, 3, 3),
            "homography_ok": _fixed(Value("bool"), t),
            "inlier_ratio": _fixed(Value("float32"), t),
            "reprojection_error": _fixed(Value("float32"), t),
            "camera_motion": Value("bool"),
            "moving_fraction": Value("float32"),
            "camera_status": Value("string"),
            "mark_ids": List(Value("int32")),
            "mark_xy": List(_fixed(Value("float32"), 2)),
            "mark_positive": List(Value("bool")),
            "mark_track_index": List(Value("int32")),
            "num_visible_points": Value("int32"),
            "num_moving_points": Value("int32"),
            "tom_mark_ids": List(Value("int32")),
            "tom_targets": List(List(_fixed(Value("int32"), 2))),
            "tom_steps": Value("int32"),
        }
    )


ERROR_FEATURES = Features(
    {
        "unit_id": Value("string"),
        "sample_id": Value("string"),
        "source": Value("string"),
        "clip_id": Value("string"),
        "video_path": Value("string"),
        "frame_index": Value("int64"),
        "stage": Value("string"),
        "error_class": Value("string"),
        "message": Value("string"),
        "attempt": Value("int32"),
        "config_hash": Value("string"),
    }
)


def to_arrow_table(rows: list[dict], features: Features) -> pa.Table:
    """Rows of NumPy arrays and scalars -> an Arrow table with exactly the features' schema."""
    schema = features.arrow_schema
    columns = []
    for field in schema:
        values = [_plain(row[field.name]) for row in rows]
        if isinstance(features[field.name], Image):
            values = [{"bytes": v, "path": None} for v in values]
        columns.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _plain(value):
    """NumPy values -> Python values pyarrow accepts for nested list types."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
