"""A run in which every unit fails still ends like any run with error rows, and its terminal stays readable.

Real subprocesses: decord's C++ code and its FFmpeg write to file descriptor 2 directly, which
only a separate process shows as a user's terminal would.
"""

from __future__ import annotations

import json
import subprocess

import pyarrow.parquet as pq
import pytest
from cli_runs import HUNG_S, MAGMA_DATA, run_env

from magma_data.cli import EXIT_SOME_UNITS_FAILED
from magma_data.dropped import ERROR
from magma_data.parquet_writer import table_files

DECORD_NOISE = ("moov atom not found", "ERROR opening")


@pytest.fixture(scope="module")
def broken_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    (root / "zero_bytes.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n")
    return root


def magma_data(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MAGMA_DATA, *args], capture_output=True, text=True, timeout=HUNG_S, env=run_env())


def test_a_run_whose_every_unit_fails_exits_3_with_its_card_and_summary(broken_videos, tmp_path):
    output = tmp_path / "out"
    result = magma_data("run", "video_tom", "--input", "folder", "--root", str(broken_videos), "--output", str(output),
                        "--tracker", "lk", "--no-progress")
    assert result.returncode == EXIT_SOME_UNITS_FAILED, result.stderr
    summary = json.loads((output / "summary.json").read_text())["folder"]
    assert (summary["rows_written"], summary["error_rows"]) == (0, 2)
    assert (output / "README.md").is_file() and not (output / "data").exists()
    assert not any(noise in result.stderr for noise in DECORD_NOISE), result.stderr
    messages = pq.read_table(output / "errors").column("message").to_pylist()
    assert all("neither decord nor PyAV can open it" in message for message in messages)  # the facts are kept

    shown = magma_data("show", str(output), "--json")
    assert shown.returncode == 0, shown.stderr
    [stats] = json.loads(shown.stdout)
    assert (stats["source"], stats["rows"], stats["errors"]) == ("folder", 0, {"VideoUnreadable": 2})
    assert "no unit became a row" in shown.stderr


def test_decords_messages_reach_the_terminal_with_verbose(broken_videos, tmp_path):
    result = magma_data("-v", "run", "video_tom", "--input", "folder", "--root", str(broken_videos),
                        "--output", str(tmp_path / "out"), "--tracker", "lk", "--no-progress")
    assert result.returncode == EXIT_SOME_UNITS_FAILED
    assert all(noise in result.stderr for noise in DECORD_NOISE), result.stderr


def test_a_sources_tables_are_its_own_and_not_those_of_a_source_whose_name_it_begins(tmp_path):
    errors = tmp_path / "errors"
    errors.mkdir()
    for name in ("foo-00000-of-00001", "foo-bar-00000-of-00001", "foo-00000-of-00001.parquet.partial"):
        (errors / f"{name}.parquet").touch()
    assert table_files(tmp_path, "foo", ERROR) == [errors / "foo-00000-of-00001.parquet"]
    assert table_files(tmp_path, "foo-bar", ERROR) == [errors / "foo-bar-00000-of-00001.parquet"]
