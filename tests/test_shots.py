"""Shot boundaries (stages/shots.py) and windows planned inside shots (stages/plan.py), on real video."""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from media import JOIN, JOLT, joined_video, shaky_join_video

from magma_data.dropped import FILTERED, Dropped, record
from magma_data.sources.base import Clip
from magma_data.stages.decode import DecodeConfig
from magma_data.stages import shots as shots_module
from magma_data.stages.plan import PlanConfig, VideoInfo, plan_source, plan_windows, probe_video
from magma_data.stages.shots import (
    ShotCache,
    ShotDetector,
    ShotsConfig,
    ShotsUnavailable,
    find_cuts,
    require_scenedetect,
    shot_spans,
)

#: The frame at which the second video starts in the joined clip.
CUT = 50


def hard_cut_video(first: Path, second: Path, output: Path, cut: int = CUT) -> Path:
    """``first``'s frames up to ``cut``, then all of ``second``'s (resized to ``first``'s size), as one
    H.264 file: a hard cut at frame ``cut``."""
    return joined_video([(first, 0, cut), (second, 0, None)], output)


@pytest.fixture(scope="module")
def two_videos(video_clips) -> tuple[Path, Path]:
    """Two different videos of one size and rate: a bear walking, then a paraglider in the sky (the real
    clips, or their stand-ins: two other scenes)."""
    return video_clips / "bear.mp4", video_clips / "paragliding.mp4"


@pytest.fixture(scope="module")
def cut_video(two_videos, tmp_path_factory) -> Path:
    return hard_cut_video(*two_videos, tmp_path_factory.mktemp("shots") / "bear_then_paraglider.mp4")


def _clip(path: Path, **kwargs) -> Clip:
    return Clip(clip_id="joined", video_uid="joined", video_path=str(path), task="a bear, then a paraglider", **kwargs)


def test_the_defaults_are_the_detector_magma_called():
    from scenedetect import ContentDetector
    from scenedetect.scene_manager import DEFAULT_MIN_WIDTH

    defaults = inspect.signature(ContentDetector.__init__).parameters
    config = ShotsConfig()
    assert not config.enabled
    assert config.threshold == defaults["threshold"].default
    assert config.min_scene_len == defaults["min_scene_len"].default
    assert config.downscale_to == DEFAULT_MIN_WIDTH
    assert (config.filter_mode, config.downscale) == ("suppress", "integer")  # 0.6's rules, not 0.7's defaults


def _cuts_at(length: int, at: list[int]) -> np.ndarray:
    """``length`` frames whose content switches between dark and light at each index of ``at``: those
    frames, and only those, score over the threshold."""
    rng = np.random.default_rng(0)
    dark, light = rng.integers(0, 60, (48, 64, 3)), rng.integers(180, 255, (48, 64, 3))
    switches = np.zeros(length, int)
    switches[at] = 1
    return np.where((np.cumsum(switches) % 2 == 1)[:, None, None, None], light, dark).astype(np.uint8)


def test_a_cut_closer_than_min_scene_len_to_the_last_cut_is_dropped_as_0_6_dropped_it():
    """0.6.0-0.6.3: a frame over the threshold is a cut when it is at least 15 frames after the last cut
    (and after the span's first frame); nothing else moves the mark the 15 frames count from."""
    assert find_cuts(_cuts_at(60, [15]), 30.0, ShotsConfig()) == [15]  # 15 after the first frame
    assert find_cuts(_cuts_at(60, [14]), 30.0, ShotsConfig()) == []  # 14 after: too early
    assert find_cuts(_cuts_at(60, [20, 35]), 30.0, ShotsConfig()) == [20, 35]  # exactly 15 apart: both
    assert find_cuts(_cuts_at(60, [20, 34]), 30.0, ShotsConfig()) == [20]
    # the frames over the threshold in between do not move the mark, as they do with merge
    assert find_cuts(_cuts_at(80, [20, 26, 30, 40]), 30.0, ShotsConfig()) == [20, 40]
    assert find_cuts(_cuts_at(80, [20, 26, 30, 40]), 30.0, ShotsConfig(filter_mode="merge")) == [20]


