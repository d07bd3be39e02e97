"""A corpus of broken and awkward videos: the run finishes, and every input ends where it should.

Made here with PyAV and raw bytes. Broken inputs become error rows with the stage and error
class asserted; awkward but valid ones (rotated, variable frame rate, AV1) become rows; videos
with nothing to track (8x8, flat grey) become render errors. Nothing else is lost: planned
units = rows + error rows. A rotated video is decoded in display orientation (as a player shows
it, and as decord already returns it); PyAV, the fallback, is made to agree.
"""

from __future__ import annotations

import ast
import json
import struct
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from datasets import Features, List, Value

from magma_data import execution
from magma_data.cli import EXIT_SOME_UNITS_FAILED, main
from magma_data.config import RunConfig
from magma_data.execution import batch_to_rows, new_unit_row, rows_to_batch, run_stage
from magma_data.parquet_writer import ParquetShardWriter
from magma_data.runner import RunOptions, run
from magma_data.sink import OutputFolder, ShardCollector, ShardPlan, SinkConfig
from magma_data.sources.base import refuse_paths_outside
from magma_data.sources.sample import MovingObject, SceneSpec, render_scene
from magma_data.stages.base import Column, Stage
from magma_data.stages.decode import DecodeConfig, DecodeStage
from magma_data.stages.track import TrackConfig, TrackStage

WINDOW = 8
SMALL = {"plan": {"window_len": WINDOW, "window_stride": WINDOW}, "decode": {"height": 128},
         "track": {"tracker": "lk", "grid_size": 5}, "sink": {"rows_per_shard": 4}}
CLI_SMALL = ("--window-len", str(WINDOW), "--window-stride", str(WINDOW), "--height", "128", "--tracker", "lk",
             "--grid-size", "5", "--rows-per-shard", "4", "--no-progress")


def scene(num_frames: int = 24, width: int = 96, height: int = 64) -> np.ndarray:
    spec = SceneSpec(width=width, height=height, num_frames=num_frames, pan=(0.5, 0.0), seed=7,
                     objects=(MovingObject((-10, 0), 12, (1.0, 0.3), (220, 40, 40)),))
    return render_scene(spec).frames


