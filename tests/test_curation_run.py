"""Curation in real runs (real Ray, real videos, real scenedetect and CLIP): shots, text alignment and
the quality rules wired into video_tom; what ``check`` and ``show`` say of them.

The clip with hard cuts (``media.curation_folder``) joins three parts of two different videos
(the real clips, or their stand-ins): bear frames 0-49, paragliding frames 0-19, bear frames 50-81.
scenedetect's own ``detect(path, ContentDetector())``, Magma's call, finds the cuts at 50 and 70;
the 20-frame middle shot holds no window of 24 frames.
"""

from __future__ import annotations

import json
import shutil
import signal

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from cli_runs import magma_run
from clip_fixtures import same_values, save_tiny_clip, scores_and_split
from media import CUTS, curation_folder
from PIL import Image
from source_fixtures import EGO4D_CUT, ego4d_with_a_cut

from magma_data.check import run_check
from magma_data.cli import main
from magma_data.config import RunConfig
from magma_data.pipelines import load_pipeline
from magma_data.runner import RunOptions, run
from magma_data.show import score_plots, score_values
from magma_data.sources import load_manifest, open_source
from magma_data.stages.text_alignment import BATCH_TOLERANCE

#: Windows of 24 frames every 12: the 20-frame middle shot holds none.
SMALL = {"plan": {"window_len": 24, "window_stride": 12}, "decode": {"height": 96},
         "track": {"tracker": "lk", "grid_size": 4}, "sink": {"rows_per_shard": 4}}
SHOTS = {"shots": {"enabled": True}}


@pytest.fixture(scope="module")
def curation_root(video_clips, tmp_path_factory):
    return curation_folder(video_clips, tmp_path_factory.mktemp("curation-folder"))


@pytest.fixture(scope="module")
def cut_folder(curation_root, tmp_path_factory):
    """The joined clip alone."""
    root = tmp_path_factory.mktemp("cut-folder")
    for name in ("joined.mp4", "joined.txt"):
        shutil.copy(curation_root / name, root / name)
    return root


def _tables(output, kind):
    folder = {"data": output / "data" / "folder", "filtered": output / "filtered"}[kind]
    return [row for path in sorted(folder.glob("*.parquet")) for row in pq.read_table(path).to_pylist()]


def _spans_a_cut(indices) -> bool:
    return any(indices[0] < cut <= indices[-1] for cut in CUTS)


@pytest.fixture(scope="module")
def shots_run(cut_folder, tmp_path_factory):
    output = tmp_path_factory.mktemp("shots-run")
    config = RunConfig(source="folder").with_overrides(SMALL).with_overrides(SHOTS)
    summary = run(config, RunOptions(output=output, root=cut_folder, num_cpus=2, progress=False))
    return config, output, summary


def test_the_joined_clip_has_its_cuts_where_scenedetect_finds_them(cut_folder):
    from scenedetect import ContentDetector, detect

    scenes = detect(str(cut_folder / "joined.mp4"), ContentDetector())
    assert [(start.frame_num, end.frame_num) for start, end in scenes] == [(0, 50), (50, 70), (70, 102)]


def test_a_folder_run_with_shots_has_rows_on_both_sides_of_the_cuts_none_across_and_the_short_shot_filtered(
        shots_run):
    _, output, summary = shots_run
    rows = _tables(output, "data")
    assert [row["frame_index"] for row in rows] == [0, 12, 24, 70]  # over the whole clip: 0, 12, ..., 72
    assert not any(_spans_a_cut(row["frame_indices"]) for row in rows)
    assert "clip_score" not in rows[0] and "mean_motion_px" not in rows[0]  # stages that are off add no column
    [short] = _tables(output, "filtered")
    assert (short["unit_id"], short["rule"], short["value"], short["frame_index"]) == (
        "folder/joined/shot-00000050", "ShotTooShort", 20.0, 50)
    assert "frames 50..69 holds 20 frames" in short["message"]
    assert summary.filter_rules == {"ShotTooShort": 1} and summary.error_rows == 0


def test_the_cuts_are_cached_in_the_run_state_a_rerun_reads_them_and_overwrite_detects_again(shots_run, cut_folder):
    config, output, _ = shots_run
    [cache] = (output / ".magma" / "folder" / "shots").glob("*.json")
    written = cache.stat().st_mtime_ns
    again = run(config, RunOptions(output=output, root=cut_folder, num_cpus=2, progress=False))
    assert again.nothing_to_do and cache.stat().st_mtime_ns == written  # planned from the cache, not decoded
    cache.write_text(cache.read_text().replace('"0-102": [50, 70]', '"0-102": [50]'))  # as if detected otherwise
    over = run(config, RunOptions(output=output, root=cut_folder, num_cpus=2, progress=False, overwrite=True))
    assert over.windows_planned == 5 and over.filter_rules == {"ShotTooShort": 1}  # the cuts found afresh
    assert '"0-102": [50, 70]' in cache.read_text()


