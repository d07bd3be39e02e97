"""The EPIC-KITCHENS-100 reader on a miniature of the downloader + annotations layout."""

from __future__ import annotations

import pytest

from magma_data.sources import load_manifest, open_source
from magma_data.sources.base import Clip, ClipProblem
from magma_data.sources.epic_kitchens import EpicKitchensSource, parse_timestamp
from source_fixtures import epic_miniature


@pytest.fixture(scope="module")
def epic_root(tmp_path_factory):
    return epic_miniature(tmp_path_factory.mktemp("epic"))


def _read(root, **options):
    units = list(EpicKitchensSource(root, "epic_kitchens", **options).clips())
    return (units, {u.clip_id: u for u in units if isinstance(u, Clip)},
            {u.unit_id: u for u in units if isinstance(u, ClipProblem)})


def test_segments_span_their_timestamps_not_their_frame_columns(epic_root):
    _, clips, _ = _read(epic_root)
    clip = clips["P01_01_0"]
    assert (clip.start_sec, clip.end_sec, clip.fps) == (0.0, 4.0, 4.0)
    assert clip.video_path == str(epic_root.resolve() / "EPIC-KITCHENS" / "P01" / "videos" / "P01_01.MP4")
    assert clip.task == "open drawer" and clip.video_uid == "P01_01"


def test_mixed_frame_rates_come_from_video_info(epic_root):
    _, clips, _ = _read(epic_root)
    assert clips["P02_101_0"].fps == 8.0 and clips["P01_01_0"].fps == 4.0
    assert (clips["P02_101_0"].start_sec, clips["P02_101_0"].end_sec) == (0.5, 3.5)


def test_non_ascii_narration_is_kept(epic_root):
    _, clips, _ = _read(epic_root)
    assert clips["P01_01_3"].task == "pour café into 瓶"


def test_awkward_rows_are_problems(epic_root):
    units, clips, problems = _read(epic_root)
    assert {u: p.error_class for u, p in problems.items()} == {
        "epic_kitchens/P01_01_1": "ZeroLengthWindow",
        "epic_kitchens/P01_01_2": "EmptyText",
        "epic_kitchens/P01_01_4": "BadTimestamp",
        "epic_kitchens/P03_01_0": "VideoMissing",
        "epic_kitchens/P09_01_0": "UnknownVideoId",
        "epic_kitchens/P01_01_5": "PathEscapesRoot",
        "epic_kitchens/P02_101_1": "TextNotUtf8",
    }
    assert len(units) == 10  # every row is accounted for
    assert "EPIC_100_train.csv:3" in problems["epic_kitchens/P01_01_1"].message


def test_without_video_info_frame_rates_are_left_to_the_probe(epic_root):
    _, clips, problems = _read(epic_root, video_info=None)
    assert clips["P01_01_0"].fps is None
    assert "epic_kitchens/P09_01_0" in problems and problems["epic_kitchens/P09_01_0"].error_class == "VideoMissing"


def test_manifest_defaults(epic_root):
    manifest = load_manifest("epic_kitchens")
    assert manifest.defaults["camera"] == {"force": True}
    assert manifest.defaults["render"]["speed_threshold"] == 1.0
    assert open_source(manifest, epic_root).name == "epic_kitchens"


@pytest.mark.parametrize(("text", "seconds"), [("00:00:01.089", 1.089), ("01:02:03.50", 3723.5),
                                               ("00:00:00", 0.0), ("1:2", None), ("", None)])
def test_parse_timestamp(text, seconds):
    assert parse_timestamp(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_a_csv_listed_twice_gives_duplicate_rows_distinct_unit_ids(epic_root):
    notes = "epic-kitchens-100-annotations/"
    units, _, problems = _read(epic_root, annotations=[notes + "EPIC_100_validation.csv"] * 2)
    assert len({u.unit_id if isinstance(u, ClipProblem) else u.clip_id for u in units}) == len(units)
    assert problems["epic_kitchens/P02_101_0@EPIC_100_validation.csv:2"].error_class == "DuplicateId"


def test_manifest_defaults_compose_into_the_run_config():
    from magma_data.config import RunConfig

    config = RunConfig(source="epic_kitchens").with_overrides(load_manifest("epic_kitchens").defaults)
    assert config.camera.force is True and config.render.speed_threshold == 1.0
    assert (config.marks.moving_threshold_px, config.marks.moving_clusters, config.marks.static_clusters) == \
        (3.0, (2, 5), (6, 14))