def encode(path: Path, frames: np.ndarray, codec: str = "libx264", fps: int = 12, durations_ms=None,
           options: dict | None = None) -> Path:
    """Frames -> a video file; ``durations_ms`` gives each frame its own duration (variable frame rate)."""
    with av.open(str(path), "w", options=options or {}) as container:  # container from the suffix
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if durations_ms is not None:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        pts = 0
        for i, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            if durations_ms is not None:
                frame.pts, frame.time_base = pts, Fraction(1, 1000)
                pts += durations_ms[i % len(durations_ms)]
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def rotate_90(path: Path) -> Path:
    """Write a 90 degree display matrix into the mp4 track header, as phones store portrait video."""
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd")
    matrix_at = at + 4 + 4 + (32 if data[at + 4] == 1 else 20) + 8 + 8
    struct.pack_into(">9i", data, matrix_at, 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    good = scene()
    encode(root / "good.mp4", good)
    (root / "zero_bytes.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n")
    whole = encode(root / "whole.mp4", scene(48), options={"movflags": "faststart"}).read_bytes()
    (root / "truncated.mp4").write_bytes(whole[: len(whole) // 2])  # index intact, frames cut off
    whole = encode(root / "whole.mp4", scene(48)).read_bytes()
    (root / "truncated_no_index.mp4").write_bytes(whole[: len(whole) // 2])  # the index (moov) is at the end
    (root / "whole.mp4").unlink()
    encode(root / "one_frame.mp4", good[:1])
    encode(root / "tiny_8x8.mp4", scene(24, 8, 8))
    rotate_90(encode(root / "rotated.mp4", good))
    encode(root / "variable_rate.mp4", good, durations_ms=[40, 120, 70])
    encode(root / "av1.mp4", good, codec="libsvtav1")
    encode(root / "textureless.mp4", np.full_like(good, 128))
    encode(root / "caption_not_utf8.mp4", good)
    (root / "caption_not_utf8.txt").write_bytes(b"pick up the caf\xe9 cup")  # Latin-1, not UTF-8
    outside = tmp_path_factory.mktemp("outside")
    (root / "escapes_root.mp4").symlink_to(encode(outside / "elsewhere.mp4", good))
    return root


@pytest.fixture(scope="module")
def corpus_run(corpus, tmp_path_factory):
    """The corpus through the CLI (in this process): it must finish, with exit status 3."""
    output = tmp_path_factory.mktemp("corpus-out")
    result = CliRunner().invoke(main, ["run", "video_tom", "--input", "folder", "--root", str(corpus), "--output",
                                       str(output), *CLI_SMALL])
    assert result.exit_code == EXIT_SOME_UNITS_FAILED, result.output
    summary = json.loads((output / "summary.json").read_text())["folder"]
    rows = pq.read_table(output / "data" / "folder").to_pylist()
    errors = pq.read_table(output / "errors").to_pylist()
    return summary, rows, errors


def test_the_codec_case_is_one_decord_cannot_read(corpus):
    import decord

    with pytest.raises(decord.DECORDError):
        decord.VideoReader(str(corpus / "av1.mp4"))


def test_every_planned_unit_ends_as_a_row_or_an_error_row(corpus_run):
    summary, rows, errors = corpus_run
    assert len(rows) + len(errors) == summary["windows_planned"]
    assert (summary["rows_written"], summary["error_rows"]) == (len(rows), len(errors))
    assert summary["error_classes"] == dict(Counter(e["error_class"] for e in errors))
    units = [r["sample_id"] for r in rows] + [e["sample_id"] for e in errors]
    assert len(units) == len(set(units))


EXPECTED_ERRORS = {  # clip -> (stage, error class) of its error row
    "zero_bytes": ("plan", "VideoUnreadable"),
    "text": ("plan", "VideoUnreadable"),
    "truncated_no_index": ("plan", "VideoUnreadable"),
    "one_frame": ("plan", "ClipTooShort"),
    "caption_not_utf8": ("plan", "TextNotUtf8"),
    "escapes_root": ("plan", "PathEscapesRoot"),
}


def test_broken_inputs_end_as_their_error_rows(corpus_run):
    _, rows, errors = corpus_run
    by_clip = {e["clip_id"] or e["unit_id"].split("/", 1)[1]: e for e in errors if e["stage"] == "plan"}
    for clip, (stage, error_class) in EXPECTED_ERRORS.items():
        assert (by_clip[clip]["stage"], by_clip[clip]["error_class"]) == (stage, error_class), by_clip[clip]
        assert by_clip[clip]["message"] and by_clip[clip]["attempt"] == 1
    assert not {r["clip_id"] for r in rows} & set(EXPECTED_ERRORS)


def test_a_truncated_video_with_its_index_is_planned_whole_and_fails_at_decode(corpus_run):
    """The index promises 48 frames; the windows whose frames are gone are decode errors, one each."""
    _, rows, errors = corpus_run
    kept = [r for r in rows if r["clip_id"] == "truncated"]
    failed = [e for e in errors if e["clip_id"] == "truncated"]
    assert failed and {(e["stage"], e["error_class"]) for e in failed} == {("decode", "DecodeFailed")}
    assert len(kept) + len(failed) == 48 // WINDOW
    assert "cannot decode frames" in failed[-1]["message"] and "pyav" in failed[-1]["message"]


@pytest.mark.parametrize("clip", ["tiny_8x8", "textureless"])
def test_videos_with_nothing_to_track_end_as_render_errors_not_as_empty_rows(corpus_run, clip):
    """8x8 pixels or a flat grey frame give no trackable points, so no marks; with no task text
    either, no conversation can be written (stages/render.py), and the window is an error row."""
    _, rows, errors = corpus_run
    failed = [e for e in errors if e["clip_id"] == clip]
    assert len(failed) == 24 // WINDOW and not [r for r in rows if r["clip_id"] == clip]
    assert {(e["stage"], e["error_class"]) for e in failed} == {("render", "StageError")}


@pytest.mark.parametrize("clip", ["good", "variable_rate", "av1", "rotated"])
def test_awkward_but_valid_videos_become_rows(corpus_run, clip):
    _, rows, errors = corpus_run
    assert not [e for e in errors if e["clip_id"] == clip]
    assert len([r for r in rows if r["clip_id"] == clip]) == 24 // WINDOW


def test_rotated_video_is_turned_to_display_orientation(corpus_run):
    _, rows, _ = corpus_run
    sizes = {r["clip_id"]: (r["image_width"], r["image_height"]) for r in rows}
    assert sizes["good"] == (192, 128)  # stored 96x64
    assert sizes["rotated"] == (86, 128)  # stored 96x64 with a 90 degree display matrix: shown 64x96


def test_av1_decodes_through_pyav_to_the_same_pixels_as_h264(corpus_run):
    _, rows, _ = corpus_run
    first = {r["clip_id"]: r for r in rows if r["frame_index"] == 0}
    assert first["av1"]["image_width"] == first["good"]["image_width"]


def test_a_video_named_in_metadata_but_missing_is_an_error_row(tmp_path):
    """A metadata-driven source (SSv2 layout): one labelled video present, one absent."""
    root = tmp_path / "ssv2"
    videos = root / "20bn-something-something-v2"
    videos.mkdir(parents=True)
    encode(videos / "1.webm", scene(), codec="libvpx-vp9")
    entries = [{"id": str(i), "label": "pushing cup", "template": "Pushing [something]", "placeholders": ["cup"]}
               for i in (1, 2)]
    (root / "something-something-v2-train.json").write_text(json.dumps(entries))
    (root / "something-something-v2-validation.json").write_text("[]")
    (root / "something-something-v2-labels.json").write_text(json.dumps({"Pushing something": "0"}))
    output = tmp_path / "out"
    config = RunConfig(source="ssv2").with_overrides(SMALL)
    summary = run(config, RunOptions(output=output, root=root, num_cpus=2, progress=False))
    errors = pq.read_table(output / "errors").to_pylist()
    assert [(e["unit_id"], e["stage"], e["error_class"]) for e in errors] == [("ssv2/2", "plan", "VideoMissing")]
    assert summary.rows_written == 3 and summary.windows_planned == 4


def test_no_remote_code_and_checkpoints_load_weights_only():
    """Checkpoints are input too (DESIGN principle 7): no ``trust_remote_code``, ``torch.load`` weights-only."""
    repo = Path(__file__).resolve().parents[1]
    loads = 0
    for path in sorted(p for folder in ("magma_data", "stages", "pipelines") for p in (repo / folder).rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        assert "trust_remote_code" not in source, path
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("torch.load"):
                loads += 1
                keywords = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in keywords and ast.literal_eval(keywords["weights_only"]) is True, (
                    f"{path}:{node.lineno}: torch.load without weights_only=True")
    assert loads >= 1  # the CoTracker3 checkpoint load is found, so the check looks at the right calls


class Flaky(Stage):
    """A stage that fails ``failures`` times with ``error``, then works."""

    name = "camera"
    columns = (Column("homography", "float32", ("T", 3, 3)),)

    def __init__(self, error: BaseException, failures: int):
        self.error, self.failures, self.calls = error, failures, 0

    def __call__(self, row):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return {"homography": np.eye(3, dtype=np.float32)[None]}


def _unit(i: int) -> dict:
    return new_unit_row({"unit_id": f"folder/v/{i:08d}", "clip_id": "v", "frame_index": i})


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(execution, "RETRY_BACKOFF_S", 0.0)


def test_a_stage_exception_fails_its_row_only_and_the_batch_keeps_one_schema(no_backoff):
    stage = Flaky(np.linalg.LinAlgError("degenerate homography"), failures=1)
    out = batch_to_rows(run_stage(rows_to_batch([_unit(0), _unit(8)]), stage))
    assert (out[0]["drop_stage"], out[0]["drop_reason"], out[0]["drop_attempt"]) == ("camera", "LinAlgError", 1)
    assert out[0]["drop_message"] == "degenerate homography" and out[0]["homography"].shape == (0, 3, 3)
    assert out[1]["drop_stage"] == "" and out[1]["homography"].shape == (1, 3, 3)


def test_transient_errors_are_retried_a_bounded_number_of_times(no_backoff):
    row = _unit(0)
    stage = Flaky(TimeoutError("NFS timed out"), failures=execution.MAX_ATTEMPTS - 1)
    execution.apply_stage([row], stage)
    assert row["drop_stage"] == "" and stage.calls == execution.MAX_ATTEMPTS
    row, stage = _unit(0), Flaky(TimeoutError("NFS timed out"), failures=99)
    execution.apply_stage([row], stage)
    assert (row["drop_reason"], row["drop_attempt"], stage.calls) == ("TimeoutError", 3, execution.MAX_ATTEMPTS)


def test_decode_passes_transient_io_errors_up_for_retry(monkeypatch, no_backoff):
    stage = DecodeStage(DecodeConfig(height=64))
    calls = []

    def reader(path, backend):
        calls.append(backend)
        raise ConnectionError("object store connection reset")

    monkeypatch.setattr(stage, "_reader", reader)
    row = {**_unit(0), "video_path": "/v.mp4", "frame_indices": np.arange(4)}
    execution.apply_stage([row], stage)
    assert (row["drop_stage"], row["drop_reason"], row["drop_attempt"]) == ("decode", "ConnectionError", 3)
    assert calls == ["decord"] * execution.MAX_ATTEMPTS  # retried whole, not downgraded to a DecodeFailed


def test_a_tracker_exception_fails_its_window_and_the_batch_goes_on():
    class Exploding:
        name = "boom"

        def track(self, video):
            if (video[:, 0] == 7).any():
                raise RuntimeError("tracker blew up on this window")
            return np.zeros((len(video), video.shape[1], 4, 2)), np.ones((len(video), video.shape[1], 4), bool)

    stage = TrackStage(TrackConfig(tracker="lk", batch_size=4), tracker=Exploding())
    rows = [{**_unit(i), "frames": np.full((2, 8, 8, 3), 7 if i == 1 else 0, np.uint8)} for i in range(3)]
    out = batch_to_rows(run_stage(rows_to_batch(rows), stage))
    assert [r["drop_reason"] for r in out] == ["", "RuntimeError", ""]
    assert out[1]["drop_stage"] == "track" and out[0]["tracks"].shape == (2, 4, 2)
    assert all("frames" not in r for r in out)


@pytest.mark.parametrize("clip", ["rotated", "variable_rate"])
def test_the_pyav_fallback_gives_decords_frames_for_rotated_and_variable_rate_video(corpus, clip):
    """Frame numbers (not timestamps) and display orientation, whichever decoder reads the file."""
    row = {"video_path": str(corpus / f"{clip}.mp4"), "frame_indices": np.arange(8, 16)}
    by_decord = DecodeStage(DecodeConfig(height=64, backend="decord"))(dict(row))["frames"]
    by_pyav = DecodeStage(DecodeConfig(height=64, backend="pyav"))(dict(row))["frames"]
    assert np.array_equal(by_decord, by_pyav)


def test_the_runner_turns_units_whose_video_lies_outside_the_root_into_plan_errors(tmp_path):
    """Defence in depth for every source: the runner checks each planned video path itself."""
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere.mp4"
    root.mkdir()
    elsewhere.write_bytes(b"")
    (root / "inside.mp4").write_bytes(b"")
    (root / "link.mp4").symlink_to(elsewhere)
    units = [{"unit_id": f"s/{name}", "video_path": str(root / name)} for name in ("inside.mp4", "link.mp4")]
    units.append({"unit_id": "s/dots", "video_path": str(root / ".." / "elsewhere.mp4")})
    checked = refuse_paths_outside(units, [root])
    assert [u.get("drop_reason", "") for u in checked] == ["", "PathEscapesRoot", "PathEscapesRoot"]
    assert all(u["drop_stage"] == "plan" for u in checked[1:])


def test_a_row_that_does_not_fit_the_schema_becomes_a_sink_error_row_and_its_shard_is_written(tmp_path):
    features = Features({"sample_id": Value("string"), "xy": List(Value("float32"), length=2),
                         "config_hash": Value("string")})
    units = [{"unit_id": f"s/{i}", "sample_id": str(i)} for i in range(3)]
    plan = ShardPlan(units, rows_per_shard=3)
    writer = ParquetShardWriter(tmp_path, "s", features, SinkConfig())
    output = OutputFolder(tmp_path, "s", "c1", "{}", plan.digest, num_units=3, writer=writer)
    collector = ShardCollector(output, plan, units, transient=["unit_id"])
    for i, unit in enumerate(units):
        collector.add({**new_unit_row(unit), "xy": np.zeros(3 if i == 1 else 2, np.float32)})
    output.close()
    assert pq.read_table(tmp_path / "data" / "s")["sample_id"].to_pylist() == ["0", "2"]
    [error] = pq.read_table(tmp_path / "errors").to_pylist()
    assert (error["unit_id"], error["stage"]) == ("s/1", "sink") and error["error_class"].startswith("Arrow")
