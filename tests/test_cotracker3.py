"""CoTracker3: checkpoint compatibility, loading, and the predictor's contracts.

Most cases build models with random weights (seeded), a small model resolution and few virtual
tracks, so each forward takes well under a second on a laptop CPU. Parity with the reference implementation is
checked outside the test suite (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from magma_data.models.cotracker3 import CoTracker3Offline, CoTracker3Online
from magma_data.models.cotracker3_predictor import (
    CHECKPOINT_ENV,
    CoTracker3PointTracker,
    CoTracker3Predictor,
    find_checkpoint,
    load_cotracker3,
)
from magma_data.stages.track import grid_points

FIXTURE = Path(__file__).parent / "fixtures" / "cotracker3_state_dict.txt"
# Fast test models: 64x96 model resolution (released: 384x512) and 8 virtual tracks (released: 64).
SMALL = (64, 96)
MODELS = {"offline": CoTracker3Offline, "online": CoTracker3Online}


def reference_table(variant: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in FIXTURE.read_text().splitlines():
        if line.startswith("#"):
            continue
        row_variant, key, shape = line.split()
        if row_variant == variant:
            rows.append((key, tuple(int(s) for s in shape.split(","))))
    return rows


def small_predictor(variant: str, seed: int = 0) -> CoTracker3Predictor:
    torch.manual_seed(seed)
    model = MODELS[variant](model_resolution=SMALL, num_virtual_tracks=8)
    # Random heads are ~0 (points would barely move); larger ones make the updates matter.
    with torch.no_grad():
        model.updateformer.flow_head.weight.normal_(std=0.05)
        model.updateformer.vis_conf_head.weight.normal_(std=0.05)
    return CoTracker3Predictor(model)


def random_video(batch: int, frames: int, height: int = 48, width: int = 80, seed: int = 0) -> torch.Tensor:
    """A textured video whose content drifts right, so tracking has something to follow."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(batch, 1, 3, height, width + frames, generator=g) * 255
    return torch.cat([base[..., t : t + width] for t in range(frames)], dim=1)


@pytest.fixture(scope="module")
def offline() -> CoTracker3Predictor:
    return small_predictor("offline")


@pytest.fixture(scope="module")
def online() -> CoTracker3Predictor:
    return small_predictor("online")


# --- checkpoint compatibility -------------------------------------------------------------


@pytest.mark.parametrize("variant", ["offline", "online"])
def test_state_dict_keys_and_shapes_equal_the_reference_table(variant):
    state = MODELS[variant]().state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == reference_table(variant)


@pytest.mark.parametrize("variant", ["offline", "online"])
def test_reference_shaped_state_dict_loads_strictly(variant):
    torch.manual_seed(0)
    state = {key: torch.randn(shape) for key, shape in reference_table(variant)}
    model = MODELS[variant]()
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.updateformer.virual_tracks, state["updateformer.virual_tracks"])


def test_parameter_count_equals_the_released_network():
    assert sum(p.numel() for p in CoTracker3Offline().parameters()) == 25_385_700


# --- loading --------------------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "model-wrapper"])
def test_checkpoint_round_trip_restores_every_tensor(tmp_path, wrapped):
    torch.manual_seed(0)
    state = CoTracker3Online().state_dict()
    path = tmp_path / "scaled_online.pth"
    torch.save({"model": state, "step": 3} if wrapped else state, path)
    loaded = load_cotracker3(path, "online", device="cpu").model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_checkpoint_of_the_other_variant_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "scaled_offline.pth"
    torch.save(CoTracker3Offline().state_dict(), path)
    with pytest.raises(ValueError, match="scaled_online.pth"):
        load_cotracker3(path, "online", device="cpu")


def test_missing_checkpoint_error_says_where_to_get_it_and_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as missing:
        load_cotracker3(tmp_path / "nope.pth", "offline")
    with pytest.raises(FileNotFoundError) as unnamed:
        load_cotracker3(None, "online")
    for error, name in ((missing, "scaled_offline.pth"), (unnamed, "scaled_online.pth")):
        message = str(error.value)
        assert "facebook/cotracker3" in message and name in message
        assert str(tmp_path / "torch" / "hub" / "checkpoints" / name) in message
    assert "nope.pth" in str(missing.value)


def test_find_checkpoint_prefers_explicit_then_env_var_then_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    assert find_checkpoint(None, "offline") is None

    cached = tmp_path / "torch" / "hub" / "checkpoints" / "scaled_offline.pth"
    cached.parent.mkdir(parents=True)
    cached.touch()
    assert find_checkpoint(None, "offline") == cached
    assert find_checkpoint(None, "online") is None

    from_env = tmp_path / "env.pth"
    from_env.touch()
    monkeypatch.setenv(CHECKPOINT_ENV, str(from_env))
    assert find_checkpoint(None, "offline") == from_env

    explicit = tmp_path / "explicit.pth"
    explicit.touch()
    assert find_checkpoint(str(explicit), "offline") == explicit
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        find_checkpoint(str(tmp_path / "missing.pth"), "offline")