def test_frames_are_shrunk_by_0_6s_integer_factor_of_the_width():
    from magma_data.stages.shots import downscale_factor

    config = ShotsConfig()
    assert [downscale_factor(width, 480, config) for width in (255, 256, 511, 512, 854, 1296)] == [1, 1, 1, 2, 3, 5]
    assert downscale_factor(368, 480, config) == 1  # a portrait clip: by its width, so not shrunk at all
    exact = ShotsConfig(downscale="exact")
    assert downscale_factor(854, 480, exact) == pytest.approx(854 / 256)
    assert downscale_factor(368, 480, exact) == pytest.approx(480 / 256)


@pytest.fixture(scope="module")
def shaky_join(two_videos, tmp_path_factory) -> Path:
    return shaky_join_video(*two_videos, tmp_path_factory.mktemp("shaky") / "shaky_bear_then_paraglider.mp4")


def test_a_join_a_few_frames_after_shaky_frames_is_a_cut_and_no_window_spans_it(shaky_join):
    """The hand-held jolt at 28 is a cut, and the join at 45 is one too; 0.7's defaults (merge, and frames
    shrunk to 256 px) fold the join into the shaking from 32 to 38 and plan a window across it."""
    info = probe_video(str(shaky_join))
    assert ShotDetector(ShotsConfig())(str(shaky_join), 0, info.num_frames, info.fps) == [JOLT[0], JOIN]
    by_pyav = ShotDetector(ShotsConfig(), DecodeConfig(backend="pyav"))
    assert by_pyav(str(shaky_join), 0, info.num_frames, info.fps) == [JOLT[0], JOIN]

    clip = _clip(shaky_join)
    units = plan_windows(clip, info, "src", PlanConfig(), shots=ShotDetector(ShotsConfig()))
    windows = [unit for unit in units if not unit.get("drop_kind")]
    assert windows and not any(row["frame_indices"][0] < JOIN <= row["frame_indices"][-1] for row in windows)
    assert [row["frame_index"] for row in windows] == [0, 28, 45, 61, 77, 93]

    scenedetect_07 = ShotsConfig(filter_mode="merge", downscale="exact")
    assert ShotDetector(scenedetect_07)(str(shaky_join), 0, info.num_frames, info.fps) == [JOLT[0]]
    spanning = plan_windows(clip, info, "src", PlanConfig(), shots=ShotDetector(scenedetect_07))
    assert any(row["frame_indices"][0] < JOIN <= row["frame_indices"][-1] for row in spanning)  # what it guards


def test_the_hard_cut_is_found_at_its_frame_as_scenedetect_finds_it(cut_video, two_videos):
    from scenedetect import ContentDetector, detect

    info = probe_video(str(cut_video))
    cuts = ShotDetector(ShotsConfig())(str(cut_video), 0, info.num_frames, info.fps)
    assert cuts == [CUT]
    scenes = detect(str(cut_video), ContentDetector())  # Magma's call, through scenedetect's own decoder
    assert [(start.frame_num, end.frame_num) for start, end in scenes] == [(0, CUT), (CUT, info.num_frames)]
    for source in two_videos:  # neither source has a cut of its own: the one found is the join
        source_info = probe_video(str(source))
        assert ShotDetector(ShotsConfig())(str(source), 0, source_info.num_frames, source_info.fps) == []


def test_pyav_finds_the_same_cuts_as_decord_and_a_span_is_searched_only_inside(cut_video):
    info = probe_video(str(cut_video))
    by_pyav = ShotDetector(ShotsConfig(), DecodeConfig(backend="pyav"))(str(cut_video), 0, info.num_frames, info.fps)
    assert by_pyav == [CUT]
    detector = ShotDetector(ShotsConfig())
    assert detector(str(cut_video), 20, 45, info.fps) == []  # before the cut
    assert detector(str(cut_video), 30, 90, info.fps) == [CUT]


