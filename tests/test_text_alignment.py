"""Text-frame alignment (stages/text_alignment.py) with a real, tiny, random transformers CLIPModel on real frames."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from clip_fixtures import save_tiny_clip
from magma_data.dropped import FILTERED, Dropped, record
from magma_data.execution import batch_to_rows, new_unit_row, rows_to_batch, run_stage
from magma_data.sources.base import Clip
from magma_data.stages.base import Filtered
from magma_data.stages.decode import DecodeConfig, DecodeStage
from magma_data.stages.plan import PlanConfig, VideoInfo, plan_windows
from magma_data.stages.text_alignment import (
    BATCH_TOLERANCE,
    AlignmentConfig,
    AlignmentUnavailable,
    TextAlignmentStage,
    alignment_note,
    check_checkpoint,
    checkpoint_digest,
    frame_positions,
)
from magma_data.stages.track import TrackConfig, TrackStage
from stage_contract import assert_stage_contract


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def windows(video_clips):
    """Six decoded 16-frame windows of two real videos, each with a task text, as decode leaves them."""
    decode = DecodeStage(DecodeConfig(height=96))
    rows = []
    for name, task in (("bear.mp4", "a bear walks over the rocks"), ("paragliding.mp4", "the paraglider flies")):
        path = video_clips / name
        clip = Clip(clip_id=name, video_uid=name, video_path=str(path), task=task)
        for planned in plan_windows(clip, VideoInfo(fps=30.0, num_frames=64), "src", PlanConfig(window_stride=16))[:3]:
            rows.append({**planned, **decode(planned)})
    return rows


def _stage(folder, **kwargs) -> TextAlignmentStage:
    return TextAlignmentStage(AlignmentConfig(checkpoint=str(folder), **kwargs))


def _reference_scores(folder, frames: np.ndarray, text: str) -> np.ndarray:
    """Magma's recipe written out with transformers' feature functions: 4 frames at linspace(0, 15, 4),
    cosine of each with the text."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
    picked = [frames[int(i)] for i in torch.linspace(0, len(frames) - 1, 4)]
    with torch.no_grad():
        image = model.get_image_features(**processor.image_processor(picked, return_tensors="pt")).pooler_output
        text_features = model.get_text_features(**processor.tokenizer([text], return_tensors="pt")).pooler_output
    image = image / image.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    return (image @ text_features.T).squeeze(-1).numpy()


def test_the_frames_scored_are_magmas_linspace_padded_with_the_last():
    for window_len in range(2, 40):
        count = min(4, window_len + 1)
        magma = [int(i) for i in torch.linspace(0, window_len - 1, count)]
        assert frame_positions(window_len).tolist() == magma + [magma[-1]] * (4 - count)
    assert frame_positions(16).tolist() == [0, 5, 10, 15]


def test_scores_are_the_cosines_of_four_frames_with_the_text_and_the_best_is_kept(tiny_clip, windows):
    stage = _stage(tiny_clip, threshold=-1.0)
    results = stage.process(windows)
    for row, result in zip(windows, results):
        assert_stage_contract(stage, result)
        np.testing.assert_allclose(result["clip_scores"], _reference_scores(tiny_clip, row["frames"], row["task"]),
                                   atol=1e-5)
        assert result["clip_score"] == result["clip_scores"].max()


def _batchings(stage, windows):
    """The results of ``windows`` in batches of the stage's size, in reverse order, and each alone."""
    yield stage.process(windows)
    yield stage.process(windows[::-1])[::-1]
    yield [stage.process([row])[0] for row in windows]


def test_a_window_scores_the_same_within_the_tolerance_alone_and_in_any_batch(tiny_clip, windows):
    """Bit-equality is no property to ask of a batch: a row's rounding may depend on its place in it."""
    stage = _stage(tiny_clip, threshold=-1.0, batch_size=4)
    solo = [stage.scores([row["frames"]], [row["task"]], forward_windows=1)[0] for row in windows]
    for results in _batchings(stage, windows):
        for result, own in zip(results, solo):
            np.testing.assert_allclose(result["clip_scores"], own, rtol=0, atol=BATCH_TOLERANCE)


def test_a_score_that_ties_the_threshold_is_decided_by_the_windows_own_forward_in_any_batch(tiny_clip, windows):
    """The threshold at the best score of a window's own forward (kept), then one float32 step above it
    (dropped): in any batch that window is kept or dropped as alone, and what is written is its own
    forward's. The window is the one its batch moves most (here, on a CPU where a row's place changes
    its rounding, the batch alone would decide the other way)."""
    scorer = _stage(tiny_clip, threshold=-1.0, batch_size=4)
    together = scorer.process(windows)
    solo = [scorer.scores([row["frames"]], [row["task"]], forward_windows=1)[0] for row in windows]
    index = int(np.argmax([abs(result["clip_score"] - own.max()) for result, own in zip(together, solo)]))
    own, best = solo[index], solo[index].max()
    for threshold, kept in ((float(best), True), (float(np.nextafter(best, np.float32(np.inf))), False)):
        stage = _stage(tiny_clip, threshold=threshold, batch_size=4)
        last = len(windows) - 1
        for result in (stage.process(windows)[index], stage.process(windows[::-1])[last - index],
                       stage.process([windows[index]])[0]):
            if kept:
                assert not isinstance(result, Filtered), result.message
                np.testing.assert_array_equal(result["clip_scores"], own)
            else:
                assert isinstance(result, Filtered) and result.rule == "ClipScoreBelowThreshold"
                assert result.value == float(best)


