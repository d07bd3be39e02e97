"""The Something-Something v2 reader on a miniature with real VP9 .webm files."""

from __future__ import annotations

import pytest

from magma_data.sources import load_manifest, open_source
from magma_data.sources.base import Clip, ClipProblem
from magma_data.sources.ssv2 import SomethingSomethingV2Source, TemplateMismatch, fill_template
from magma_data.stages.plan import probe_video
from source_fixtures import ssv2_miniature


@pytest.fixture(scope="module")
def ssv2_root(tmp_path_factory):
    return ssv2_miniature(tmp_path_factory.mktemp("ssv2"))


def _read(root):
    units = list(SomethingSomethingV2Source(root, "ssv2").clips())
    return ({u.clip_id: u for u in units if isinstance(u, Clip)},
            {u.unit_id: u for u in units if isinstance(u, ClipProblem)})


def test_task_is_the_template_filled_with_its_objects(ssv2_root):
    clips, _ = _read(ssv2_root)
    assert clips["1001"].task == "Putting a cup on a surface"
    assert clips["1002"].task == "Moving café cup and 瓶 closer to each other"
    assert clips["1001"].video_path.endswith("20bn-something-something-v2/1001.webm")
    assert clips["1001"].start_sec is None and clips["1001"].end_sec is None  # whole clip


def test_awkward_entries_are_problems(ssv2_root):
    clips, problems = _read(ssv2_root)
    assert set(clips) == {"1001", "1002"}
    assert {u: p.error_class for u, p in problems.items()} == {
        "ssv2/1004": "VideoMissing",
        "ssv2/../../1001": "PathEscapesRoot",
        "ssv2/1005": "UnknownTemplate",
        "ssv2/1003": "TextNotUtf8",
        "ssv2/1006": "TemplateMismatch",
    }


def test_webm_files_probe(ssv2_root):
    info = probe_video(str(ssv2_root / "20bn-something-something-v2" / "1001.webm"))
    assert info.num_frames == 24 and info.fps == pytest.approx(12.0)


def test_manifest_opens_the_reader(ssv2_root):
    source = open_source(load_manifest("ssv2"), ssv2_root)
    assert sum(isinstance(u, Clip) for u in source.clips()) == 2


def test_fill_template_slot_variants():
    assert fill_template("Putting [number of] [something] onto [something]", ["2", "pens", "a book"]) == \
        "Putting 2 pens onto a book"
    with pytest.raises(TemplateMismatch):
        fill_template("Holding [something]", [])


def test_a_split_listed_twice_is_reported_not_duplicated(ssv2_root):
    units = list(SomethingSomethingV2Source(ssv2_root, "ssv2", annotations=["something-something-v2-train.json"] * 2).clips())
    assert sum(isinstance(u, Clip) for u in units) == 2
    duplicates = [u for u in units if isinstance(u, ClipProblem) and u.error_class == "DuplicateId"]
    assert len(duplicates) == 5 and len({u.unit_id for u in duplicates}) == 5


def test_manifest_defaults_compose_into_the_run_config():
    from magma_data.config import RunConfig

    config = RunConfig(source="ssv2").with_overrides(load_manifest("ssv2").defaults)
    assert config.camera.force is False and config.marks.moving_threshold_px == 3.0