def test_no_planned_window_spans_the_cut_and_both_shots_get_windows(cut_video):
    info = probe_video(str(cut_video))
    clip = _clip(cut_video)
    unsplit = plan_windows(clip, info, "src", PlanConfig())
    assert any(row["frame_indices"][0] < CUT <= row["frame_indices"][-1] for row in unsplit)  # what shots prevent

    units = plan_windows(clip, info, "src", PlanConfig(), shots=ShotDetector(ShotsConfig()))
    windows = [unit for unit in units if not unit.get("drop_kind")]
    assert not any(row["frame_indices"][0] < CUT <= row["frame_indices"][-1] for row in windows)
    assert [row["frame_index"] for row in windows] == [0, 16, 32, 50, 66, 82, 98]
    assert all(len(row["frame_indices"]) == 16 for row in windows)
    assert len(units) == len(windows)  # both shots hold windows: nothing is filtered


def test_a_shot_too_short_for_a_window_is_a_filtered_unit_with_its_rule_and_length():
    clip = Clip(clip_id="c", video_uid="v", video_path="/nowhere.mp4")
    cuts = [40, 50]  # shots [0, 40), [40, 50), [50, 90)
    units = plan_windows(clip, VideoInfo(fps=30.0, num_frames=90), "src", PlanConfig(),
                         shots=lambda path, start, end, fps: cuts)
    windows = [unit for unit in units if not unit.get("drop_kind")]
    assert [row["frame_index"] for row in windows] == [0, 16, 50, 66]
    [short] = [unit for unit in units if unit.get("drop_kind")]
    dropped = Dropped.of_row(short)
    assert (dropped.kind, dropped.stage, dropped.reason) == (FILTERED, "shots", "ShotTooShort")
    assert "frames 40..49 holds 10 frames" in dropped.message and dropped.value == 10
    filtered_row = record(short, dropped, "hash")
    assert (filtered_row["rule"], filtered_row["value"], filtered_row["frame_index"], filtered_row["unit_id"]) == (
        "ShotTooShort", 10, 40, "src/c/shot-00000040")
    assert [unit["frame_index"] for unit in units] == sorted(unit["frame_index"] for unit in units)
    assert len({unit["unit_id"] for unit in units}) == len(units)


def test_shots_split_resampled_windows_and_the_window_cap_counts_all_shots():
    clip = Clip(clip_id="c", video_uid="v", video_path="/nowhere.mp4")
    config = PlanConfig(window_len=4, window_stride=4, fps=10.0)
    units = plan_windows(clip, VideoInfo(fps=30.0, num_frames=120), "src", config,
                         shots=lambda path, start, end, fps: [31])
    for row in units:
        assert row["frame_indices"][0] >= 31 or row["frame_indices"][-1] < 31
    assert [row["frame_index"] for row in units] == [0, 12, 31, 43, 55, 67, 79, 91, 103]
    capped = plan_windows(clip, VideoInfo(fps=30.0, num_frames=120), "src",
                          PlanConfig(window_len=4, window_stride=4, fps=10.0, max_windows_per_clip=3),
                          shots=lambda path, start, end, fps: [31])
    assert [row["frame_index"] for row in capped] == [0, 55, 103]


def test_without_cuts_the_plan_is_todays():
    clip = Clip(clip_id="c", video_uid="v", video_path="/nowhere.mp4", start_sec=1.0, end_sec=4.0)
    info = VideoInfo(fps=29.97, num_frames=200)
    config = PlanConfig(window_len=8, window_stride=5, fps=12.5)
    today = plan_windows(clip, info, "src", config)
    no_cuts = plan_windows(clip, info, "src", config, shots=lambda path, start, end, fps: [])
    assert [row["unit_id"] for row in today] == [row["unit_id"] for row in no_cuts]
    for a, b in zip(today, no_cuts):
        np.testing.assert_array_equal(a["frame_indices"], b["frame_indices"])


