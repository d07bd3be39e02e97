"""Magma's released traces hydrated into rows with the user's own videos: no tracking, same schema."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from magma_data.cli import main
from magma_data.config import RunConfig
from magma_data.pipelines import load_pipeline
from magma_data.sources import load_manifest, open_source
from magma_data.stages.decode import DecodeConfig, DecodeStage, resize_frames
from magma_data.stages.released_traces import ReleasedConfig, ReleasedTracesStage, TraceShapeMismatch
from release_fixtures import MISSING_UID, RECORDS, TRACED, UID, release_miniature, released_trace


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return release_miniature(tmp_path_factory.mktemp("release"))


def _config(**overrides) -> RunConfig:
    config = RunConfig(source="magma_video_tom").with_overrides(load_manifest("magma_video_tom").defaults)
    return config.with_overrides(overrides)


def _plan(release, config=None):
    root, videos = release
    source = open_source(load_manifest("magma_video_tom"), root, videos=[str(videos)])
    return load_pipeline("video_tom").plan(source, config or _config())


def test_each_record_finds_its_frames_in_the_users_videos(release):
    rows = {row["unit_id"].split("/", 1)[1]: row for row in _plan(release)}
    assert list(rows) == ["ego4d/000000000", "ego4d/000000001", "ego4d/000000002", "ego4d/000000003",
                          "ego4d/000000004", "sthv2/000000000"]
    # an Ego4D segment starting at 2 s of a 4 fps video: its frame 0 is the video's frame 8
    assert rows["ego4d/000000000"]["frame_indices"].tolist() == list(range(8, 24))
    assert rows["ego4d/000000000"]["video_path"].endswith(f"ego4d/{UID}.mp4")
    assert rows["ego4d/000000001"]["frame_index"] == 4 + 2  # "<uid>_start_1.0___...", frame_index 2
    assert rows["ego4d/000000004"]["frame_index"] == 1  # the segment is its own file
    assert rows["sthv2/000000000"]["frame_indices"].tolist() == list(range(3, 19))  # a whole SSv2 clip
    assert rows["ego4d/000000000"]["clip_id"] == f"ego4d/{RECORDS[0][2]}"
    assert rows["ego4d/000000000"]["task"] == "the person opens the drawer"


def test_a_record_whose_video_is_absent_is_an_error_row_naming_the_video(release):
    rows = {row["unit_id"].split("/", 1)[1]: row for row in _plan(release)}
    missing, past_end = rows["ego4d/000000002"], rows["ego4d/000000003"]
    assert missing["drop_reason"] == "VideoMissing" and MISSING_UID in missing["drop_message"]
    assert f"--video_uids {MISSING_UID}" in missing["drop_message"]
    assert past_end["drop_reason"] == "WindowPastVideoEnd" and "28..43" in past_end["drop_message"]


def test_the_released_traces_are_the_tracks_in_working_pixels(release):
    row = _plan(release)[0]
    config = _config(decode={"height": 128})
    stage = ReleasedTracesStage(config.decode, config.released, config.track.grid_size**2)
    out = stage(row)
    trace, visibility = released_trace(0)
    width, height = int(out["image_width"]), int(out["image_height"])
    assert (width, height) == (170, 128)
    np.testing.assert_allclose(out["tracks"], trace * np.array([width / TRACED[0], height / TRACED[1]]), rtol=1e-6)
    np.testing.assert_array_equal(out["visibility"], visibility)
    native = DecodeStage(DecodeConfig()).read(row["video_path"], np.array([8]))
    np.testing.assert_array_equal(out["marked_frame"], resize_frames(native, 128)[0])
    assert (out["tracker"], out["released_dataset"], out["released_frame_index"]) == ("released", "ego4d", 0)
    assert out["released_video_name"] == RECORDS[0][2]


def test_the_marked_frame_is_drawn_from_the_released_traces_and_decoded(release):
    """Magma draws frame_pos from the released traces too: the stage draws it as the track stage does and
    decodes that frame of the window."""
    from magma_data.stages.marked_frame import FRAME_POS, MarkedFrame

    rows = [row for row in _plan(release) if not row.get("drop_kind")]
    config = _config(decode={"height": 128})
    drawn = set()
    for seed in range(6):
        rule = MarkedFrame(seed=seed)
        stage = ReleasedTracesStage(config.decode, config.released, config.track.grid_size**2, marked_frame=rule)
        assert FRAME_POS in stage.columns
        out = stage(rows[0])
        pos = int(out["frame_pos"])
        assert pos == rule.draw(out["tracks"], rows[0])
        native = DecodeStage(DecodeConfig()).read(rows[0]["video_path"], np.asarray(rows[0]["frame_indices"])[[pos]])
        np.testing.assert_array_equal(out["marked_frame"], resize_frames(native, 128)[0])
        drawn.add(pos)
    assert len(drawn) > 1


def test_native_pixels_are_an_option():
    config = ReleasedConfig(trace_height=None)
    from magma_data.stages.released_traces import traced_size

    assert traced_size(64, 48, config) == (64, 48) and traced_size(64, 48, ReleasedConfig()) == TRACED


def test_a_trace_of_another_shape_says_which_options_fit_it(release):
    row = _plan(release)[0]
    stage = ReleasedTracesStage(DecodeConfig(height=64), ReleasedConfig(), points=16 * 16)
    with pytest.raises(TraceShapeMismatch, match="--window-len 16 and --grid-size 15"):
        stage(row)


def test_released_traces_and_tracking_do_not_mix(release):
    with pytest.raises(ValueError, match="leave --tracker out"):
        _plan(release, _config(track={"tracker": "lk"}))
    with pytest.raises(ValueError, match="--input magma_video_tom"):
        load_pipeline("video_tom").plan(open_source(load_manifest("sample"), None),
                                        RunConfig(limit=1).with_overrides({"track": {"tracker": "released"}}))


def test_the_released_section_changes_only_the_hash_of_runs_on_released_traces():
    assert RunConfig().hash() == RunConfig().with_overrides({"released": {"trace_height": 256}}).hash()
    assert _config().hash() != _config(released={"trace_height": None}).hash()


def test_check_reports_how_many_released_windows_the_videos_cover(release, tmp_path):
    root, videos = release
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["check", "--input", "magma_video_tom", "--root", str(root),
                                       "--videos", str(videos), "--report", str(report_path)])
    assert result.exit_code == 0, result.output
    assert "released records covered by your videos" in result.output
    report = json.loads(report_path.read_text())
    assert report["coverage"]["ego4d"] == {"records": 5, "video_found": 4, "windows": 3, "missing_videos": 1,
                                           "missing_examples": [MISSING_UID]}
    assert report["coverage"]["sthv2"]["windows"] == 1 and report["windows"] == 4
    assert report["problems"] == {"VideoMissing": 1, "WindowPastVideoEnd": 1}
    reach = report["trace_reach"]
    assert reach["frame"] == "512 high" and 0.9 < reach["max_x"] < 1 and 0.9 < reach["max_y"] < 1
    assert reach["outside"] == 0


def test_check_without_videos_says_what_to_pass(release):
    root, _ = release
    result = CliRunner().invoke(main, ["check", "--input", "magma_video_tom", "--root", str(root)])
    assert result.exit_code == 1 and "--videos" in result.output


@pytest.fixture(scope="module")
def hydrated(release, tmp_path_factory):
    """A run of the pipeline on the miniature: (its config, its summary, its output folder)."""
    from magma_data.runner import RunOptions, run

    root, videos = release
    output = tmp_path_factory.mktemp("hydrated")
    config = _config(sink={"rows_per_shard": 4})  # frames 512 high: the traces' own pixels
    summary = run(config, RunOptions(output=output, root=root, num_cpus=2, progress=False,
                                     source_options={"videos": [str(videos)]}))
    return config, summary, output


def test_run_makes_rows_from_the_released_traces_without_tracking(hydrated):
    config, summary, output = hydrated
    assert (summary.rows_written, summary.error_rows, summary.tracker) == (4, 2, "released")
    rows = pq.read_table(sorted((output / "data" / "magma_video_tom").glob("*.parquet"))).to_pylist()
    first = next(r for r in rows if r["released_video_name"] == RECORDS[0][2])
    trace, _ = released_trace(0)
    assert (first["image_width"], first["image_height"]) == TRACED
    np.testing.assert_allclose(first["tracks"], trace, rtol=1e-6)
    assert not first["camera_motion"] and first["tracker"] == "released"
    assert first["som_image"]["bytes"] and any("should be moved" in t["value"] for t in first["conversations"])
    errors = pq.read_table(sorted((output / "errors").glob("*.parquet"))).to_pylist()
    assert sorted(e["error_class"] for e in errors) == ["VideoMissing", "WindowPastVideoEnd"]
    assert dataclasses.asdict(config.released) == json.loads(
        (output / ".magma" / "magma_video_tom" / "config.json").read_text())["released"]


def test_exporting_hydrated_rows_gives_the_released_records_back(hydrated, tmp_path):
    import datasets

    from magma_data.export import export

    _, _, output = hydrated
    export(output, "magma-video-tom", tmp_path / "export")
    exported = {(r["video_name"], r["frame_index"]): r
                for r in datasets.load_from_disk(str(tmp_path / "export" / "magma_video_tom"))}
    covered = [(seed, record) for seed, record in enumerate(RECORDS) if seed in (0, 1, 4, 5)]
    assert len(exported) == len(covered)
    for seed, (_, dataset, video_name, task, frame_index) in covered:
        record = exported[(video_name, frame_index)]
        trace, visibility = released_trace(seed)
        assert (record["dataset_name"], record["task_string"]) == (dataset, task)
        np.testing.assert_allclose(record["trace"], trace, atol=1e-3)
        assert record["trace_visibility"] == visibility.tolist()
