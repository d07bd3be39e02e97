from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from magma_data.sources.base import Clip, ClipProblem
from magma_data.stages.plan import ClipTooShort, PlanConfig, VideoInfo, plan_source, plan_windows


def _clip(**kwargs) -> Clip:
    return Clip(clip_id="c", video_uid="v", video_path="/nowhere.mp4", **kwargs)


def test_windows_tile_the_clip_at_native_rate():
    rows = plan_windows(_clip(), VideoInfo(fps=30.0, num_frames=50), "src", PlanConfig())
    assert [r["frame_index"] for r in rows] == [0, 16, 32]
    assert rows[1]["frame_indices"].tolist() == list(range(16, 32))
    assert len({r["sample_id"] for r in rows}) == 3


def test_resampling_keeps_native_frame_indices():
    rows = plan_windows(_clip(), VideoInfo(fps=30.0, num_frames=100), "src", PlanConfig(window_len=4, window_stride=4, fps=10.0))
    assert rows[0]["frame_indices"].tolist() == [0, 3, 6, 9]
    assert rows[1]["frame_index"] == 12
    assert rows[0]["window_fps"] == 10.0 and rows[0]["fps"] == 30.0


def test_clip_span_comes_from_timestamps():
    rows = plan_windows(_clip(start_sec=2.0, end_sec=3.0), VideoInfo(fps=25.0, num_frames=200), "src", PlanConfig())
    assert [r["frame_index"] for r in rows] == [50]
    assert rows[0]["frame_indices"][-1] == 65


def test_a_clip_shorter_than_one_window_is_reported():
    with pytest.raises(ClipTooShort, match="fewer than one window of 16"):
        plan_windows(_clip(), VideoInfo(fps=30.0, num_frames=15), "src", PlanConfig())


def test_sample_ids_are_stable_and_depend_on_window_geometry():
    info = VideoInfo(fps=30.0, num_frames=64)
    first = plan_windows(_clip(), info, "src", PlanConfig())
    again = plan_windows(_clip(), info, "src", PlanConfig())
    other = plan_windows(_clip(), info, "src", PlanConfig(window_len=8, window_stride=16))
    assert [r["sample_id"] for r in first] == [r["sample_id"] for r in again]
    assert first[0]["sample_id"] != other[0]["sample_id"]


def test_plan_source_turns_every_unusable_unit_into_an_error_row(tmp_path):
    not_a_video = tmp_path / "fake.mp4"
    not_a_video.write_text("hello")
    clips = [
        _clip(fps=30.0, num_frames=32),
        ClipProblem(unit_id="src/missing", error_class="VideoMissing", message="gone"),
        Clip(clip_id="fake", video_uid="fake", video_path=str(not_a_video)),
        Clip(clip_id="short", video_uid="short", video_path="/x.mp4", fps=30.0, num_frames=3),
    ]
    units = plan_source(clips, "src", PlanConfig())
    errors = {u["unit_id"]: u["drop_reason"] for u in units if u.get("drop_stage")}
    assert errors == {"src/missing": "VideoMissing", "src/fake": "VideoUnreadable", "src/short": "ClipTooShort"}
    assert sum(1 for u in units if not u.get("drop_stage")) == 2
    assert np.all([u["drop_stage"] == "plan" for u in units if u.get("drop_stage")])


def test_limit_stops_planning_early():
    clips = [Clip(clip_id=f"c{i}", video_uid="v", video_path="/v.mp4", fps=30.0, num_frames=64) for i in range(50)]
    assert len(plan_source(clips, "src", PlanConfig(), limit=5)) == 5


def test_each_video_is_probed_once_however_many_clips_it_holds(monkeypatch):
    from magma_data.stages import plan

    calls = []
    monkeypatch.setattr(plan, "probe_video", lambda path: calls.append(path) or VideoInfo(fps=30.0, num_frames=300))
    clips = [Clip(clip_id=f"seg{i}", video_uid="v", video_path="/v.mp4", start_sec=i, end_sec=i + 1.0) for i in range(6)]
    units = plan_source(clips, "src", PlanConfig())
    assert calls == ["/v.mp4"] and len(units) == 6


def test_rows_name_videos_relative_to_the_root_that_holds_them_and_readers_find_them_again(tmp_path):
    from magma_data.sources.base import relative_video_paths, video_file

    first, second = tmp_path / "a", tmp_path / "b"
    (first / "sub").mkdir(parents=True)
    second.mkdir()
    (first / "sub" / "v.mp4").write_bytes(b"")
    (second / "w.mp4").write_bytes(b"")
    units = [{"unit_id": "s/v", "video_path": str(first / "sub" / "v.mp4")},
             {"unit_id": "s/w", "video_path": str(second / "w.mp4"), "drop_kind": "error",
              "drop_message": f"{second / 'w.mp4'}: no frames"},
             {"unit_id": "s/x", "video_path": "/elsewhere/x.mp4"}]
    rows = relative_video_paths(units, [first, second])
    assert [row["video_path"] for row in rows] == ["sub/v.mp4", "w.mp4", "/elsewhere/x.mp4"]
    assert rows[1]["drop_message"] == "w.mp4: no frames"  # messages name the file as the row does
    assert video_file("w.mp4", [first, second]) == second / "w.mp4"  # the first root that holds it
    assert video_file("gone.mp4", [first, second]) == first / "gone.mp4"  # an error names where it looked
    assert video_file("/elsewhere/x.mp4", [first]) == Path("/elsewhere/x.mp4")  # rows made before: as they are