def test_a_run_that_cannot_detect_shots_is_refused_before_any_work(monkeypatch, tmp_path, cut_folder):
    import sys

    monkeypatch.setitem(sys.modules, "scenedetect", None)  # as if the curate extra were not installed
    result = CliRunner().invoke(main, ["run", "video_tom", "--input", "folder", "--root", str(cut_folder),
                                       "--output", str(tmp_path / "out"), "--set", "shots.enabled=true"])
    assert result.exit_code == 2 and "pip install 'magma-data[curate]'" in result.output
    assert not (tmp_path / "out").exists()


# -- shots, alignment and the quality rules in one run --------------------------------------------

@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def curated(curation_root, clip_checkpoint, tmp_path_factory):
    """A run with every curation stage on, over the joined clip, a cat clip with text and an apple clip
    without; the threshold splits the windows' CLIP scores, computed here first, in two."""
    root = curation_root
    overrides = {**SMALL, **SHOTS, "alignment": {"checkpoint": str(clip_checkpoint)},
                 "quality": {"max_invisible_fraction": 1.0}}
    scores, threshold = scores_and_split(root, RunConfig(source="folder").with_overrides(overrides))
    overrides["alignment"]["threshold"] = threshold
    config = RunConfig(source="folder").with_overrides(overrides)
    output = tmp_path_factory.mktemp("curated-run")
    summary = run(config, RunOptions(output=output, root=root, num_cpus=2, progress=False))
    untexted = [(unit["clip_id"], unit["frame_index"]) for unit in load_pipeline("video_tom").plan(
        open_source(load_manifest("folder"), root), config) if not unit.get("drop_kind") and not unit["task"]]
    return root, output, summary, scores, threshold, untexted, overrides


def test_windows_under_the_clip_threshold_are_filtered_with_their_score_and_the_rest_become_rows(curated):
    _, output, summary, scores, threshold, untexted, _ = curated
    passing = {key for key, score in scores.items() if score >= threshold}
    assert 0 < len(passing) < len(scores)
    rows = _tables(output, "data")
    assert {(row["clip_id"], row["frame_index"]) for row in rows} == passing
    for row in rows:
        assert row["clip_score"] == pytest.approx(scores[row["clip_id"], row["frame_index"]], abs=BATCH_TOLERANCE)
        assert len(row["clip_scores"]) == 4 and max(row["clip_scores"]) == row["clip_score"]
        assert row["mean_motion_px"] >= 0 and 0 <= row["invisible_fraction"] <= 1  # the quality stage ran
        assert not _spans_a_cut(row["frame_indices"]) or row["clip_id"] != "joined"
    filtered = _tables(output, "filtered")
    below = {(row["clip_id"], row["frame_index"]): row for row in filtered if row["rule"] == "ClipScoreBelowThreshold"}
    assert below.keys() == scores.keys() - passing
    for key, row in below.items():
        assert row["value"] == pytest.approx(scores[key], abs=BATCH_TOLERANCE)
        assert f"{row['value']:.4f}" in row["message"]
    no_text = [(row["clip_id"], row["frame_index"], row["value"]) for row in filtered if row["rule"] == "NoTaskText"]
    assert no_text == [(*key, None) for key in untexted] and untexted
    assert [row["unit_id"] for row in filtered if row["rule"] == "ShotTooShort"] == ["folder/joined/shot-00000050"]
    assert summary.error_rows == 0
    assert summary.rows_written + summary.filtered_rows == summary.windows_planned  # every unit is accounted for


def test_check_counts_what_each_rule_drops_on_a_sample_as_the_run_did(curated):
    root, _, summary, scores, threshold, untexted, overrides = curated
    report = run_check("folder", root, window_len=24, overrides=overrides, sample_clips=3)
    curation = report.curation
    assert (curation["clips"], curation["of_clips"]) == (3, 3)
    assert curation["cuts"] == 2 and curation["windows_across_cuts"] == 3  # windows at 36, 48 and 60
    dropped = {rule: entry["dropped"] for rule, entry in curation["rules"].items()}
    assert dropped == summary.filter_rules  # every window of these clips was tried, as the run ran them
    assert curation["figures"]["clip_score"]["n"] == len(scores)
    assert curation["figures"]["clip_score"]["threshold"] == threshold

    none = run_check("folder", root, window_len=24, overrides=overrides, sample_clips=0)
    assert "not tried" in none.curation["note"] and not none.curation["rules"]
    assert run_check("folder", root, window_len=24).curation is None  # no rule on: nothing decoded