def test_windows_under_the_threshold_are_filtered_before_tracking_and_the_rest_are_tracked(tiny_clip, windows):
    best = np.array([r["clip_score"] for r in _stage(tiny_clip, threshold=-1.0).process(windows)])
    ranked = np.sort(best)
    threshold = float((ranked[2] + ranked[3]) / 2)  # the three best windows pass, the three others do not
    assert ranked[3] - ranked[2] > 2 * BATCH_TOLERANCE  # no score ties it: each is written as scored here
    kept = best >= threshold
    assert kept.sum() == 3

    align = _stage(tiny_clip, threshold=threshold)
    track = TrackStage(TrackConfig(tracker="lk", grid_size=4))
    batch = rows_to_batch([new_unit_row(row) for row in windows])
    rows = batch_to_rows(run_stage(run_stage(batch, align), track))  # the map_batches functions Ray runs

    for row, keep, score in zip(rows, kept, best):
        assert "frames" not in row  # consumed by the track stage, filtered or not
        dropped = Dropped.of_row(row)
        if keep:
            assert dropped is None and row["clip_score"] == score
            assert row["tracks"].shape == (16, 16, 2)
        else:
            assert (dropped.kind, dropped.stage, dropped.reason) == (FILTERED, "align", "ClipScoreBelowThreshold")
            assert dropped.value == pytest.approx(float(score)) and f"{score:.4f}" in dropped.message
            assert row["tracks"].shape == (0, 0, 2)  # placeholders: the tracker never saw it
            filtered_row = record(row, dropped, "hash")
            assert filtered_row["rule"] == "ClipScoreBelowThreshold" and filtered_row["unit_id"] == row["unit_id"]
            assert filtered_row["value"] == dropped.value


def test_a_window_without_text_is_filtered_and_a_broken_window_fails_alone(tiny_clip, windows):
    stage = _stage(tiny_clip, threshold=-1.0)
    no_text = {**windows[0], "task": "  "}
    broken = {**windows[1], "frames": windows[1]["frames"][..., 0]}  # no colour axis
    no_text_result, broken_result, healthy = stage.process([no_text, broken, windows[2]])
    assert isinstance(no_text_result, Filtered) and no_text_result.rule == "NoTaskText"
    assert no_text_result.value is None
    assert isinstance(broken_result, Exception) and "[T, H, W, 3]" in str(broken_result)
    assert healthy["clip_scores"].shape == (4,)


def test_a_folder_that_is_not_a_clip_checkpoint_is_refused_with_what_to_pass(tiny_clip, tmp_path):
    assert check_checkpoint(tiny_clip) == tiny_clip
    with pytest.raises(AlignmentUnavailable, match="is not a folder.*clip-vit-large-patch14-336"):
        check_checkpoint(tmp_path / "missing")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(AlignmentUnavailable, match="'bert' model, not CLIP"):
        check_checkpoint(other)
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors", "processor_config.json"):
        (no_tokenizer / name).write_bytes((tiny_clip / name).read_bytes())
    with pytest.raises(AlignmentUnavailable, match="no tokenizer"):
        check_checkpoint(no_tokenizer)
    with pytest.raises(ValueError, match="needs alignment.checkpoint"):
        TextAlignmentStage(AlignmentConfig())


def test_the_digest_names_the_weights_not_their_folder(tiny_clip, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in tiny_clip.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert checkpoint_digest(copy) == checkpoint_digest(tiny_clip)
    other = save_tiny_clip(tmp_path / "other", seed=1)
    assert checkpoint_digest(other) != checkpoint_digest(tiny_clip)


def test_the_run_says_whether_alignment_is_on():
    assert alignment_note(AlignmentConfig()).startswith("text alignment: off")
    assert "scores >= 0.25" in alignment_note(AlignmentConfig(checkpoint="/ckpt"))
    assert math.isclose(AlignmentConfig().threshold, 0.25)


def test_without_transformers_the_checkpoint_check_says_how_to_install_it(monkeypatch, tiny_clip):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the curate extra were not installed
    with pytest.raises(AlignmentUnavailable, match=r"pip install 'magma-data\[curate\]'"):
        check_checkpoint(tiny_clip)
