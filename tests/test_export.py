"""``magma-data export``: real output folders in Magma's formats, read back with the readers their users use."""

from __future__ import annotations

import hashlib
import io
import json
import shutil

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from cli_runs import uninterrupted_run, unfinished_run
from magma_data.cli import main
from magma_data.config import RunConfig
from magma_data.export import ExportRefused, _writer, export
from magma_data.magma_text import IMAGE_TOKEN, som_turn, semantic_turn, turn_images
from magma_data.outputs import SourceOutput, UnfinishedOutput
from magma_data.stages.camera import apply_homography


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    return uninterrupted_run(tmp_path_factory)


def _rows(output):
    return pq.read_table(sorted((output / "data" / "sample").glob("train-*.parquet"))).to_pylist()


def test_the_magma_video_tom_export_loads_with_load_from_disk_and_holds_each_rows_raw_traces(run_output, tmp_path):
    [summary] = export(run_output, "magma-video-tom", tmp_path / "export")
    records = datasets.load_from_disk(str(tmp_path / "export" / "sample"))
    rows = _rows(run_output)
    assert records.column_names == ["dataset_name", "video_name", "task_string", "trace", "trace_visibility",
                                    "frame_index"]
    assert len(records) == len(rows) == summary.rows
    compensated = 0
    for record, row in zip(records, rows):
        assert (record["dataset_name"], record["video_name"], record["task_string"], record["frame_index"]) == \
            ("sample", row["video_uid"], row["task"], row["frame_index"])
        assert record["trace_visibility"] == row["visibility"]
        raw = np.array(record["trace"]) * row["image_height"] / 512  # the export's pixels are 512 high
        tracks = np.array(row["tracks"])
        for t, ok in enumerate(row["homography_ok"]):  # the row's homographies take the raw trace to its tracks
            expected = apply_homography(raw[t], np.array(row["homography"][t])) if ok else raw[t]
            np.testing.assert_allclose(expected, tracks[t], atol=2e-3)
        compensated += any(row["homography_ok"][1:])
        assert not any(row["homography_ok"][1:]) or not np.allclose(raw, tracks, atol=0.5)
    assert compensated  # the sample pans: some windows had their camera motion removed


def test_the_llava_export_has_one_image_per_placeholder_and_the_rows_text(run_output, tmp_path):
    export(run_output, "llava", tmp_path / "llava")
    records = json.loads((tmp_path / "llava" / "sample.json").read_text())
    rows = _rows(run_output)
    assert [r["id"] for r in records] == [row["sample_id"] for row in rows]
    for record, row in zip(records, rows):
        assert record["conversations"] == row["conversations"]
        placeholders = sum(turn["value"].count(IMAGE_TOKEN) for turn in row["conversations"] if turn["from"] == "human")
        assert len(record["image"]) == placeholders
        for path, column in zip(record["image"], turn_images(row["conversations"])):
            data = (tmp_path / "llava" / path).read_bytes()
            assert data == row[column]["bytes"]
            assert Image.open(io.BytesIO(data)).size == (row["image_width"], row["image_height"])


def test_rows_without_a_task_or_without_marks_carry_fewer_images():
    marks = som_turn(np.array([1, 2]), np.array([[3, 4], [5, 6]]))
    assert turn_images(semantic_turn("cut the onion") + marks) == ["image", "som_image"]
    assert turn_images(marks) == ["som_image"]
    assert turn_images(semantic_turn("cut the onion")) == ["image"]


def test_an_export_run_again_resumes_and_changes_nothing(run_output, tmp_path):
    export(run_output, "magma-video-tom", tmp_path / "export")
    files = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "export" / "sample").iterdir()}
    [again] = export(run_output, "magma-video-tom", tmp_path / "export")
    assert again.shards_skipped == again.shards == 4
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "export" / "sample").iterdir()} == files


def test_an_unfinished_output_folder_is_refused(tmp_path_factory, tmp_path):
    unfinished = unfinished_run(tmp_path_factory)
    with pytest.raises(UnfinishedOutput, match="1 of 4 shards"):
        export(unfinished, "llava", tmp_path / "llava")
    assert not (tmp_path / "llava").exists()
    result = CliRunner().invoke(main, ["export", str(unfinished), "--format", "magma-video-tom",
                                       "--output", str(tmp_path / "export")])
    assert result.exit_code == 1 and "run the same magma-data run command again" in result.output


def test_a_folder_with_a_half_written_file_is_refused(run_output, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_output, copy)
    (copy / "data" / "sample" / ".train-00009-of-00009.parquet.partial").write_bytes(b"")
    with pytest.raises(UnfinishedOutput, match="half-written"):
        export(copy, "llava", tmp_path / "llava")


def test_robot_rows_have_no_magma_video_tom_export():
    robot = SourceOutput("oxe", RunConfig(pipeline="oxe_tom"), "c0ffee", "d1", shards=1, committed=1)
    with pytest.raises(ExportRefused, match="use --format llava"):
        _writer("magma-video-tom", None, robot)