def test_show_plots_the_score_distributions_with_the_filtered_windows_and_the_threshold(curated, tmp_path):
    _, output, summary, scores, threshold, _, _ = curated
    values = score_values(output, "folder")
    kept, filtered = values["clip_score"]
    assert len(kept) == summary.rows_written and len(filtered) == summary.filter_rules["ClipScoreBelowThreshold"]
    assert (filtered < threshold).all() and (kept >= threshold).all()
    assert len(values["mean_motion_px"][0]) == summary.rows_written
    picture = score_plots(output, tmp_path / "scores.png")
    assert Image.open(picture).size[0] > 0
    result = CliRunner().invoke(main, ["show", str(output)])
    assert result.exit_code == 0 and "score distributions" in result.output
    assert (output / "show" / "scores.png").is_file()


def test_filtered_files_written_before_the_value_column_are_still_read(curated, tmp_path):
    """A folder resumed by this version holds filtered files with and without ``value``: both are read."""
    from magma_data.show import dataset_stats

    _, output, summary, _, _, _, _ = curated
    copy = tmp_path / "out"
    shutil.copytree(output, copy)
    files = sorted((copy / "filtered").glob("*.parquet"))
    old = next(path for path in files if "ClipScoreBelowThreshold" in pq.read_table(path)["rule"].to_pylist())
    pq.write_table(pq.read_table(old).drop_columns(["value"]), old)  # as the code before the column wrote it
    [stats] = dataset_stats(copy)
    assert dict(stats.filtered) == summary.filter_rules
    _, dropped = score_values(copy, "folder")["clip_score"]
    in_the_old_file = pq.read_table(old)["rule"].to_pylist().count("ClipScoreBelowThreshold")
    assert len(dropped) == summary.filter_rules["ClipScoreBelowThreshold"] - in_the_old_file


def test_curated_rows_export_and_train_as_other_rows_do(curated, tmp_path):
    from magma_data.export import export
    from magma_data.train.readers import DataSpec, SplitRule, open_data, split_rows

    _, output, summary, _, _, _, _ = curated
    for fmt in ("llava", "magma-video-tom"):
        [exported] = export(output, fmt, tmp_path / fmt)
        assert exported.rows == summary.rows_written
    [source] = open_data([DataSpec(output)])
    rows = list(split_rows(source, SplitRule("all", 0.0)))
    assert len(rows) == summary.rows_written and all("clip_score" in row for row in rows)


