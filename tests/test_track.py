from __future__ import annotations

import numpy as np
import pytest

from magma_data.sources.sample import SceneSpec, render_scene
from magma_data.stages.track import LucasKanadeTracker, TrackConfig, TrackStage, grid_points


def _ground_truth(clip, points):
    """Where the camera carries each frame-0 background point in every frame."""
    cameras = clip.world_to_image
    out = []
    for camera in cameras:
        motion = camera @ np.linalg.inv(cameras[0])
        mapped = np.c_[points, np.ones(len(points))] @ motion.T
        out.append(mapped[:, :2] / mapped[:, 2:])
    return np.stack(out)


def test_grid_is_inset_like_cotracker3_and_row_major():
    grid = grid_points(3, 384, 512)
    assert grid.shape == (9, 2)
    assert grid[0].tolist() == [8.0, 8.0]
    assert grid[-1].tolist() == [504.0, 376.0]
    assert grid[1][1] == grid[0][1]  # x varies fastest


def test_lucas_kanade_follows_a_panning_zooming_camera():
    spec = SceneSpec(width=320, height=240, num_frames=12, pan=(4.0, 1.0), zoom=1.01, roll_deg=0.2, seed=5)
    clip = render_scene(spec)
    tracks, visible = LucasKanadeTracker(grid_size=10).track(clip.frames[None].transpose(0, 1, 4, 2, 3))
    assert tracks.shape == (1, 12, 100, 2) and visible.shape == (1, 12, 100)
    truth = _ground_truth(clip, tracks[0, 0])
    error = np.linalg.norm(tracks[0] - truth, axis=-1)[visible[0]]
    assert np.median(error) < 0.3 and np.percentile(error, 95) < 1.5
    assert visible[0].mean() > 0.7


def test_points_that_leave_the_frame_become_invisible():
    spec = SceneSpec(width=320, height=240, num_frames=16, pan=(12.0, 0.0), seed=6)
    clip = render_scene(spec)
    tracks, visible = LucasKanadeTracker(grid_size=8).track(clip.frames[None].transpose(0, 1, 4, 2, 3))
    left_column = np.arange(0, 64, 8)
    assert not visible[0, -1, left_column].any()  # the camera pans right: the left edge leaves


class _FlakyTracker:
    """Fails like CUDA does when a batch is too big, and on one poisoned window."""

    name = "flaky"

    def __init__(self, max_batch: int, chosen_batch: int = 8):
        self.max_batch, self.chosen_batch, self.calls = max_batch, chosen_batch, []

    def batch_size(self, frames, height, width):
        return self.chosen_batch

    def track(self, video):
        self.calls.append(len(video))
        if len(video) > self.max_batch:
            raise type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory")
        if (video[:, 0, 0, 0, 0] == 255).any():
            raise ValueError("poisoned window")
        b, t = video.shape[:2]
        return np.zeros((b, t, 4, 2), np.float32), np.ones((b, t, 4), bool)


def _rows(count, poisoned=()):
    rows = []
    for i in range(count):
        frames = np.zeros((3, 8, 8, 3), np.uint8)
        if i in poisoned:
            frames[0, 0, 0, 0] = 255
        rows.append({"frames": frames})
    return rows


def test_out_of_memory_halves_the_batch_and_records_it():
    tracker = _FlakyTracker(max_batch=2)
    results = TrackStage(TrackConfig(batch_size=8), tracker=tracker).process(_rows(8))
    assert tracker.calls[0] == 8 and max(tracker.calls[1:]) <= 4
    assert all(r["track_oom_halvings"] == 2 for r in results)
    assert all(r["tracks"].shape == (3, 4, 2) for r in results)


def test_a_failing_window_fails_alone():
    results = TrackStage(TrackConfig(batch_size=4), tracker=_FlakyTracker(max_batch=8)).process(_rows(4, poisoned={2}))
    assert isinstance(results[2], ValueError)
    assert all(isinstance(results[i], dict) for i in (0, 1, 3))


def test_windows_of_different_shapes_are_batched_separately():
    tracker = _FlakyTracker(max_batch=8)
    rows = _rows(3) + [{"frames": np.zeros((3, 16, 8, 3), np.uint8)}]
    results = TrackStage(TrackConfig(batch_size=8), tracker=tracker).process(rows)
    assert sorted(tracker.calls) == [1, 3] and all(isinstance(r, dict) for r in results)


def test_without_a_batch_size_the_tracker_chooses_it_for_the_shape():
    tracker = _FlakyTracker(max_batch=8, chosen_batch=3)
    results = TrackStage(TrackConfig(batch_size=None), tracker=tracker).process(_rows(7))
    assert tracker.calls == [3, 3, 1] and all(isinstance(r, dict) for r in results)
    tracker = _FlakyTracker(max_batch=8, chosen_batch=3)
    TrackStage(TrackConfig(batch_size=5), tracker=tracker).process(_rows(7))
    assert tracker.calls == [5, 2]  # --batch-size wins over the tracker's choice


def test_unknown_tracker_names_are_refused():
    from magma_data.stages.track import make_tracker

    with pytest.raises(ValueError, match="use auto, lk, cotracker3, tapnextpp or released"):
        make_tracker(TrackConfig(tracker="raft"))


def test_output_and_placeholders_match_the_declared_columns():
    from stage_contract import assert_stage_contract

    stage = TrackStage(TrackConfig(tracker="lk", grid_size=4))
    frames = render_scene(SceneSpec(width=64, height=48, num_frames=3, seed=1)).frames
    [result] = stage.process([{"frames": frames}])
    assert_stage_contract(stage, result)
