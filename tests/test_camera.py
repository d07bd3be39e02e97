import numpy as np
import pytest

from magma_data.stages.base import StageError
from magma_data.stages.camera import CameraConfig, CameraStage, apply_homography
from stage_contract import assert_stage_contract

WIDTH, HEIGHT, FRAMES = 640, 480, 12


def camera_at(t: int) -> np.ndarray:
    """Frame-0 pixels -> frame-t pixels: pan 7 px/frame, zoom 0.5 %/frame, roll 0.15°/frame."""
    scale, angle = 1.005**t, np.deg2rad(0.15 * t)
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)
    centre = np.array([[1, 0, -WIDTH / 2], [0, 1, -HEIGHT / 2], [0, 0, 1]])
    rotate = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]])
    back = np.array([[1, 0, WIDTH / 2 - 7 * t], [0, 1, HEIGHT / 2 + 2 * t], [0, 0, 1]])
    return back @ rotate @ centre


def panning_window(seed: int = 0, camera=camera_at, noise_px: float = 0.1):
    """A row whose background follows ``camera`` and whose foreground (1 point in 6) moves on its own.

    Returns the row (tracks with tracker-like noise), the background mask and the noise-free tracks.
    """
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.linspace(20, WIDTH - 20, 14), np.linspace(20, HEIGHT - 20, 12))
    start = np.stack([xs.ravel(), ys.ravel()], axis=-1)
    foreground = rng.random(len(start)) < 1 / 6
    velocity = rng.uniform(-12, 12, (len(start), 2))
    tracks = np.empty((FRAMES, len(start), 2))
    for t in range(FRAMES):
        world = start + np.where(foreground[:, None], velocity * t, 0)
        tracks[t] = apply_homography(world, camera(t))
    row = {
        "sample_id": f"pan-{seed}",
        "tracks": (tracks + rng.normal(0, noise_px, tracks.shape)).astype(np.float32),
        "visibility": np.ones((FRAMES, len(start)), bool),
        "image_width": WIDTH,
        "image_height": HEIGHT,
    }
    return row, ~foreground, tracks


def in_view(row, t):
    x, y = row["tracks"][t, :, 0], row["tracks"][t, :, 1]
    return (x >= 0) & (x < WIDTH) & (y >= 0) & (y < HEIGHT)


def test_recovers_a_pan_zoom_roll_homography_to_half_a_pixel_on_background_points():
    row, background, truth = panning_window()
    out = CameraStage()(row)

    assert out["camera_status"] == "applied" and out["camera_motion"]
    assert out["homography_ok"].all()
    for t in range(1, FRAMES):
        seen = background & in_view(row, t) & in_view(row, 0)
        aligned = apply_homography(truth[t, seen], out["homography"][t])
        error = np.linalg.norm(aligned - truth[0, seen], axis=-1)
        assert error.max() < 0.5, (t, error.max())
        assert out["inlier_ratio"][t] >= 0.75
        assert out["reprojection_error"][t] < 1.0  # RANSAC inliers include slow foreground points
        compensated_error = np.linalg.norm(out["tracks"][t, seen] - row["tracks"][0, seen], axis=-1)
        assert np.median(compensated_error) < 0.5


def test_without_compensation_the_same_background_points_drift():
    row, background, _ = panning_window()
    out = CameraStage(CameraConfig(global_motion_px=1000.0))(row)

    assert out["camera_status"] == "static" and not out["camera_motion"]
    assert not out["homography_ok"].any()
    np.testing.assert_array_equal(out["homography"], np.tile(np.eye(3), (FRAMES, 1, 1)))
    np.testing.assert_array_equal(out["tracks"], row["tracks"])
    drift = np.linalg.norm(out["tracks"][-1, background] - out["tracks"][0, background], axis=-1)
    assert np.median(drift) > 50


def test_a_frame_with_too_few_visible_points_is_flagged_and_left_uncompensated():
    row, _, _ = panning_window()
    row["visibility"][5] = False
    row["visibility"][5, 60:65] = True
    out = CameraStage()(row)

    assert out["camera_status"].startswith("fallback: frames 5 could not be fitted (")
    assert "5 points visible in frames 0 and 5, need 8" in out["camera_status"]
    assert not out["homography_ok"][5] and out["homography_ok"][np.arange(FRAMES) != 5].all()
    np.testing.assert_array_equal(out["homography"][5], np.eye(3))
    np.testing.assert_array_equal(out["tracks"][5], row["tracks"][5])
    assert out["inlier_ratio"][5] == 0 and np.isnan(out["reprojection_error"][5])


