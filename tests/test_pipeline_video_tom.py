"""End to end through a real local Ray: the five test clips (real or stand-ins) -> Parquet shards -> datasets."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from magma_data.config import RunConfig
from magma_data.runner import RunOptions, run


@pytest.fixture(scope="module")
def folder_run(video_clips, tmp_path_factory):
    output = tmp_path_factory.mktemp("folder-run")
    config = RunConfig(source="folder").with_overrides(
        {"track": {"tracker": "lk"}, "sink": {"rows_per_shard": 8}, "decode": {"height": 384}}
    )
    summary = run(config, RunOptions(output=output, root=video_clips, num_cpus=2, progress=False))
    return output, summary, config


def _expected_windows(video_clips: Path) -> int:
    """Windows of 16 frames every 16 frames, from each video's own frame count."""
    import decord

    total = 0
    for path in sorted(video_clips.glob("*.mp4")):
        frames = len(decord.VideoReader(str(path)))
        total += max(0, (frames - 16) // 16 + 1)
    return total


def test_every_planned_window_ends_as_a_row_or_an_error_row(folder_run, video_clips):
    output, summary, _ = folder_run
    rows = sum(pq.read_metadata(p).num_rows for p in (output / "data" / "folder").glob("train-*.parquet"))
    errors = sum(pq.read_metadata(p).num_rows for p in (output / "errors").glob("folder-*.parquet"))
    assert summary.windows_planned == _expected_windows(video_clips)
    assert rows + errors == summary.windows_planned
    assert (summary.rows_written, summary.error_rows) == (rows, errors)
    assert rows > 0


def test_shards_follow_the_hugging_face_layout(folder_run):
    output, summary, _ = folder_run
    names = sorted(p.name for p in (output / "data" / "folder").glob("*.parquet"))
    total = summary.shards
    assert names == [f"train-{i:05d}-of-{total:05d}.parquet" for i in range(total)]
    assert (output / "summary.json").is_file() and (output / "README.md").is_file()


def test_datasets_loads_the_source_folder_with_declared_features(folder_run):
    output, summary, config = folder_run
    ds = datasets.load_dataset("parquet", data_dir=str(output / "data" / "folder"), split="train")
    assert len(ds) == summary.rows_written
    assert isinstance(ds.features["image"], datasets.Image)
    assert isinstance(ds.features["som_image"], datasets.Image)
    row = ds[0]
    assert isinstance(row["image"], Image.Image) and isinstance(row["som_image"], Image.Image)
    assert row["image"].size == (row["image_width"], row["image_height"])
    tracks = np.asarray(row["tracks"], np.float32)
    assert tracks.shape == (16, config.track.grid_size**2, 2)
    assert np.asarray(row["homography"]).shape == (16, 3, 3)
    assert row["conversations"][0]["from"] == "human"
    assert row["config_hash"] == summary.config_hash


def test_datasets_loads_the_output_folder_through_its_card(folder_run):
    output, summary, _ = folder_run
    assert len(datasets.load_dataset(str(output), split="train")) == summary.rows_written
    assert len(datasets.load_dataset(str(output), "folder", split="train")) == summary.rows_written


def test_rows_map_back_to_their_videos(folder_run, video_clips):
    output, _, _ = folder_run
    table = pq.read_table(output / "data" / "folder", columns=["video_uid", "frame_index", "frame_indices", "fps"])
    for uid, start, indices, fps in zip(*(table[c].to_pylist() for c in table.column_names)):
        assert (video_clips / f"{uid}.mp4").is_file()
        assert indices == list(range(start, start + 16))
        assert fps > 0
