"""The marked frame (stages/marked_frame.py): Magma's frame_rightmost, the seeded draw, and the frame kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magma_data.stages.marked_frame import FIRST_FRAME, FRAME_POS, MarkedFrame, frame_pos, frame_rightmost
from magma_data.stages.track import TrackConfig, TrackStage
from stage_contract import assert_stage_contract


def magmas_frame_rightmost(tracks: np.ndarray, ratio: float) -> int:
    """The lines of Magma's data/conversations.py (~L245-250) that compute frame_rightmost, as written there."""
    pred_tracks = torch.from_numpy(tracks)[None]  # [1, T, N, 2]
    track_length = torch.norm(pred_tracks[:, 1:] - pred_tracks[:, :-1], dim=3).mean(2)
    accum_sum = torch.cumsum(track_length, dim=1) / (1e-5 + track_length.sum(1)[:, None])
    return min(max(1, (accum_sum[0] < ratio).int().sum().item()), pred_tracks.shape[1] - 1)


def _window(steps: list[float], points: int = 9) -> np.ndarray:
    """[T, N, 2] tracks whose every point moves ``steps[t]`` pixels to the right at step t."""
    x = np.concatenate([[0.0], np.cumsum(steps)])
    tracks = np.zeros((len(x), points, 2), np.float32)
    tracks[..., 0] = x[:, None] + np.arange(points)[None] * 10
    return tracks


@pytest.mark.parametrize("steps", [
    [1.0] * 15,  # even motion: the first 7 steps hold under half of it
    [0.0] * 15,  # no motion at all: every share is 0, so T - 1
    [0.0] * 14 + [5.0],  # all of it in the last step
    [5.0] + [0.0] * 14,  # all of it in the first: the count is kept at 1
    [3.0, 3.0, 0.5, 0.5, 8.0, 0.1, 0.1, 0.1],
])
def test_frame_rightmost_is_magmas(steps):
    tracks = _window(steps)
    assert frame_rightmost(tracks, 0.5) == magmas_frame_rightmost(tracks, 0.5)


def test_frame_rightmost_is_magmas_on_random_windows():
    rng = np.random.default_rng(0)
    for _ in range(200):
        tracks = np.cumsum(rng.gamma(0.5, 3.0, (16, 25, 2)) * rng.choice([-1, 1], (16, 25, 2)), axis=0)
        tracks = tracks.astype(np.float32)
        for ratio in (0.3, 0.5, 0.7):
            assert frame_rightmost(tracks, ratio) == magmas_frame_rightmost(tracks, ratio)


def test_the_draw_is_uniform_below_frame_rightmost_seeded_by_run_and_sample():
    tracks = _window([1.0] * 15)  # frame_rightmost 7
    rule = MarkedFrame("magma", 0.5, seed=3)
    draws = [rule.draw(tracks, {"sample_id": f"s{i}"}) for i in range(7000)]
    counts = np.bincount(draws, minlength=7)
    assert len(counts) == 7 and counts.min() > 850 and counts.max() < 1150  # 1000 each, none at 7 or later
    assert rule.draw(tracks, {"sample_id": "s1"}) == draws[1]  # the same sample, the same frame
    others = [MarkedFrame("magma", 0.5, seed=4).draw(tracks, {"sample_id": f"s{i}"}) for i in range(50)]
    assert others != draws[:50]  # another run seed, other frames
    assert FIRST_FRAME.draw(tracks, {}) == 0 and FIRST_FRAME.columns == () and rule.columns == (FRAME_POS,)
    assert frame_pos({}) == 0 and frame_pos({"frame_pos": np.int32(4)}) == 4


class _EvenMotion:
    """A tracker whose points move right by one pixel a frame: frame_rightmost is 7 in a 16-frame window."""

    name = "still"

    def batch_size(self, frames, height, width):
        return 8

    def track(self, video):
        batch, frames = video.shape[:2]
        tracks = np.repeat(_window([1.0] * (frames - 1))[None], batch, 0)
        return tracks, np.ones(tracks.shape[:3], bool)


def test_the_track_stage_keeps_the_drawn_frame_and_writes_frame_pos():
    frames = np.arange(16, dtype=np.uint8)[:, None, None, None] * np.ones((16, 8, 8, 3), np.uint8)
    rows = [{"sample_id": f"s{i}", "frames": frames} for i in range(12)]
    stage = TrackStage(TrackConfig(tracker="lk"), tracker=_EvenMotion(), marked_frame=MarkedFrame(seed=1))
    results = stage.process(rows)
    assert FRAME_POS in stage.columns
    assert_stage_contract(stage, results[0])
    positions = [int(result["frame_pos"]) for result in results]
    assert all(0 <= pos < 7 for pos in positions) and len(set(positions)) > 1
    for result, pos in zip(results, positions):
        assert (result["marked_frame"] == pos).all()  # the frame at frame_pos: its pixels hold its index
    pinned = TrackStage(TrackConfig(tracker="lk"), tracker=_EvenMotion())
    assert FRAME_POS not in pinned.columns
    [result] = pinned.process(rows[:1])
    assert_stage_contract(pinned, result)
    assert "frame_pos" not in result and (result["marked_frame"] == 0).all()
