"""TAPNext++: the official checkpoint layout, loading and checking, the predictor's contracts, the registry entry,
and a real folder run with ``--tracker tapnextpp``.

Most cases use a tiny network (32x32 square, width 32, 2 blocks), so a forward takes milliseconds.
The released layout is checked on the meta device, and with a file holding every official name and
shape in a few bytes (each tensor one value, expanded). Only the folder run writes full-size random
weights (about 1 GB, as the released files). Identity with the official code is measured outside the
suite (``benchmarks/tapnextpp_parity.py``, figures in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from cli_runs import run_env

from magma_data.models import load_tapnextpp
from magma_data.models.tapnext import TAPNext, sincos_2d
from magma_data.models.tapnextpp_predictor import (
    CHECKPOINT_ENV,
    TAPNextPPPredictor,
    UnusableWeights,
    find_checkpoint,
    read_weights,
)
from magma_data.stages.track import TRACKERS, TrackConfig, TrackerUnavailable, resolve_tracker

FIXTURE = Path(__file__).parent / "fixtures" / "tapnextpp_state_dict.txt"
TINY = {"image_size": 32, "width": 32, "num_heads": 2, "depth": 2}


def official_table() -> list[tuple[str, tuple[int, ...]]]:
    rows = [line.split() for line in FIXTURE.read_text().splitlines() if not line.startswith("#")]
    return [(key, tuple(int(s) for s in shape.split(","))) for key, shape in rows]


def official_layout_file(path: Path, wrapped: bool = False) -> Path:
    """Every official name and shape, each tensor one value expanded: a few bytes on disk."""
    state = {key: torch.zeros(1).expand(shape) for key, shape in official_table()}
    if wrapped:  # a training checkpoint, as tapnextpp_512.ckpt may be: the official loader strips the prefix
        state = {"state_dict": {f"tapnext.{key}": value for key, value in state.items()}, "epoch": 3}
    torch.save(state, path)
    return path


def tiny_network(seed: int = 0) -> TAPNext:
    torch.manual_seed(seed)
    model = TAPNext(**TINY).eval()
    with torch.no_grad():  # heads whose logits spread around 0: points land apart, some visible and some not
        model.visible_head[6].weight.normal_()
        model.coordinate_head[6].weight.normal_(std=3)
    return model


def random_video(batch: int, frames: int, height: int = 40, width: int = 56, seed: int = 0) -> torch.Tensor:
    """A textured video drifting right, RGB 0..255 [B, T, 3, H, W]."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(batch, 1, 3, height, width + frames, generator=g) * 255
    return torch.cat([base[..., t : t + width] for t in range(frames)], dim=1)


def random_queries(batch: int, points: int, height: int = 40, width: int = 56, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, points, 2, generator=g) * torch.tensor([width, height])


#: How far a point-frame's visibility logit may move between two computations that round otherwise (a
#: batch and a window alone, fewer frames, the official loop; up to 2e-6 measured): no logit is left this close
#: to the threshold, so every such computation sees the same points.
LOGIT_TOLERANCE = 1e-4


def threshold_in_a_gap(model: TAPNext, video: torch.Tensor, queries: torch.Tensor) -> TAPNext:
    """``model`` with its visibility threshold (the last bias) moved into the widest gap between the logits of
    the middle half of ``video``'s point-frames: some points are seen and some not, and none ties."""
    head = model.visible_head[6]
    hook = head.register_forward_hook(lambda module, args, out: setattr(module, "seen", out))
    TAPNextPPPredictor(model, resolution=32)(video, queries)
    hook.remove()
    ranked = head.seen.flatten().sort().values
    quarter = len(ranked) // 4
    middle = ranked[quarter : len(ranked) - quarter]
    k = quarter + int((middle[1:] - middle[:-1]).argmax())
    assert ranked[k + 1] - ranked[k] > 2 * LOGIT_TOLERANCE, f"no gap between the logits {ranked.tolist()}"
    with torch.no_grad():
        head.bias -= (ranked[k] + ranked[k + 1]) / 2
    return model


# --- the official layout ---------------------------------------------------------------------------


def test_state_dict_keys_and_shapes_equal_the_official_table():
    with torch.device("meta"):
        state = TAPNext().state_dict()
    assert [(key, tuple(value.shape)) for key, value in state.items()] == official_table()


def test_parameter_count_equals_the_released_network():
    with torch.device("meta"):
        model = TAPNext()
    assert sum(p.numel() for p in model.parameters()) == 194_202_881