def test_a_curated_run_killed_after_its_first_shard_resumes_to_the_clean_run(curated, clip_checkpoint, tmp_path):
    """The curated run's command, killed (-9) once its first shard is committed, then run again: the same
    windows are kept and filtered, every column but the scores is the clean run's, and the scores are
    within BATCH_TOLERANCE of its (the resumed run batches its windows otherwise)."""
    root, clean, summary, _, threshold, _, _ = curated
    assert summary.shards > 1
    args = ("--input", "folder", "--root", str(root), "--window-len", "24", "--window-stride", "12", "--height", "96",
            "--tracker", "lk", "--grid-size", "4", "--rows-per-shard", "4", "--clip-checkpoint", str(clip_checkpoint),
            "--set", "shots.enabled=true", "--set", f"alignment.threshold={threshold!r}",
            "--set", "quality.max_invisible_fraction=1.0", "--no-progress")
    output = tmp_path / "out"
    killed = magma_run(output, *args, crash_at="after_shard:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = magma_run(output, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((output / "summary.json").read_text())["folder"]["config_hash"] == summary.config_hash

    tables = (("data", "sample_id", ("clip_scores", "clip_score")), ("filtered", "unit_id", ("value",)))
    for kind, key, scores in tables:
        want, got = (sorted(_tables(folder, kind), key=lambda row: row[key]) for folder in (clean, output))
        assert [row[key] for row in got] == [row[key] for row in want]
        for ours, theirs in zip(got, want):
            for column in scores:
                if theirs[column] is not None:
                    np.testing.assert_allclose(ours[column], theirs[column], rtol=0, atol=BATCH_TOLERANCE)
            left_out = {*scores, "message"}  # a filtered row's message quotes its score
            assert ours.keys() == theirs.keys()
            differing = [column for column in theirs if column not in left_out
                         and not same_values(ours[column], theirs[column])]
            assert not differing, f"{ours[key]} differs in {differing}"


def test_show_plots_nothing_for_a_run_without_curation_figures(shots_run, tmp_path):
    _, output, _ = shots_run
    assert score_values(output, "folder") == {}
    assert score_plots(output, tmp_path / "scores.png") is None


# -- Ego4D ----------------------------------------------------------------------------------------

def test_an_ego4d_run_cuts_its_narration_at_the_shot_boundary_by_default(tmp_path, clip_checkpoint):
    root = ego4d_with_a_cut(tmp_path / "v2")
    config = RunConfig(source="ego4d").with_overrides(load_manifest("ego4d").defaults).with_overrides(
        {"decode": {"height": 96}, "track": {"tracker": "lk", "grid_size": 4},
         "alignment": {"checkpoint": str(clip_checkpoint), "threshold": -1.0}})
    assert config.shots.enabled  # Magma's recipe for Ego4D: the manifest turns shots on
    summary = run(config, RunOptions(output=tmp_path / "out", root=root, num_cpus=2, progress=False))
    rows = [row for path in sorted((tmp_path / "out" / "data" / "ego4d").glob("*.parquet"))
            for row in pq.read_table(path).to_pylist()]
    assert [row["frame_index"] for row in rows] == [0, 16, EGO4D_CUT, 56, 72]  # 16 frames each, none across
    assert all(not (row["frame_indices"][0] < EGO4D_CUT <= row["frame_indices"][-1]) for row in rows)
    assert all(np.isfinite(row["clip_score"]) for row in rows) and summary.rows_written == 5


def test_on_a_cluster_with_gpus_the_clip_and_tracker_actors_share_each_gpu(monkeypatch):
    """No GPU here: the resources the graph asks Ray for, read off the map_batches calls."""
    import ray

    calls = []

    class Recorder:  # stands for the Ray dataset: records each map_batches call
        def map_batches(self, function, **options):
            calls.append((getattr(function, "__name__", ""), options))
            return self

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"GPU": 2.0, "CPU": 32.0})
    config = RunConfig(source="folder").with_overrides(
        {"alignment": {"checkpoint": "/clip"}, "track": {"tracker": "cotracker3"}})
    load_pipeline("video_tom").build(Recorder(), config)
    actors = [options for name, options in calls if name == "StageActor"]
    stages = [options["fn_constructor_args"][0].name for options in actors]
    assert stages == ["align", "track"]
    assert [options["num_gpus"] for options in actors] == [0.25, 0.75]  # one of each per GPU, filling it
    assert all(options["compute"].min_size == options["compute"].max_size == 2 for options in actors)
    alone = RunConfig(source="folder").with_overrides({"track": {"tracker": "cotracker3"}})
    calls.clear()
    load_pipeline("video_tom").build(Recorder(), alone)
    assert [options["num_gpus"] for name, options in calls if name == "StageActor"] == [1.0]


def test_oxe_tom_runs_the_quality_rules_and_refuses_shots_and_alignment(tmp_path):
    """Robot episodes have no cuts, and Magma filtered no robot window by CLIP; the quality rules apply."""
    from magma_data.stages.quality import QualityStage

    pipeline = load_pipeline("oxe_tom")
    config = RunConfig(pipeline="oxe_tom", source="oxe").with_overrides({"quality": {"drop_camera_fallback": True},
                                                                          "marks": {"frame_pos": "first"}})
    names = [stage.name for stage in pipeline.stages(config)]
    assert names[names.index("camera") + 1] == "quality" and isinstance(pipeline.stages(config)[3], QualityStage)
    assert "quality" not in [stage.name for stage in pipeline.stages(RunConfig(pipeline="oxe_tom", source="oxe"))]

    from magma_data.sources.robot import RobotSource

    class Episodes(RobotSource):  # stands for a robot source: only its type matters here
        name = "oxe"

    episodes = Episodes()
    assert pipeline.check(episodes, config) == ["quality rules after tracking: no camera fallback"]
    with pytest.raises(ValueError, match="shots and text alignment are video_tom's"):
        pipeline.check(episodes, config.with_overrides({"shots": {"enabled": True}}))
    with pytest.raises(ValueError, match="its own step's frame.*marks.frame_pos: first"):  # the action turn's image
        pipeline.check(episodes, config.with_overrides({"marks": {"frame_pos": "magma"}}))
