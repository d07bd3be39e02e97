"""The shards of three small runs, pinned byte for byte: a refactoring must not change one bit of the data.

The digests were recorded at commit b4857bd (before the column contract, the tracker registry and
the sink split) and every later commit must reproduce them. Three runs, each a few windows of a
real pipeline through a local Ray: the built-in ``sample`` source, the ``folder`` source on
``../shared/videos`` (data rows and a plan error row), and the same videos tracked with a single
point that must stay visible in every frame (some windows then have no mark and, without task
text, fail in the render stage: error rows made in the stream, beside data rows).

What the digests depend on besides our code, so a failure here after an upgrade is not a bug:

- the absolute paths of the input videos, which every row and error row carries in ``video_path``:
  ``/work/shared/videos`` (the project's ``../shared/videos``) and ``/tmp/magma-data-pinned-sample``,
  where this test renders the sample clips once;
- the libraries that make the bytes: pyarrow's Parquet writer and its zstd, Pillow's JPEG encoder,
  OpenCV (Lucas-Kanade, resizing, RANSAC), faiss k-means, decord's FFmpeg (decoding) and PyAV's
  libx264 (the sample clips), at the versions ``scripts/setup.sh --test`` installs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from magma_data.config import RunConfig
from magma_data.runner import RunOptions, run

SHARED_VIDEOS_AT = Path("/work/shared/videos")
SAMPLE_CLIPS_AT = Path("/tmp/magma-data-pinned-sample")
SMALL = {"decode": {"height": 128}, "track": {"tracker": "lk", "grid_size": 5}, "sink": {"rows_per_shard": 4}}
RUNS = {  # output folder -> (source, root, config overrides beyond SMALL)
    "sample": ("sample", SAMPLE_CLIPS_AT, {"plan": {"window_len": 8, "window_stride": 8, "max_windows_per_clip": 2}}),
    "folder": ("folder", SHARED_VIDEOS_AT, {"plan": {"window_len": 24, "window_stride": 24, "max_windows_per_clip": 2}}),
    "folder-one-point": ("folder", SHARED_VIDEOS_AT, {"plan": {"window_len": 24, "window_stride": 24,
                                                               "max_windows_per_clip": 2},
                                                      "track": {"grid_size": 1}, "marks": {"min_visible_fraction": 0.99}}),
}
PINNED = {
    "folder-one-point/data/folder/train-00000-of-00003.parquet": "a710b4aee5582bd0f9e4aa508b1e19a82b07c1a1619b0094cfc50dd212996ab9",
    "folder-one-point/data/folder/train-00001-of-00003.parquet": "c00e69ab161d076bbaf87d97558eaf9fcdd78a27b9c94a478a26734ea25abc7e",
    "folder-one-point/errors/folder-00000-of-00003.parquet": "68c5a836c30934fc2338105692012b6f3a6b286781840da6a3db60f1ac1b5bbb",
    "folder-one-point/errors/folder-00001-of-00003.parquet": "fe9e6c1ab7439292ed1acb897f8e5e2a7393be20f7337c7a0c260d417fa7431c",
    "folder-one-point/errors/folder-00002-of-00003.parquet": "5216a29fa0ec3ad11fcf716a728279a7b602d1232844128f01850e484819b4fd",
    "folder/data/folder/train-00000-of-00003.parquet": "f05e9251e929949551c8222bf8c36d7be811d93d7240a21b6a51a8a2a33e3f88",
    "folder/data/folder/train-00001-of-00003.parquet": "76e59589c8a13b591a9f1313b26202f39dbf68d050a719dc496ba324b85fee4f",
    "folder/errors/folder-00002-of-00003.parquet": "3e6d5beacfdc90f3aa47169832821bfa2609709c5b86cbb83ae20066a899f3ec",
    "sample/data/sample/train-00000-of-00002.parquet": "e9bcc2183f14e6f173253655c6b4516eef92b4e8f4878832a29b30442a9fe102",
    "sample/data/sample/train-00001-of-00002.parquet": "c5b1ee007f39135997996f19dd432a421d098d30a513b0797549802586c1bb2f",
}


@pytest.fixture(scope="module")
def outputs(shared_videos, tmp_path_factory) -> Path:
    if shared_videos.resolve() != SHARED_VIDEOS_AT:
        pytest.fail(f"the pinned digests were recorded with the videos at {SHARED_VIDEOS_AT} (rows carry "
                    f"video_path), but they are at {shared_videos.resolve()}; run the suite from a checkout in /work")
    root = tmp_path_factory.mktemp("reference")
    for name, (source, videos, overrides) in RUNS.items():
        config = RunConfig(source=source).with_overrides(SMALL).with_overrides(overrides)
        run(config, RunOptions(output=root / name, root=videos, num_cpus=2, progress=False))
    return root


def test_every_parquet_file_is_byte_identical_to_the_reference(outputs):
    found = {p.relative_to(outputs).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(outputs.rglob("*.parquet"))}
    assert found == PINNED


#: sha256 of each pipeline's Arrow schema (Hugging Face features included) at window 8, grid 3;
#: oxe_tom's rows need TensorFlow to make, so its schema is pinned here instead of its shards.
PINNED_SCHEMAS = {
    "video_tom": "3e6280101c549060465d0741e1c03c7b820294c73f0fdede3a132483103d417d",
    "oxe_tom": "5ce2270d2039d584a89d3c519c8f1e294dbbb797639159f7081e23b6cba27f14",
}


@pytest.mark.parametrize("pipeline", sorted(PINNED_SCHEMAS))
def test_the_shard_schema_of_each_pipeline_is_unchanged(pipeline):
    from magma_data.pipelines import load_pipeline, shard_features

    config = RunConfig(pipeline=pipeline).with_overrides({"plan": {"window_len": 8}, "track": {"grid_size": 3}})
    schema = shard_features(load_pipeline(pipeline), config).arrow_schema
    assert hashlib.sha256(schema.serialize().to_pybytes()).hexdigest() == PINNED_SCHEMAS[pipeline]
