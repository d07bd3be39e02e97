"""Reference runs: a few small pipeline runs whose rows the repository keeps, to guard refactorings.

What the code decides is pinned exactly: which files and rows a run writes and in which order,
ids, paths, counts, marks, text, conversations, shapes, integer targets, error and filter rows.
What float arithmetic makes (OpenCV's Lucas-Kanade, resizing and RANSAC, faiss, JPEG coding)
differs in the last bits from one CPU to another, so floats are compared within ``TOLERANCES`` and
images as decoded pixels within ``IMAGE_TOLERANCE``. Byte identity is a promise within one
machine (test_determinism.py, test_resume.py), not across machines.

The runs (``RUNS``): the built-in ``sample`` source; the ``folder`` source on the stand-in clips the
tests render (``media.py``: data rows and a plan error row), and the same tracked with one point
that must stay visible in every frame (windows without marks, which fail in the render stage: error
rows made in the stream); and, where the checkout has the team's real clips beside it
(``../shared/videos``), the folder run on them. Each run's reference is ``tests/reference/<run>.json``
(every table's rows but the images) and ``tests/reference/<run>.images.parquet`` (the JPEGs of its
data rows); ``tests/reference/schemas.json`` holds each pipeline's shard schema.

Re-record only when a change of the rows is intended (a bug fixed, a stage improved), never to
make a failing test pass::

    .venv/bin/python tests/reference_runs.py            # every run (the real-clip ones where present)
    .venv/bin/python tests/reference_runs.py sample     # one run

Before committing the new references: read ``git diff tests/reference/`` (each row is one line a
column, so the diff shows which rows and columns changed), check that every change is one the
commit means to make and no other, look at the images (``magma-data show`` on the outputs the
script leaves, it prints where), and say in the commit message what changed in the rows and why.
"""

from __future__ import annotations

import io
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REFERENCE = Path(__file__).resolve().parent / "reference"
SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"

#: Small, and with the README's worked-example thresholds so that most windows get a ToM turn.
SMALL = {"decode": {"height": 128}, "track": {"tracker": "lk", "grid_size": 4}, "sink": {"rows_per_shard": 2},
         "render": {"jpeg_quality": 60, "speed_threshold": 1}, "marks": {"moving_threshold_px": 0.5}}
#: One window of 20 frames a clip: the 19-frame robot clip is too short, a plan error row.
LONG_WINDOW = {"plan": {"window_len": 20, "window_stride": 20, "max_windows_per_clip": 1}}
#: Magma's own thresholds, and one point that must stay visible: windows without marks, error rows in the stream.
ONE_POINT = {**LONG_WINDOW, "track": {"grid_size": 1}, "render": {"speed_threshold": 2},
             "marks": {"min_visible_fraction": 0.99, "moving_threshold_px": 3}}


@dataclass(frozen=True)
class Run:
    source: str
    clips: str | None  # "stand-ins" (media.py), "shared" (../shared/videos) or None (the source has its own)
    overrides: dict


RUNS = {
    "sample": Run("sample", None, {"plan": {"window_len": 8, "window_stride": 8, "max_windows_per_clip": 1}}),
    "stand-ins": Run("folder", "stand-ins", LONG_WINDOW),
    "stand-ins-one-point": Run("folder", "stand-ins", ONE_POINT),
    "shared": Run("folder", "shared", LONG_WINDOW),
}
#: Each pipeline's shard schema at window 8, grid 3 (oxe_tom's rows need TensorFlow to make, so its
#: schema stands in for its rows): Arrow types and the Hugging Face features, in ``schemas.json``.
SCHEMA_OVERRIDES = {"plan": {"window_len": 8}, "track": {"grid_size": 3}}

#: Float columns: (absolute, relative) tolerance and why. A float column the pipeline writes must be here.
TOLERANCES: dict[str, tuple[float, float, str]] = {
    "fps": (0.0, 0.0, "read from the container"),
    "window_fps": (0.0, 0.0, "read from the container"),
    "tracks": (1e-3, 0.0, "pixels of the working frames"),
    "mark_xy": (1e-3, 0.0, "pixels: a mark's point of its trace"),
    "homography": (1e-6, 1e-4, "entries of a RANSAC fit on the tracks"),
    "inlier_ratio": (1e-6, 0.0, "a share of counted inliers"),
    "reprojection_error": (1e-3, 0.0, "pixels; NaN where not fitted, in the same places"),
    "moving_fraction": (1e-6, 0.0, "a share of counted traces"),
}
#: Images, decoded to RGB: the same size, a mean |difference| under ``mean`` grey levels, and no
#: more than ``share`` of the values off by more than ``far`` levels (a mark drawn elsewhere is).
IMAGE_TOLERANCE = {"mean": 1.0, "far": 32, "share": 0.005}
TABLES = ("data", "errors", "filtered")


