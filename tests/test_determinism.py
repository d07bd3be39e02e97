"""The same input and config give byte-identical shards, whatever Ray's batching and ordering.

The reference is a ``magma-data run`` subprocess; the second run goes through the same CLI in
this process, with another tracker batch size (not part of the config hash), so Ray splits,
schedules and returns the windows differently.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from cli_runs import SMALL, data_files, uninterrupted_run
from click.testing import CliRunner

from magma_data.cli import main


@pytest.fixture(scope="module")
def second_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("second")
    result = CliRunner().invoke(main, ["run", "video_tom", "--output", str(output), *SMALL, "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    return output


def test_two_clean_runs_write_identical_shard_bytes(tmp_path_factory, second_run):
    first = data_files(uninterrupted_run(tmp_path_factory))
    assert len(first) == 4
    assert data_files(second_run) == first


def test_data_files_hold_no_timestamps_only_the_schema_and_features(second_run):
    for path in second_run.glob("data/*/*.parquet"):
        metadata = pq.read_metadata(path)
        assert set(metadata.metadata) == {b"ARROW:schema", b"huggingface"}
        assert metadata.created_by.startswith("parquet-cpp-arrow")
    summary = json.loads((second_run / "summary.json").read_text())["sample"]
    assert summary["wall_time_s"] > 0  # timings live here, not in the data
