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


def test_each_row_marks_the_frame_magmas_rule_draws_from_its_own_tracks(folder_run):
    """``frame_pos`` recomputed from a row's stored tracks: the camera compensation undone, Magma's
    ``frame_rightmost`` (steps before half the motion), and the draw seeded by the run seed and sample id."""
    from magma_data.stages.base import seeded_rng
    from magma_data.stages.camera import raw_tracks
    from magma_data.stages.marked_frame import frame_rightmost

    output, _, config = folder_run
    rows = pq.read_table(output / "data" / "folder").to_pylist()
    drawn = []
    for row in rows:
        raw = raw_tracks(np.asarray(row["tracks"]), np.asarray(row["homography"]), np.asarray(row["homography_ok"]))
        rightmost = frame_rightmost(raw, config.marks.step_rightmost_ratio)
        assert 1 <= rightmost <= 15
        expected = int(seeded_rng(config.seed, row["sample_id"], "frame_pos").integers(0, rightmost))
        assert row["frame_pos"] == expected, row["sample_id"]
        drawn.append(expected)
    assert len(set(drawn)) > 3 and max(drawn) > 0  # not frame 0 alone


def test_image_marks_camera_and_tom_targets_start_at_the_marked_frame(folder_run, video_clips):
    """The stored image is the video's frame at ``frame_pos``; the homographies take every frame there; the
    marks sit at their traces' points in that frame, and each ToM target starts at its mark."""
    import decord
    import io

    from magma_data.stages.decode import resize_frames
    from magma_data.stages.render import to_grid

    output, _, config = folder_run
    rows = sorted(pq.read_table(output / "data" / "folder").to_pylist(), key=lambda row: -row["frame_pos"])
    assert rows[0]["frame_pos"] > 1
    for row in rows[:6]:  # the latest marked frames: the furthest from the first
        pos = row["frame_pos"]
        native = decord.VideoReader(str(video_clips / f"{row['video_uid']}.mp4")).get_batch(
            [row["frame_indices"][0], row["frame_indices"][pos]]).asnumpy()
        first, frame = resize_frames(native, config.decode.height).astype(np.int16)
        image = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB"), np.int16)
        assert np.abs(image - frame).mean() < min(3, np.abs(image - first).mean())  # the frame at frame_pos
        if row["camera_motion"]:
            assert row["homography_ok"][pos] and np.allclose(row["homography"][pos], np.eye(3))
        tracks = np.asarray(row["tracks"], np.float32)
        np.testing.assert_allclose(row["mark_xy"], tracks[pos, row["mark_track_index"]].reshape(-1, 2))
        grid = to_grid(np.asarray(row["mark_xy"]).reshape(-1, 2), row["image_width"], row["image_height"], 256)
        starts = dict(zip(row["mark_ids"], grid))
        seen = {mark for mark, index in zip(row["mark_ids"], row["mark_track_index"]) if row["visibility"][pos][index]}
        for mark, target in zip(row["tom_mark_ids"], row["tom_targets"]):
            if mark in seen:  # a trace's first usable point from frame_pos on: its mark, where the mark is seen
                assert list(target[0]) == list(starts[mark])