def test_a_mirrored_frame_is_rejected_as_implausible():
    row, _, _ = panning_window()
    row["tracks"][4, :, 0] = WIDTH - 1 - row["tracks"][4, :, 0]
    out = CameraStage()(row)

    assert not out["homography_ok"][4]
    assert "frames 4 could not be fitted (4: homography folds or mirrors the image)" in out["camera_status"]


def test_the_fit_uses_only_points_visible_in_both_frames():
    row, _, _ = panning_window()
    lost = np.arange(row["tracks"].shape[1]) % 3 == 0
    row["tracks"][6:, lost] = row["tracks"][5, lost]  # a lost track stays where it was last seen
    row["visibility"][6:, lost] = False
    out = CameraStage()(row)

    assert out["homography_ok"].all()
    assert (out["inlier_ratio"][6:] > 0.75).all()


def test_a_still_camera_is_left_alone_unless_forced():
    still = lambda t: np.eye(3)  # noqa: E731
    row, _, _ = panning_window(camera=still)
    out = CameraStage()(row)
    assert out["camera_status"] == "static"
    assert out["moving_fraction"] < 0.3

    forced = CameraStage(CameraConfig(force=True))(row)
    assert forced["camera_status"] == "forced" and forced["homography_ok"].all()
    points = row["tracks"][0]
    for t in range(FRAMES):
        np.testing.assert_allclose(apply_homography(points, forced["homography"][t]), points, atol=0.5)


def test_raw_tracks_are_recovered_from_the_stored_homography():
    row, _, _ = panning_window()
    out = CameraStage()(row)
    for t in range(FRAMES):
        raw = apply_homography(out["tracks"][t], np.linalg.inv(out["homography"][t]))
        np.testing.assert_allclose(raw, row["tracks"][t], atol=0.02)


def test_input_row_is_not_modified():
    row, _, _ = panning_window()
    before = row["tracks"].copy()
    CameraStage()(row)
    np.testing.assert_array_equal(row["tracks"], before)


def test_output_and_placeholders_match_the_declared_columns():
    row, _, _ = panning_window()
    stage = CameraStage()
    assert_stage_contract(stage, stage(row))


def test_a_single_frame_window_is_an_error():
    row, _, _ = panning_window()
    row["tracks"], row["visibility"] = row["tracks"][:1], row["visibility"][:1]
    with pytest.raises(StageError, match="at least 2"):
        CameraStage()(row)


def test_every_frame_before_and_after_the_marked_frame_is_brought_into_it():
    """Magma's reference is the frame at ``frame_pos``: the frames after it (the ToM future) and those
    before it alike are fitted to it, and the motion rule counts the traces from there on."""
    row, background, truth = panning_window()
    reference = 5
    out = CameraStage()({**row, "frame_pos": np.int32(reference)})
    assert out["camera_status"] == "applied" and out["homography_ok"].all()
    np.testing.assert_array_equal(out["homography"][reference], np.eye(3))
    np.testing.assert_array_equal(out["tracks"][reference], row["tracks"][reference])
    for t in [*range(reference), *range(reference + 1, FRAMES)]:
        seen = background & in_view(row, t) & in_view(row, reference)
        aligned = apply_homography(truth[t, seen], out["homography"][t])
        assert np.linalg.norm(aligned - truth[reference, seen], axis=-1).max() < 0.75, t
    # a camera still from the marked frame on is not compensated, however it moved before
    row, _, _ = panning_window(camera=lambda t: camera_at(min(t, reference)))
    assert CameraStage()(row)["camera_motion"]  # counted from frame 0, the pan moves every trace
    assert not CameraStage()({**row, "frame_pos": np.int32(reference)})["camera_motion"]
    with pytest.raises(StageError, match="frame_pos 11 is outside"):
        CameraStage()({**row, "frame_pos": np.int32(FRAMES - 1)})