def run_config(name: str):
    from magma_data.config import RunConfig

    run = RUNS[name]
    return RunConfig(source=run.source).with_overrides(SMALL).with_overrides(run.overrides)


def make_output(name: str, output: Path, stand_ins: Path | None = None) -> Path:
    """Run ``name`` into ``output``; its clips are ``stand_ins`` (rendered if None) or ../shared/videos."""
    from magma_data.runner import RunOptions, run

    clips = RUNS[name].clips
    if clips == "shared":
        root = SHARED_VIDEOS
    elif clips == "stand-ins":
        if stand_ins is None:
            from media import write_stand_ins

            stand_ins = write_stand_ins(output.parent / "stand-in-videos")
        root = stand_ins
    else:
        root = None
    run(run_config(name), RunOptions(output=output, root=root, num_cpus=2, progress=False))
    return output


def read_tables(output: Path) -> dict[str, Any]:
    """Every Parquet file of a run (relative path -> rows) and each table's rows in file order."""
    files = {path.relative_to(output).as_posix(): pq.read_table(path).to_pylist()
             for path in sorted(output.rglob("*.parquet")) if ".magma" not in path.parts}
    tables = {table: [row for name, rows in files.items() if name.startswith(f"{table}/") for row in rows]
              for table in TABLES}
    for row in tables["data"]:
        for column in image_columns():
            row[column] = row[column]["bytes"]
    return {"files": {name: len(rows) for name, rows in files.items()}, **tables}


def image_columns() -> list[str]:
    return [column.name for column in written_columns() if column.dtype == "image"]


def written_columns():
    from magma_data.pipelines import load_pipeline, shard_columns
    from magma_data.schema import written_columns as written

    config = run_config("sample")
    return written(shard_columns(load_pipeline(config.pipeline), config))


# -- the reference files ------------------------------------------------------------------------

def write_reference(name: str, tables: dict[str, Any], folder: Path = REFERENCE) -> None:
    """``<name>.json`` (one line a column of each row, so a diff shows what changed) and ``<name>.images.parquet``."""
    folder.mkdir(parents=True, exist_ok=True)
    images = image_columns()
    lines = ["{", f'  "files": {json.dumps(tables["files"], sort_keys=True)},']
    for t, table in enumerate(TABLES):
        lines.append(f'  "{table}": [')
        for r, row in enumerate(tables[table]):
            cells = [f"    {json.dumps(key)}: {json.dumps(_plain(value), separators=(',', ':'))}"
                     for key, value in row.items() if key not in images]
            lines.append("   {\n" + ",\n".join(cells) + "\n   }" + ("," if r + 1 < len(tables[table]) else ""))
        lines.append("  ]" + ("," if t + 1 < len(TABLES) else ""))
    lines.append("}")
    (folder / f"{name}.json").write_text("\n".join(lines) + "\n")
    data = tables["data"]
    columns = {"sample_id": pa.array([row["sample_id"] for row in data], pa.string()),
               **{column: pa.array([row[column] for row in data], pa.binary()) for column in images}}
    pq.write_table(pa.table(columns), folder / f"{name}.images.parquet", compression="zstd")


def read_reference(name: str, folder: Path = REFERENCE) -> dict[str, Any]:
    reference = json.loads((folder / f"{name}.json").read_text())
    images = pq.read_table(folder / f"{name}.images.parquet").to_pylist()
    if [row["sample_id"] for row in images] != [row["sample_id"] for row in reference["data"]]:
        raise ValueError(f"{name}.images.parquet does not hold {name}.json's data rows; re-record both")
    for row, pictures in zip(reference["data"], images):
        row.update({column: pictures[column] for column in image_columns()})
    return reference


def _plain(value: Any) -> Any:
    """JSON for a cell: floats as the shortest text that reads back the same float32, NaN as null."""
    if isinstance(value, float):
        return None if math.isnan(value) else float(np.format_float_positional(np.float32(value), unique=True))
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


# -- the comparison -----------------------------------------------------------------------------