def test_query_position_table_is_the_official_sin_cos_embedding():
    """``posemb_sincos_2d`` of tapnext_torch.py, in NumPy as the official code computes it."""
    height, width, dim = 12, 20, 32
    y, x = np.mgrid[:height, :width]
    omega = 1.0 / (10_000.0 ** (np.arange(dim // 4) / (dim // 4 - 1)))
    y, x = np.einsum("m,d->md", y.flatten(), omega), np.einsum("m,d->md", x.flatten(), omega)
    official = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)[None]
    np.testing.assert_allclose(sincos_2d(height, width, dim).numpy(), official, rtol=0, atol=1e-7)


# --- loading and checking --------------------------------------------------------------------------


@pytest.mark.parametrize("wrapped", [False, True], ids=["state_dict", "training-checkpoint"])
def test_a_file_with_the_official_names_and_shapes_passes_the_check(tmp_path, wrapped):
    state = read_weights(official_layout_file(tmp_path / "tapnextpp_ckpt.pt", wrapped), mmap=True)
    assert [(key, tuple(value.shape)) for key, value in state.items()] == official_table()


def test_a_cotracker3_checkpoint_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "scaled_offline.pth"
    torch.save({"time_emb": torch.zeros(1, 60, 1110), "fnet.conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(UnusableWeights, match=r"not a TAPNext\+\+ checkpoint \(it looks like CoTracker3's: "
                                              r"--tracker cotracker3\): tensors 401 missing .*2 unexpected"):
        read_weights(path)


def test_a_tensor_of_another_shape_or_a_missing_one_is_named(tmp_path):
    state = {key: torch.zeros(1).expand(shape) for key, shape in official_table()}
    state["lin_proj.weight"] = torch.zeros(768, 3, 16, 16)
    del state["blocks.11.vit_block.mlp.3.bias"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(UnusableWeights, match=r"1 missing \(blocks.11.vit_block.mlp.3.bias\); 1 of another shape "
                                              r"\(lin_proj.weight\); download tapnextpp_ckpt.pt"):
        read_weights(tmp_path / "bad.pt", mmap=True)


def test_a_file_that_is_no_checkpoint_is_refused(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(UnusableWeights, match="cannot be read as a PyTorch checkpoint"):
        read_weights(tmp_path / "notes.pt", mmap=True)


def test_find_checkpoint_prefers_explicit_then_env_var_then_the_official_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    assert find_checkpoint(None, 256) is None
    cached = tmp_path / "cache" / "tapnextpp" / "tapnextpp_512.ckpt"
    cached.parent.mkdir(parents=True)
    cached.touch()
    assert find_checkpoint(None, 512) == cached and find_checkpoint(None, 256) is None
    from_env = tmp_path / "env.pt"
    from_env.touch()
    monkeypatch.setenv(CHECKPOINT_ENV, str(from_env))
    assert find_checkpoint(None, 512) == from_env
    explicit = tmp_path / "explicit.pt"
    explicit.touch()
    assert find_checkpoint(explicit, 512) == explicit
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist; download tapnextpp_ckpt.pt"):
        find_checkpoint(tmp_path / "missing.pt", 256)


def test_load_tapnextpp_loads_every_tensor_unchanged(tmp_path):
    state = {key: torch.full((1,), float(i)).expand(shape) for i, (key, shape) in enumerate(official_table())}
    torch.save({"state_dict": {f"tapnext.{key}": value for key, value in state.items()}}, tmp_path / "t.ckpt")
    predictor = load_tapnextpp(tmp_path / "t.ckpt", resolution=512, device="cpu")
    loaded = predictor.model.state_dict()
    assert predictor.resolution == 512 and loaded.keys() == state.keys()
    assert all(torch.equal(loaded[key], state[key]) and loaded[key].dtype == torch.float32 for key in state)


# --- the predictor -----------------------------------------------------------------------------------


def official_loop(model: TAPNext, video: torch.Tensor, queries: torch.Tensor, resolution: int):
    """The official ``TAPNextPP.track_frame`` conversions (votsp2026/utils.py), one frame a call, batch element 0."""
    frames = video[0]  # T 3 H W, RGB 0..255
    height, width = frames.shape[-2:]
    points = queries[0].numpy().astype(np.float32)
    model_points = points * np.array([256 / width, 256 / height], dtype=np.float32)
    query = torch.from_numpy(np.stack([np.zeros(len(points), np.float32), model_points[:, 1], model_points[:, 0]], 1))
    tracks, visible, state = [], [], None
    for frame in frames:
        image = torch.nn.functional.interpolate(frame[None], size=(resolution, resolution), mode="bilinear",
                                                align_corners=False)
        image = image.div_(127.5).sub_(1.0).permute(0, 2, 3, 1)[None]
        with torch.no_grad():
            if state is None:
                out, _, logits, state = model(image, query[None])
            else:
                out, _, logits, state = model(image, state=state)
        xy = out[0, 0].numpy()[:, ::-1] * np.array([width / 256, height / 256], dtype=np.float32)
        tracks.append(xy)
        visible.append((logits[0, 0, :, 0] > 0).numpy())
    return np.stack(tracks), np.stack(visible)


def test_the_predictor_gives_what_the_official_loop_gives_frame_by_frame():
    video, queries = random_video(1, 6), random_queries(1, 7)
    model = threshold_in_a_gap(tiny_network(), video, queries)
    tracks, visible = TAPNextPPPredictor(model, resolution=32)(video, queries)
    expected_tracks, expected_visible = official_loop(model, video, queries, 32)
    assert tracks.shape == (1, 6, 7, 2) and visible.shape == (1, 6, 7) and visible.dtype == torch.bool
    np.testing.assert_allclose(tracks[0].numpy(), expected_tracks, rtol=0, atol=1e-3)
    assert (visible[0].numpy() == expected_visible).all()
    assert 0.1 < visible.float().mean() < 0.9  # the threshold is exercised, both ways
    assert (tracks[0, 1:] - tracks[0, :1]).abs().max() > 1  # the points move, so the comparison means something


def test_a_frame_depends_only_on_the_frames_before_it():
    video, queries = random_video(1, 6), random_queries(1, 5)
    predictor = TAPNextPPPredictor(threshold_in_a_gap(tiny_network(), video, queries), resolution=32)
    long_tracks, long_visible = predictor(video, queries)
    short_tracks, short_visible = predictor(video[:, :3], queries)
    torch.testing.assert_close(short_tracks, long_tracks[:, :3], rtol=0, atol=1e-3)
    assert torch.equal(short_visible, long_visible[:, :3])


def test_a_batch_tracks_as_its_windows_one_by_one():
    video = torch.cat([random_video(1, 4, seed=s) for s in range(3)])
    queries = torch.cat([random_queries(1, 5, seed=s) for s in range(3)])
    predictor = TAPNextPPPredictor(threshold_in_a_gap(tiny_network(), video, queries), resolution=32)
    tracks, visible = predictor(video, queries)
    for i in range(3):
        alone_tracks, alone_visible = predictor(video[i : i + 1], queries[i : i + 1])
        torch.testing.assert_close(tracks[i : i + 1], alone_tracks, rtol=0, atol=1e-3)
        assert torch.equal(visible[i : i + 1], alone_visible)


def test_another_resolution_resizes_the_learned_position_embedding_and_runs():
    predictor = TAPNextPPPredictor(tiny_network(), resolution=64)  # 8x8 patches, the network's own 4x4
    tracks, visible = predictor(random_video(2, 3), random_queries(2, 4))
    assert tracks.shape == (2, 3, 4, 2) and torch.isfinite(tracks).all()
    with pytest.raises(ValueError, match="multiple of 8"):
        TAPNextPPPredictor(tiny_network(), resolution=100)


def test_bf16_autocast_stays_near_fp32():
    model = tiny_network()
    video, queries = random_video(1, 4), random_queries(1, 6)
    fp32, _ = TAPNextPPPredictor(model, resolution=32)(video, queries)
    bf16, _ = TAPNextPPPredictor(model, resolution=32, dtype=torch.bfloat16)(video, queries)
    assert bf16.dtype == torch.float32 and (bf16 - fp32).abs().median() < 2  # pixels, of a 56-pixel frame


# --- the registry entry ------------------------------------------------------------------------------


def test_tapnextpp_is_named_checked_and_digested_on_the_driver(tmp_path):
    path = official_layout_file(tmp_path / "tapnextpp_512.ckpt", wrapped=True)
    resolved = resolve_tracker(TrackConfig(tracker="tapnextpp", checkpoint=str(path), resolution=512))
    assert resolved.note == f"tracker: TAPNext++ at 512x512 from {path}"
    assert resolved.weights_digest and resolved.tracker.placement == "actors"
    assert TRACKERS["tapnextpp"].tracks_license == "apache-2.0"
    bad = tmp_path / "scaled_offline.pth"
    torch.save({"time_emb": torch.zeros(1, 60, 1110)}, bad)
    with pytest.raises(TrackerUnavailable, match="looks like CoTracker3's"):
        resolve_tracker(TrackConfig(tracker="tapnextpp", checkpoint=str(bad)))


def test_without_weights_the_message_names_the_resolutions_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    with pytest.raises(TrackerUnavailable, match="no TAPNext\\+\\+ checkpoint found; download tapnextpp_512.ckpt"):
        resolve_tracker(TrackConfig(tracker="tapnextpp", resolution=512))


def test_auto_never_picks_tapnextpp(tmp_path, monkeypatch):
    monkeypatch.setenv(CHECKPOINT_ENV, str(official_layout_file(tmp_path / "tapnextpp_ckpt.pt")))
    monkeypatch.delenv("MAGMA_COTRACKER3_CHECKPOINT", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    resolved = resolve_tracker(TrackConfig())
    assert resolved.config.tracker == "lk"
    assert resolved.note == "tracker: Lucas-Kanade on CPU (no CoTracker3 checkpoint found; --checkpoint to use one)"


@pytest.mark.parametrize("tracker", ["lk", "cotracker3"])
def test_a_resolution_is_refused_by_trackers_without_one(tracker):
    with pytest.raises(TrackerUnavailable, match="has no resolution to choose; leave track.resolution unset"):
        resolve_tracker(TrackConfig(tracker=tracker, resolution=512))


# --- a real run ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    """Seeded random weights in the official format: a plain state_dict of every official tensor (~1 GB),
    the visibility bias raised so that the points are seen (random logits sit just below 0)."""
    torch.manual_seed(0)
    state = TAPNext().state_dict()
    state["visible_head.6.bias"] += 2
    path = tmp_path_factory.mktemp("tapnextpp") / "tapnextpp_ckpt.pt"
    torch.save(state, path)
    return path


def test_a_folder_run_with_tapnextpp_writes_rows_whose_marks_and_text_come_from_its_tracks(random_weights, tmp_path,
                                                                                              video_clips):
    """Random weights track wildly, so no homography fits them: the camera rule is off, or no point is usable."""
    output = tmp_path / "out"
    command = [sys.executable, "-m", "magma_data", "run", "video_tom", "--input", "folder", "--root", str(video_clips),
               "--output", str(output), "--tracker", "tapnextpp", "--checkpoint", str(random_weights),
               "--set", "track.resolution=32", "--set", "camera.global_motion_fraction=1", "--limit", "2",
               "--window-len", "8", "--grid-size", "4", "--height", "128", "--batch-size", "2", "--num-cpus", "2",
               "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=run_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"tracker: TAPNext++ at 32x32 from {random_weights}" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"wrote {output}; tracks by TAPNext++: licence apache-2.0 (commercial use allowed)")
    assert "- `tapnextpp`: tracks by TAPNext++: licence apache-2.0" in (output / "README.md").read_text()

    rows = pq.read_table(output / "data" / "folder").to_pylist()
    assert len(rows) == 2 and {row["tracker"] for row in rows} == {"tapnextpp"}

    # Every stage again, in this process, from each row's plan columns: the same tracks (within 1e-3 px: the
    # run's actor may use other threads than this process, which round otherwise; the points seen are the
    # same, their logits far above the threshold), and from the run's tracks the same marks and text.
    from magma_data.config import RunConfig
    from magma_data.pipelines import load_pipeline
    from magma_data.stages.plan import PLAN_COLUMNS

    config = RunConfig.from_dict(json.loads((output / ".magma" / "folder" / "config.json").read_text()))
    decode, track, *others = load_pipeline("video_tom").stages(config)
    assert (decode.name, track.name) == ("decode", "track")
    windows = [{column.name: row[column.name] for column in PLAN_COLUMNS if column.name in row} for row in rows]
    for window in windows:
        window["frame_indices"] = np.asarray(window["frame_indices"])
        window.update(decode(window))
    for window, tracked in zip(windows, track.process(windows)):  # one batch of both, as the run's actor had
        window.update(tracked)
    for row, again in zip(rows, windows):
        assert again["tracker"] == "tapnextpp" and not row["camera_motion"]  # so the row's tracks are the tracker's
        np.testing.assert_allclose(np.asarray(row["tracks"], np.float32), again["tracks"], rtol=0, atol=1e-3)
        assert (np.asarray(row["visibility"]) == again["visibility"]).all()
        again["tracks"] = np.asarray(row["tracks"], np.float32)
        for stage in others:
            again.update(stage(again))
        assert row["mark_ids"] == list(again["mark_ids"]) and row["mark_track_index"] == list(again["mark_track_index"])
        assert row["conversations"] == again["conversations"]
    assert all(row["mark_ids"] for row in rows)  # marks were drawn from the tracks
