from __future__ import annotations

import numpy as np
import pytest

from magma_data.sources.sample import SceneSpec, render_scene, write_video
from magma_data.stages.decode import DecodeConfig, DecodeFailed, DecodeStage, resized_width


@pytest.fixture(scope="module")
def small_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("decode") / "clip.mp4"
    clip = render_scene(SceneSpec(width=192, height=128, num_frames=24, pan=(2.0, 0.0), seed=3))
    write_video(clip.frames, path, fps=12.0)
    return path, clip.frames


def _row(path, indices):
    return {"video_path": str(path), "frame_indices": np.asarray(indices, np.int64)}


def test_decodes_only_the_requested_frames_at_the_working_height(small_video):
    path, frames = small_video
    out = DecodeStage(DecodeConfig(height=256))(_row(path, [4, 5, 6, 7]))
    assert out["frames"].shape == (4, 256, 384, 3)
    assert (out["image_width"], out["image_height"]) == (384, 256)


def test_pyav_fallback_gives_the_same_frames_as_decord(small_video):
    path, frames = small_video
    indices = [8, 9, 10, 11, 12]
    by_decord = DecodeStage(DecodeConfig(height=128, backend="decord"))(_row(path, indices))["frames"]
    by_pyav = DecodeStage(DecodeConfig(height=128, backend="pyav"))(_row(path, indices))["frames"]
    assert np.array_equal(by_decord, by_pyav)
    for decoded, wanted in zip(by_decord.astype(int), indices):  # the right frames, not their neighbours
        distances = [np.abs(decoded - source).mean() for source in frames]
        assert int(np.argmin(distances)) == wanted


def test_aspect_is_kept_with_an_even_width():
    assert resized_width(854, 480, 512) == 910
    assert resized_width(368, 480, 512) == 392


def test_an_unreadable_file_fails_with_both_backends_named(tmp_path):
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"not a video at all")
    with pytest.raises(DecodeFailed, match="decord.*pyav"):
        DecodeStage(DecodeConfig())(_row(bogus, [0, 1]))


def test_output_and_placeholders_match_the_declared_columns(small_video):
    from stage_contract import assert_stage_contract

    stage = DecodeStage(DecodeConfig(height=64))
    assert_stage_contract(stage, stage(_row(small_video[0], [0, 1])))


def test_the_same_frames_encode_to_the_same_file_twice_in_one_process(tmp_path):
    """The sample source's and the stand-ins' clips depend on their frames only. (With x264's macroblock
    tree on, this clip encoded twice in a row decoded differently: 7 macroblocks a row.)"""
    from magma_data.sources.sample import MovingObject

    spec = SceneSpec(width=112, height=96, num_frames=30, pan=(0.4, -0.3), roll_deg=0.03,
                     objects=(MovingObject((0, 10), 20, (-0.8, 1.2), (230, 200, 170)),), seed=13)
    frames = render_scene(spec).frames
    first, second = tmp_path / "first.mp4", tmp_path / "second.mp4"
    write_video(frames, first, spec.fps)
    write_video(frames, second, spec.fps)
    assert first.read_bytes() == second.read_bytes()