def differences(found: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """Every way ``found`` (``read_tables``) departs from ``reference`` beyond the tolerances, in words."""
    problems = []
    if found["files"] != reference["files"]:
        problems.append(f"files and their row counts: {found['files']} instead of {reference['files']}")
    rules = {column.name: column for column in written_columns()}
    for table in TABLES:
        got, want = found[table], reference[table]
        if [row.get("unit_id", row.get("sample_id")) for row in got] != \
                [row.get("unit_id", row.get("sample_id")) for row in want]:
            problems.append(f"{table}: rows {[_name(r) for r in got]} instead of {[_name(r) for r in want]}")
            continue
        for got_row, want_row in zip(got, want):
            where = f"{table} row {_name(want_row)}"
            if set(got_row) != set(want_row):
                problems.append(f"{where}: columns {sorted(set(got_row) ^ set(want_row))} added or gone")
                continue
            for column in want_row:
                problem = _cell_difference(rules.get(column) if table == "data" else None, column,
                                           got_row[column], want_row[column])
                if problem:
                    problems.append(f"{where}, {column}: {problem}")
    return problems


def _name(row: dict) -> str:
    return str(row.get("unit_id") or row.get("sample_id"))


def _cell_difference(column, name: str, got: Any, want: Any) -> str | None:
    if column is not None and column.dtype == "image":
        return _image_difference(got, want)
    if column is not None and column.dtype.startswith("float"):
        absolute, relative, _ = TOLERANCES[name]
        return _float_difference(got, want, absolute, relative)
    return None if _plain(got) == _plain(want) else f"{_short(got)} instead of {_short(want)}"


def _float_difference(got: Any, want: Any, absolute: float, relative: float) -> str | None:
    got = np.asarray(_nan(got), np.float64)
    want = np.asarray(_nan(want), np.float64)
    if got.shape != want.shape:
        return f"shape {got.shape} instead of {want.shape}"
    if not np.array_equal(np.isnan(got), np.isnan(want)):
        return "NaN in other places"
    excess = np.abs(got - want) - (absolute + relative * np.abs(want))
    excess = np.where(np.isnan(excess), -1.0, excess)
    if (excess > 0).any():
        worst = np.unravel_index(int(np.argmax(excess)), excess.shape)
        return (f"{int((excess > 0).sum())} values off by more than {absolute:g} + {relative:g}·|value|, e.g. at "
                f"{tuple(int(i) for i in worst)}: {float(got[worst]):.9g} instead of {float(want[worst]):.9g}")
    return None


def _nan(value: Any) -> Any:
    if value is None:
        return math.nan
    if isinstance(value, list):
        return [_nan(item) for item in value]
    return value


def _image_difference(got: bytes, want: bytes) -> str | None:
    if got == want:
        return None
    from PIL import Image

    a, b = (np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int16) for data in (got, want))
    if a.shape != b.shape:
        return f"image of {a.shape[1]}x{a.shape[0]} instead of {b.shape[1]}x{b.shape[0]}"
    diff = np.abs(a - b)
    mean, far = float(diff.mean()), float((diff > IMAGE_TOLERANCE["far"]).mean())
    if mean >= IMAGE_TOLERANCE["mean"] or far > IMAGE_TOLERANCE["share"]:
        return (f"decoded pixels differ by {mean:.2f} grey levels on average and {far:.2%} of them by more than "
                f"{IMAGE_TOLERANCE['far']} (at most {IMAGE_TOLERANCE['mean']} and {IMAGE_TOLERANCE['share']:.1%})")
    return None


def _short(value: Any) -> str:
    text = json.dumps(_plain(value))
    return text if len(text) <= 120 else text[:117] + "..."


def schemas() -> dict[str, Any]:
    """Each pipeline's shard schema: column -> Arrow type, and the Hugging Face features it carries."""
    from magma_data.config import RunConfig
    from magma_data.pipelines import PIPELINES, load_pipeline, shard_features

    found = {}
    for pipeline in PIPELINES:
        schema = shard_features(load_pipeline(pipeline), RunConfig(pipeline=pipeline).with_overrides(
            SCHEMA_OVERRIDES)).arrow_schema
        found[pipeline] = {"arrow": [[field.name, str(field.type)] for field in schema],
                           "huggingface": json.loads(schema.metadata[b"huggingface"])}
    return found


def main(names: list[str]) -> None:
    names = names or [name for name, run in RUNS.items() if run.clips != "shared" or SHARED_VIDEOS.is_dir()]
    unknown = [name for name in names if name not in RUNS]
    if unknown:
        sys.exit(f"unknown run(s) {unknown}; runs: {', '.join(RUNS)}")
    REFERENCE.mkdir(parents=True, exist_ok=True)
    (REFERENCE / "schemas.json").write_text(json.dumps(schemas(), indent=1) + "\n")
    work = Path(tempfile.mkdtemp(prefix="magma-data-reference-"))
    for name in names:
        output = make_output(name, work / name)
        write_reference(name, read_tables(output))
        print(f"{name}: recorded {REFERENCE / name}.json from {output}")
    print(f"the outputs stay in {work} for `magma-data show` (delete it when done)")


if __name__ == "__main__":
    main(sys.argv[1:])
