"""magma-data show on a real (small) run: statistics that match the shards, and a contact sheet."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from PIL import Image

from magma_data.config import RunConfig
from magma_data.runner import RunOptions, run
from magma_data.show import contact_sheet, dataset_stats


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("show-run")
    config = RunConfig(source="sample", limit=4).with_overrides(
        {"track": {"tracker": "lk", "grid_size": 8}, "decode": {"height": 256}}
    )
    run(config, RunOptions(output=output, num_cpus=2, progress=False))
    return output


def test_statistics_agree_with_the_shards(small_run):
    [stats] = dataset_stats(small_run)
    table = pq.read_table(small_run / "data" / "sample")
    assert stats.source == "sample" and stats.rows == table.num_rows == 4
    assert stats.camera_motion == sum(table["camera_motion"].to_pylist()) / 4
    assert stats.marks_per_row == sum(len(ids) for ids in table["mark_ids"].to_pylist()) / 4
    assert stats.trackers == ["lk"] and not stats.errors


def test_contact_sheet_holds_one_cell_per_row(small_run, tmp_path):
    sheet = Image.open(contact_sheet(small_run, count=3, destination=tmp_path / "sheet.png", columns=2, thumb_height=100))
    assert sheet.height == 200  # 3 cells on 2 columns
    assert sheet.width == 2 * round(100 * 384 / 256)