# --- predictor contracts ----------------------------------------------------------------------


def test_grid_is_inset_by_the_reference_margin():
    grid = torch.from_numpy(grid_points(15, 384, 512))[None]  # the one query grid, as the predictor uses it
    assert grid.shape == (1, 225, 2)
    assert torch.allclose(grid.amin(dim=1), torch.tensor([[8.0, 8.0]]))
    assert torch.allclose(grid.amax(dim=1), torch.tensor([[504.0, 376.0]]))
    assert torch.equal(grid[0, 1, 1], grid[0, 0, 1])  # row-major: x varies fastest


@pytest.mark.parametrize("variant,frames", [("offline", 6), ("online", 20)])
def test_a_batch_of_windows_gives_the_same_outputs_as_one_window_at_a_time(variant, frames, offline, online):
    """In float64, so that fp32 rounding (which random weights amplify) cannot hide cross-talk.

    The online model keeps its window outputs in fp32, as the reference does, hence atol 1e-6.
    """
    model = copy.deepcopy({"offline": offline, "online": online}[variant].model).double()
    video = random_video(2, frames, *SMALL).double()
    queries = torch.tensor([[[0.0, 20.0, 20.0], [3.0, 50.0, 30.0], [12.0, 90.0, 60.0]]]).double()
    queries[..., 0] %= frames
    queries = queries.repeat(2, 1, 1)
    with torch.no_grad():
        batched = model(video, queries, iters=2)
        singles = [model(video[i : i + 1], queries[i : i + 1], iters=2) for i in range(2)]
    for output, per_window in zip(batched, zip(*singles)):
        torch.testing.assert_close(output, torch.cat(per_window).to(output.dtype), atol=1e-6, rtol=0)


def test_predictor_tracks_a_batch_like_one_window_at_a_time(offline):
    video = random_video(2, 6)
    tracks, visible = offline(video, grid_size=3)
    singles = [offline(video[i : i + 1], grid_size=3)[0] for i in range(2)]
    # fp32: the batched matmuls round differently, and random weights amplify that; within parity budget
    torch.testing.assert_close(tracks, torch.cat(singles), atol=0.05, rtol=0)
    assert visible.shape == (2, 6, 9)


def test_same_input_gives_identical_tracks(offline):
    video = random_video(1, 8)
    first, second = offline(video, grid_size=3), offline(video, grid_size=3)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_grid_queries_give_documented_shapes_and_dtypes(offline):
    tracks, visible = offline(random_video(2, 8), grid_size=4)
    assert tracks.shape == (2, 8, 16, 2) and tracks.dtype == torch.float32
    assert visible.shape == (2, 8, 16) and visible.dtype == torch.bool
    assert tracks.abs().sum() > 0


def test_user_queries_are_pinned_and_visible_on_their_own_frame(offline):
    queries = torch.tensor([[[0.0, 10.0, 5.0], [3.0, 70.5, 40.0], [7.0, 1.0, 47.0]]]).repeat(2, 1, 1)
    tracks, visible = offline(random_video(2, 8), queries=queries)
    assert tracks.shape == (2, 8, 3, 2) and visible.shape == (2, 8, 3)
    frames = queries[0, :, 0].long()
    torch.testing.assert_close(tracks[:, frames, torch.arange(3)], queries[..., 1:], atol=1e-4, rtol=0)
    assert visible[:, frames, torch.arange(3)].all()


def test_segmentation_mask_keeps_only_grid_points_inside_it(offline):
    video = random_video(1, 8)
    mask = torch.zeros(1, 1, 48, 80)
    mask[..., :, :40] = 1
    tracks, _ = offline(video, grid_size=4, segm_mask=mask)
    assert tracks.shape == (1, 8, 8, 2)  # the left two of four columns
    assert (tracks[0, 0, :, 0] < 40).all()


def test_dense_tracks_query_every_pixel_when_no_queries_or_grid(offline):
    video = random_video(1, 2, height=2, width=80)  # W // 80 = 1: every pixel, one pass
    tracks, visible = offline(video)
    ys, xs = torch.meshgrid(torch.arange(2.0), torch.arange(80.0), indexing="ij")
    assert tracks.shape == (1, 2, 160, 2) and visible.shape == (1, 2, 160)
    torch.testing.assert_close(tracks[0, 0], torch.stack([xs, ys], -1).reshape(-1, 2), atol=1e-4, rtol=0)