def test_shot_spans_cover_the_clip_and_ignore_cuts_outside_it():
    assert shot_spans([], 5, 20) == [(5, 20)]
    assert shot_spans([12, 3, 12, 20, 25], 5, 20) == [(5, 12), (12, 20)]


def test_find_cuts_numbers_frames_from_the_span_start():
    rng = np.random.default_rng(0)
    dark, light = rng.integers(0, 60, (1, 48, 64, 3)), rng.integers(180, 255, (1, 48, 64, 3))
    frames = np.concatenate([np.repeat(dark, 20, 0), np.repeat(light, 20, 0)]).astype(np.uint8)
    assert find_cuts(frames, 25.0, ShotsConfig(), first_frame=100) == [120]
    assert find_cuts(frames[:0], 25.0, ShotsConfig()) == []


def test_a_resume_reads_the_cache_and_a_changed_video_or_setting_is_detected_again(cut_video, tmp_path, monkeypatch):
    video = tmp_path / "joined.mp4"
    video.write_bytes(cut_video.read_bytes())
    info = probe_video(str(video))
    cache = ShotCache(tmp_path / "state" / "shots")
    assert ShotDetector(ShotsConfig(), cache=cache)(str(video), 0, info.num_frames, info.fps) == [CUT]
    assert cache.path(str(video)).is_file()

    calls = []
    real = shots_module.find_cuts
    monkeypatch.setattr(shots_module, "find_cuts", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    resumed = ShotDetector(ShotsConfig(), cache=ShotCache(tmp_path / "state" / "shots"))
    assert resumed(str(video), 0, info.num_frames, info.fps) == [CUT]
    assert calls == []  # read, not decoded

    assert ShotDetector(ShotsConfig(threshold=90.0), cache=cache)(str(video), 0, info.num_frames, info.fps) == []
    assert len(calls) == 1  # other settings: detected afresh
    os.utime(video, ns=(0, 10**9))
    assert resumed(str(video), 0, info.num_frames, info.fps) == [CUT]
    assert len(calls) == 2  # the file changed: detected afresh


def test_a_video_that_cannot_be_decoded_for_shots_is_an_error_unit_of_its_clip(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 4096)
    clips = [Clip(clip_id="broken", video_uid="broken", video_path=str(broken), fps=30.0, num_frames=64)]
    [unit] = plan_source(clips, "src", PlanConfig(), shots=ShotDetector(ShotsConfig()))
    assert (unit["drop_kind"], unit["drop_reason"], unit["unit_id"]) == ("error", "ShotDetectionFailed", "src/broken")
    assert "decord:" in unit["drop_message"] and "pyav:" in unit["drop_message"]  # both backends tried
    assert "shots.enabled=false" in unit["drop_message"]


def test_plan_source_plans_every_clip_inside_its_shots(cut_video):
    clips = [_clip(cut_video),
             Clip(clip_id="middle", video_uid="joined", video_path=str(cut_video), start_sec=1.0, end_sec=3.0)]
    units = plan_source(clips, "src", PlanConfig(), shots=ShotDetector(ShotsConfig()))
    by_clip = {}
    for unit in units:
        by_clip.setdefault(unit["clip_id"], []).append(unit["frame_index"])
    assert by_clip == {"joined": [0, 16, 32, 50, 66, 82, 98], "middle": [30, 50, 66]}


def test_without_scenedetect_detection_says_how_to_install_it(monkeypatch, cut_video):
    monkeypatch.setitem(sys.modules, "scenedetect", None)  # as if the curate extra were not installed
    with pytest.raises(ShotsUnavailable, match=r"pip install 'magma-data\[curate\]'"):
        require_scenedetect()
    with pytest.raises(ShotsUnavailable):
        ShotDetector(ShotsConfig())(str(cut_video), 0, 60, 30.0)
