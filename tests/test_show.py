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


def test_the_tables_fit_80_columns_with_every_header_whole_and_a_legend():
    """As ``magma-train eval``'s: short headers a caption spells out; long class lists wrap in their cells."""
    from collections import Counter

    from rich.console import Console

    from magma_data.show import FIGURES, SourceStats, stats_tables

    busy = SourceStats(source="magma_video_tom", rows=1234567, errors=Counter(VideoMissing=12000, DecodeFailed=2,
                       WindowPastVideoEnd=345), filtered=Counter(IdleVerb=54321), camera_motion=1.0, homography_ok=0.98,
                       inlier_ratio=0.93, marks_per_row=12.3, moving_marks_per_row=4.1, tom_rows=0.8,
                       trackers=["cotracker3", "released"])
    console = Console(width=80, record=True)
    for table in stats_tables([busy, SourceStats(source="sample", rows=8, trackers=["lk"])], "out/everything"):
        console.print(table)
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    headers = [header for header, _, _ in FIGURES]
    assert " ".join(text.split()).count(" ".join(["source", *headers])) == 1
    assert "magma_video_tom 1234567 12347 54321 100% 98% 0.93 12.3 4.1 80%" in " ".join(text.split())
    assert all(word in text for word in ("VideoMissing", "12000", "IdleVerb 54321", "cotracker3,", "released"))
    for header in set(headers) - {"rows"}:  # every abbreviation is spelled out in the caption
        assert any(header in legend.split(":")[0] for _, legend, _ in FIGURES if legend), header
