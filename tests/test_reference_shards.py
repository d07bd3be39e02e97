"""The shards of three small runs, pinned byte for byte: a refactoring must not change one bit of the data.

The digests were recorded at commit b4857bd (before the column contract, the tracker registry and
the sink split) and every later commit must reproduce them. Three runs, each a few windows of a
real pipeline through a local Ray: the built-in ``sample`` source, the ``folder`` source on
``../shared/videos`` (data rows and a plan error row), and the same videos tracked with a single
point that must stay visible in every frame (some windows then have no mark and, without task
text, fail in the render stage: error rows made in the stream, beside data rows).

What the digests depend on besides our code, so a failure here after an upgrade is not a bug:

- the absolute paths of the input videos, which every row and error row carries in ``video_path``:
  the test copies ``../shared/videos`` to ``/tmp/magma-data-pinned-videos`` and renders the sample
  clips into ``/tmp/magma-data-pinned-sample``, so the digests hold wherever the checkout lies;
- the libraries that make the bytes: pyarrow's Parquet writer and its zstd, Pillow's JPEG encoder,
  OpenCV (Lucas-Kanade, resizing, RANSAC), faiss k-means, decord's FFmpeg (decoding) and PyAV's
  libx264 (the sample clips), at the versions ``scripts/setup.sh --test`` installs.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from magma_data.config import RunConfig
from magma_data.runner import RunOptions, run

VIDEOS_AT = Path("/tmp/magma-data-pinned-videos")
SAMPLE_CLIPS_AT = Path("/tmp/magma-data-pinned-sample")
SMALL = {"decode": {"height": 128}, "track": {"tracker": "lk", "grid_size": 5}, "sink": {"rows_per_shard": 4}}
RUNS = {  # output folder -> (source, root, config overrides beyond SMALL)
    "sample": ("sample", SAMPLE_CLIPS_AT, {"plan": {"window_len": 8, "window_stride": 8, "max_windows_per_clip": 2}}),
    "folder": ("folder", VIDEOS_AT, {"plan": {"window_len": 24, "window_stride": 24, "max_windows_per_clip": 2}}),
    "folder-one-point": ("folder", VIDEOS_AT, {"plan": {"window_len": 24, "window_stride": 24,
                                                        "max_windows_per_clip": 2},
                                               "track": {"grid_size": 1}, "marks": {"min_visible_fraction": 0.99}}),
}
PINNED = {
    "folder/data/folder/train-00000-of-00003.parquet": "3cb2b1d204e2072943ee856fabdc14a07b263c21002bfe4c4d3c281c12e7c1c8",
    "folder/data/folder/train-00001-of-00003.parquet": "6407a92fe3a6f456baf1e27e83c22ac4904b47a11bc8597f0536efad68ef5fac",
    "folder/errors/folder-00002-of-00003.parquet": "34be26c6e4854808f1ba5cf07145bdddf6ff9fd1805d562270513510c69abe1d",
    "folder-one-point/data/folder/train-00000-of-00003.parquet": "010b53a5fb4d18fcc8de14ded634a90d483b87f8426bc43f25d34bd51209a0ab",
    "folder-one-point/data/folder/train-00001-of-00003.parquet": "dffdb6fffce4ea6505a122c9c55233d33e666fe3230141762955f44fa46afdf2",
    "folder-one-point/errors/folder-00000-of-00003.parquet": "abc0f2974273ad1cadd2eba54b2e27ae13f382fad4164aabcc1c9558ca25f523",
    "folder-one-point/errors/folder-00001-of-00003.parquet": "ce9411ea141d6e5d62a98f22a42bbca24a90845d396b1aa7734fa9e0c7afb445",
    "folder-one-point/errors/folder-00002-of-00003.parquet": "56b93f5668104a5a40babddfe437f2904bb9da2e08eebe6dd11e2df56004e685",
    "sample/data/sample/train-00000-of-00002.parquet": "e9bcc2183f14e6f173253655c6b4516eef92b4e8f4878832a29b30442a9fe102",
    "sample/data/sample/train-00001-of-00002.parquet": "c5b1ee007f39135997996f19dd432a421d098d30a513b0797549802586c1bb2f",
}


@pytest.fixture(scope="module")
def outputs(shared_videos, tmp_path_factory) -> Path:
    shutil.rmtree(VIDEOS_AT, ignore_errors=True)
    VIDEOS_AT.mkdir(parents=True)
    for video in sorted(shared_videos.glob("*.mp4")):
        shutil.copyfile(video, VIDEOS_AT / video.name)
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
