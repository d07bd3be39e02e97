"""``magma-data check``: counts and problems of a source before any tracking, and the exit status."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from click.testing import CliRunner
from rich.console import Console

from magma_data.check import run_check
from magma_data.cli import main
from source_fixtures import ego4d_miniature, epic_miniature, mp4, write_csv


@pytest.fixture(scope="module")
def ego4d_root(tmp_path_factory):
    return ego4d_miniature(tmp_path_factory.mktemp("ego4d") / "v2")


def test_counts_what_a_run_would_plan(ego4d_root, tmp_path):
    report = run_check("ego4d", ego4d_root, report_path=tmp_path / "report.json")
    assert (report.clips, report.videos, report.windows, report.usable) == (4, 2, 2, 2)
    assert report.units == 4 + 10  # every unit is counted, problems included
    # the two 2 s narrations of vid-c hold 8 frames at 4 fps: shorter than a 16-frame window
    assert report.problems["ClipTooShort"] == 2
    assert report.problems["VideoMissing"] == 1 and report.problems["NarrationFiltered"] == 1
    # the rules of the recipe are told apart from problems: a run writes those units to filtered/
    assert report.filter_rules == ["NarrationFiltered", "NarrationTooShort"]
    assert report.errors == sum(report.problems.values()) - 2
    assert report.frame_rates == {"4.00": 2} and not report.fps_outliers and not report.fps_mismatches
    saved = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert saved["usable"] == 2 and saved["examples"]["VideoMissing"][0]["unit_id"] == "ego4d/vid-missing"


def test_window_length_changes_the_count(ego4d_root):
    report = run_check("ego4d", ego4d_root, window_len=8)
    assert (report.usable, report.windows) == (4, 4)
    assert "ClipTooShort" not in report.problems


def test_render_shows_counts_problems_and_verdict(ego4d_root):
    buffer = io.StringIO()
    run_check("ego4d", ego4d_root).render(Console(file=buffer, width=200))
    text = buffer.getvalue()
    for expected in ("windows of 16 that would be planned", "VideoMissing", "NarrationFiltered", "filter",
                     "usable: 2 clips, 2 windows"):
        assert expected in text


def test_unreadable_videos_and_frame_rate_outliers(tmp_path):
    root = tmp_path / "videos"
    mp4(root / "a.mp4", num_frames=32, fps=4)
    mp4(root / "b.mp4", num_frames=32, fps=4)
    mp4(root / "fast.mp4", num_frames=32, fps=12)
    mp4(root / "short.mp4", num_frames=8, fps=4)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    report = run_check("folder", root)
    assert (report.clips, report.videos, report.usable, report.windows) == (5, 5, 3, 6)
    assert report.problems == {"ClipTooShort": 1, "VideoUnreadable": 1}
    assert [row["video"].rsplit("/", 1)[-1] for row in report.fps_outliers] == ["fast.mp4"]
    assert report.empty_text == 3  # folder videos without a sidecar .txt


def test_a_video_planned_from_its_metadata_whose_container_is_broken_is_listed(tmp_path):
    """Ego4D's metadata gives rate and length, so the planner plans windows without reading the video;
    check reads every container and names the one a run's decode would fail on."""
    root = ego4d_miniature(tmp_path / "v2")
    (root / "full_scale" / "vid-a.mp4").write_bytes(b"not a video")
    report = run_check("ego4d", root)
    assert report.windows == 2  # what a run plans: the metadata is trusted
    assert [row["video"].rsplit("/", 1)[-1] for row in report.unreadable_videos] == ["vid-a.mp4"]


def test_metadata_frame_rate_that_disagrees_with_the_container(tmp_path):
    root = epic_miniature(tmp_path)
    write_csv(root / "epic-kitchens-100-annotations" / "EPIC_100_video_info.csv",
              ["video_id", "duration", "fps", "resolution"],
              [["P01_01", 8.0, 59.94, "64x48"], ["P02_101", 4.0, 8.0, "64x48"], ["P09_01", 1.0, 50.0, "64x48"]])
    report = run_check("epic_kitchens", root)
    assert [(row["metadata_fps"], row["container_fps"]) for row in report.fps_mismatches] == [(59.94, 4.0)]


def test_cli_exit_status(ego4d_root, tmp_path):
    runner = CliRunner()
    good = runner.invoke(main, ["check", "--input", "ego4d", "--root", str(ego4d_root),
                                "--report", str(tmp_path / "r.json")])
    assert good.exit_code == 0, good.output
    assert "usable" in good.output and (tmp_path / "r.json").is_file()

    empty = tmp_path / "empty"
    shutil.copytree(ego4d_root, empty, ignore=shutil.ignore_patterns("*.mp4"))
    nothing = runner.invoke(main, ["check", "--input", "ego4d", "--root", str(empty)])
    assert nothing.exit_code == 1 and "nothing usable" in nothing.output

    (tmp_path / "no-release").mkdir()
    unreadable = runner.invoke(main, ["check", "--input", "ego4d", "--root", str(tmp_path / "no-release")])
    assert unreadable.exit_code == 1 and "ego4d.json" in unreadable.output

    absent = runner.invoke(main, ["check", "--input", "ego4d", "--root", str(tmp_path / "absent")])
    assert absent.exit_code == 2 and "does not exist" in absent.output

    unknown = runner.invoke(main, ["check", "--input", "no_such_source", "--root", str(tmp_path)])
    assert unknown.exit_code == 2


def test_robot_episodes(tmp_path):
    pytest.importorskip("tensorflow_datasets", reason="the [oxe] extra (tensorflow-datasets) is not installed")
    pytest.importorskip("tensorflow", reason="the [oxe] extra (TensorFlow) is not installed")
    from rlds_fixtures import oxe_miniature

    report = run_check("oxe", oxe_miniature(tmp_path))
    assert report.unit_kind == "episodes"
    assert (report.clips, report.videos, report.usable, report.windows) == (3, 2, 3, 20 + 3 + 4)
    assert report.short_episodes == 2
    assert report.problems == {"EpisodeWithoutInstruction": 1, "ImageKeyMissing": 1, "TextNotUtf8": 1}


def test_curation_rules_are_tried_on_a_bounded_sample_and_said_so(ego4d_root, tmp_path):
    """Ego4D's manifest turns shots on (Magma's recipe): check decodes the clips of its sample only."""
    runner = CliRunner()
    result = runner.invoke(main, ["check", "--input", "ego4d", "--root", str(ego4d_root), "--sample-clips", "1",
                                  "--report", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "curation rules on a sample of 1 of 2 usable clips" in result.output
    assert "decoded every frame of the sampled clips" in result.output
    curation = json.loads((tmp_path / "r.json").read_text())["curation"]
    assert curation["clips"] == 1 and curation["frames_decoded_for_shots"] == 16 and curation["cuts"] == 0

    off = runner.invoke(main, ["check", "--input", "ego4d", "--root", str(ego4d_root), "--set", "shots.enabled=false",
                               "--report", str(tmp_path / "off.json")])
    assert off.exit_code == 0 and json.loads((tmp_path / "off.json").read_text())["curation"] is None
    bad = runner.invoke(main, ["check", "--input", "ego4d", "--root", str(ego4d_root), "--set", "shots.enabled=maybe"])
    assert bad.exit_code == 2 and "--set shots.enabled=maybe" in bad.output
    missing = runner.invoke(main, ["check", "--input", "ego4d", "--root", str(ego4d_root),
                                   "--clip-checkpoint", str(tmp_path / "no-clip")])
    assert missing.exit_code == 2 and "is not a folder" in missing.output