def test_backward_tracking_fills_the_frames_before_the_query_frame(offline):
    video, T, t_q = random_video(1, 8), 8, 4
    forward_tracks, _ = offline(video, grid_size=3, grid_query_frame=t_q)
    tracks, visible = offline(video, grid_size=3, grid_query_frame=t_q, backward_tracking=True)
    reverse_tracks, reverse_visible = offline(video.flip(1), grid_size=3, grid_query_frame=T - 1 - t_q)
    torch.testing.assert_close(tracks[:, :t_q], reverse_tracks.flip(1)[:, :t_q], atol=1e-4, rtol=0)
    assert torch.equal(visible[:, :t_q], reverse_visible.flip(1)[:, :t_q])
    torch.testing.assert_close(tracks[:, t_q:], forward_tracks[:, t_q:], atol=1e-4, rtol=0)
    assert not torch.allclose(tracks[:, :t_q], forward_tracks[:, :t_q], atol=1e-3)


def test_online_model_slides_16_frame_windows_by_8(online):
    model = online.model
    video = random_video(1, 20)
    queries = torch.tensor([[[0.0, 20.0, 20.0], [9.0, 50.0, 30.0]]])
    with torch.no_grad():
        coords, vis, conf = model(video, queries, iters=1)
        first_window = model(video[:, :16], queries, iters=1)
    # frames 0-7 are only seen by the first window; frames 8-19 are rewritten by the second
    torch.testing.assert_close(coords[:, :8], first_window[0][:, :8], atol=1e-4, rtol=0)
    torch.testing.assert_close(vis[:, :8], first_window[1][:, :8], atol=1e-5, rtol=0)
    assert not torch.allclose(coords[:, 8:16], first_window[0][:, 8:16], atol=1e-3)
    assert coords.shape == (1, 20, 2, 2) and conf.shape == (1, 20, 2)


def test_online_model_gives_no_tracks_for_half_a_window_or_less(online):
    queries = torch.tensor([[[0.0, 20.0, 20.0]]])
    with torch.no_grad():
        coords, vis, conf = online.model(random_video(1, 8), queries, iters=1)
    assert torch.equal(coords, torch.zeros(1, 8, 1, 2))
    assert torch.equal(vis, torch.full((1, 8, 1), 0.5)) and torch.equal(conf, vis)


def test_online_visibility_is_vis_times_confidence_above_0_6(online):
    video = random_video(1, 12, *SMALL)  # already at model resolution: the resize is the identity
    queries = torch.nn.functional.pad(torch.from_numpy(grid_points(3, *SMALL))[None], (1, 0))  # (0, x, y)
    with torch.no_grad():
        _, vis, conf = online.model(video, queries, iters=6)
    _, visible = online(video, grid_size=3)
    expected = vis * conf > 0.6
    expected[:, 0] = True  # grid queries are pinned visible on their query frame
    assert torch.equal(visible, expected)


def test_bf16_autocast_runs_and_returns_fp32_tracks():
    torch.manual_seed(0)
    predictor = CoTracker3Predictor(CoTracker3Offline(model_resolution=SMALL), dtype=torch.bfloat16)
    tracks, visible = predictor(random_video(1, 4), grid_size=2)
    assert tracks.dtype == torch.float32 and visible.dtype == torch.bool
    assert torch.isfinite(tracks).all()


# --- pipeline tracker -----------------------------------------------------------------------


def test_point_tracker_takes_uint8_windows_and_returns_the_protocol_types(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "scaled_offline.pth"
    torch.save(CoTracker3Offline().state_dict(), path)
    tracker = CoTracker3PointTracker(path, grid_size=3, device="cpu")
    video = np.random.default_rng(0).integers(0, 256, size=(2, 2, 3, 48, 64), dtype=np.uint8)
    tracks, visible = tracker.track(video)
    assert tracker.name == "cotracker3"
    assert tracks.shape == (2, 2, 9, 2) and tracks.dtype == np.float32
    assert visible.shape == (2, 2, 9) and visible.dtype == np.bool_
    corner = [8 * 63 / 511, 8 * 47 / 383]  # the grid's first point (8, 8) at 384x512, in input pixels
    np.testing.assert_allclose(tracks[:, 0, 0], [corner] * 2, atol=1e-4)


@pytest.mark.slow
def test_full_resolution_offline_and_online_track_a_real_clip(tmp_path, video_clips):
    """The released resolution end to end on a 1296x720 clip (about a minute on two cores)."""
    cv2 = pytest.importorskip("cv2")
    capture = cv2.VideoCapture(str(video_clips / "apple.mp4"))
    frames = [cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB) for _ in range(9)]
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)[None].float()
    for variant in ("offline", "online"):
        torch.manual_seed(0)
        path = tmp_path / f"{variant}.pth"
        torch.save(MODELS[variant]().state_dict(), path)
        tracks, visible = load_cotracker3(path, variant, device="cpu")(video, grid_size=5)
        assert tracks.shape == (1, 9, 25, 2) and visible.shape == (1, 9, 25)
        assert torch.isfinite(tracks).all()
