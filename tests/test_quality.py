"""Quality rules after tracking (stages/quality.py): figures as columns, drops as filtered rows with rule and value."""

from __future__ import annotations

import numpy as np
import pytest

from magma_data.dropped import FILTERED, Dropped
from magma_data.execution import batch_to_rows, new_unit_row, rows_to_batch, run_stage
from magma_data.sources.base import Clip
from magma_data.stages.base import Filtered
from magma_data.stages.camera import CameraConfig, CameraStage
from magma_data.stages.decode import DecodeConfig, DecodeStage
from magma_data.stages.marks import MarksConfig, MarksStage
from magma_data.stages.plan import PlanConfig, VideoInfo, plan_windows
from magma_data.stages.quality import QualityConfig, QualityStage
from magma_data.stages.track import TrackConfig, TrackStage
from stage_contract import assert_stage_contract

FRAMES, WIDTH, HEIGHT = 16, 320, 240


def still_camera_row(moving_px: float = 3.0) -> dict:
    """10 points: 3 move ``moving_px`` per frame, 3 stand still, 4 are lost after frame 3."""
    start = np.stack([np.linspace(40, 280, 10), np.full(10, 120.0)], axis=-1)
    velocity = np.zeros((10, 2))
    velocity[:3, 0] = moving_px
    tracks = start + velocity * np.arange(FRAMES)[:, None, None]
    visibility = np.ones((FRAMES, 10), bool)
    visibility[4:, 6:] = False
    return {"sample_id": "s", "tracks": tracks.astype(np.float32), "visibility": visibility, "image_width": WIDTH,
            "image_height": HEIGHT, "camera_motion": np.bool_(False), "homography_ok": np.zeros(FRAMES, bool),
            "camera_status": "static"}


def test_figures_are_the_kept_traces_mean_motion_and_the_share_of_points_too_rarely_seen():
    stage = QualityStage(QualityConfig())
    result = stage(still_camera_row(moving_px=3.0))
    assert_stage_contract(stage, result)
    assert result["invisible_fraction"] == pytest.approx(0.4)  # 4 of 10 seen in 4 of 16 frames
    assert result["mean_motion_px"] == pytest.approx(1.5)  # kept: 3 at 3 px, 3 at 0 px
    stricter = QualityStage(QualityConfig(), MarksConfig(min_visible_fraction=0.0))  # marks' filter decides "kept"
    assert stricter(still_camera_row())["invisible_fraction"] == pytest.approx(0.0)


def test_every_rule_is_off_by_default_and_each_names_its_drop_and_value():
    row = still_camera_row(moving_px=3.0)
    assert not QualityConfig().enabled
    assert not isinstance(QualityStage(QualityConfig())(row), Filtered)

    slow = QualityStage(QualityConfig(min_mean_motion_px=2.0))(row)
    assert isinstance(slow, Filtered) and slow.rule == "MotionBelowMinimum"
    assert slow.value == pytest.approx(1.5) and "1.500 px per frame" in slow.message
    assert not isinstance(QualityStage(QualityConfig(min_mean_motion_px=1.0))(row), Filtered)

    hidden = QualityStage(QualityConfig(max_invisible_fraction=0.3))(row)
    assert hidden.rule == "TooManyInvisiblePoints" and hidden.value == pytest.approx(0.4)
    assert not isinstance(QualityStage(QualityConfig(max_invisible_fraction=0.5))(row), Filtered)


def test_a_camera_fallback_is_dropped_only_when_asked_and_names_the_unaligned_frames():
    row = {**still_camera_row(), "camera_motion": np.bool_(True), "homography_ok": np.ones(FRAMES, bool)}
    row["homography_ok"][[5, 9]] = False
    row["camera_status"] = "fallback: frames 5,9 could not be fitted (5: ...; 9: ...)"
    assert not isinstance(QualityStage(QualityConfig())(row), Filtered)
    every_rule = QualityConfig(drop_camera_fallback=True, min_mean_motion_px=100.0, max_invisible_fraction=0.0)
    dropped = QualityStage(every_rule)(row)
    assert dropped.rule == "CameraFallback"  # the first rule in order names the drop
    assert "2 of the window's frames" in dropped.message and dropped.value == 2
    aligned = {**row, "homography_ok": np.ones(FRAMES, bool), "camera_status": "applied"}
    assert not isinstance(QualityStage(QualityConfig(drop_camera_fallback=True))(aligned), Filtered)


def test_on_real_tracks_a_dropped_window_skips_marks_and_a_kept_one_gets_its_figures(video_clips):
    path = video_clips / "bear.mp4"
    clip = Clip(clip_id="bear", video_uid="bear", video_path=str(path))
    planned = plan_windows(clip, VideoInfo(fps=30.0, num_frames=82), "src", PlanConfig())[:2]
    batch = rows_to_batch([new_unit_row(row) for row in planned])
    for stage in (DecodeStage(DecodeConfig(height=128)), TrackStage(TrackConfig(tracker="lk", grid_size=8)),
                  CameraStage(CameraConfig(force=True))):
        batch = run_stage(batch, stage)
    [measured, _] = batch_to_rows(run_stage(batch, QualityStage(QualityConfig())))
    assert measured["mean_motion_px"] > 0 and 0 <= measured["invisible_fraction"] < 1
    assert Dropped.of_row(measured) is None

    above = float(measured["mean_motion_px"]) + 1.0  # the first window moves less than this
    rows = batch_to_rows(run_stage(run_stage(batch, QualityStage(QualityConfig(min_mean_motion_px=above))),
                                   MarksStage(MarksConfig())))
    first = rows[0]
    dropped = Dropped.of_row(first)
    assert (dropped.kind, dropped.reason) == (FILTERED, "MotionBelowMinimum")
    assert dropped.value == pytest.approx(float(measured["mean_motion_px"]))
    assert len(first["mark_ids"]) == 0  # placeholders: marks never ran on it
