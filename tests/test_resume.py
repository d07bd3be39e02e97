"""Kill -9 a real ``magma-data run`` at named points, re-run the same command, get the same dataset.

The kill points come from the ``MAGMA_DATA_CRASH_AT`` hook (magma_data/faults.py), so each run
dies at an exact place: while windows are being tracked, with a shard half written, with a shard
renamed but not in the ledger, and between two committed shards. The runs share one output
folder, each resuming what the one before left; the last finishes the job.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3

import pyarrow.parquet as pq
import pytest
from cli_runs import SMALL, data_files, magma_run, sample_ids, stray_files, uninterrupted_run
from datasets import Features, Value

from magma_data.dropped import Dropped
from magma_data.parquet_writer import ParquetShardWriter
from magma_data.sink import ConfigMismatch, OutputFolder, ShardContent, SinkConfig

KILL_POINTS = ("during_stream:2", "during_write:1", "before_ledger:1", "after_shard:2")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return uninterrupted_run(tmp_path_factory)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The output folder after one killed run per kill point, then the finishing re-run."""
    output = tmp_path_factory.mktemp("killed")
    left_behind = {}
    for point in KILL_POINTS:
        result = magma_run(output, *SMALL, crash_at=point)
        assert result.returncode == -signal.SIGKILL, f"{point} was not reached:\n{result.stderr[-3000:]}"
        left_behind[point] = stray_files(output)
    final = magma_run(output, *SMALL)
    assert final.returncode == 0, final.stderr
    return output, left_behind, final


def test_killed_runs_resume_to_the_uninterrupted_dataset_byte_for_byte(baseline, resumed):
    output, _, _ = resumed
    assert data_files(output) == data_files(baseline)
    assert len(data_files(baseline)) == 4


def test_no_row_is_missing_or_written_twice(baseline, resumed):
    ids = sample_ids(resumed[0])
    assert len(ids) == len(set(ids)) == 8
    assert ids == sample_ids(baseline)


def test_a_kill_during_a_shard_write_leaves_only_a_partial_file_which_the_rerun_discards(resumed):
    output, left_behind, _ = resumed
    assert left_behind["during_write:1"], "the kill during a write should leave the temporary file"
    assert stray_files(output) == []


def test_the_ledger_lists_every_shard_once(resumed):
    db = sqlite3.connect(resumed[0] / ".magma" / "sample" / "ledger.sqlite")
    shards = db.execute("SELECT shard, num_shards, units, rows, errors FROM shards ORDER BY shard").fetchall()
    assert shards == [(i, 4, 2, 2, 0) for i in range(4)]


def test_rerunning_a_finished_job_does_nothing_and_says_so(resumed):
    output, _, _ = resumed
    before = {p: p.stat().st_mtime_ns for p in output.glob("data/*/*.parquet")}
    again = magma_run(output, *SMALL)
    assert again.returncode == 0, again.stderr
    assert "nothing to do: all 4 shards" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in output.glob("data/*/*.parquet")} == before


def test_the_cli_refuses_a_folder_made_with_another_config(tmp_path, baseline):
    output = tmp_path / "out"
    shutil.copytree(baseline / ".magma", output / ".magma")
    refused = magma_run(output, *SMALL, "--seed", "1")
    assert refused.returncode == 1
    assert "made with config" in refused.stderr and "--overwrite" in refused.stderr


FEATURES = Features({"sample_id": Value("string"), "config_hash": Value("string")})


def _folder(root, config_hash="c1", plan="p1", overwrite=False) -> OutputFolder:
    writer = ParquetShardWriter(root, "src", FEATURES, SinkConfig())
    return OutputFolder(root, "src", config_hash, "{}", plan, num_units=4, writer=writer, overwrite=overwrite)


#: Shard 0 of 2 holding unit src/a, as an error row (say a WorkerLost) or as a data row.
ERROR = ShardContent(0, 2, [("src/a", {"sample_id": "s", "source": "src", "clip_id": "a", "video_path": "/v.mp4"},
                             Dropped("error", "plan", "VideoUnreadable", "m"))], "c1")
ROW = ShardContent(0, 2, [("src/a", {"sample_id": "s", "config_hash": "c1"}, None)], "c1")


def test_a_changed_config_or_plan_is_refused_and_overwrite_starts_over(tmp_path):
    folder = _folder(tmp_path)
    folder.commit(folder.writer.write(ERROR))
    folder.close()
    with pytest.raises(ConfigMismatch, match="made with config c1"):
        _folder(tmp_path, config_hash="c2")
    with pytest.raises(ConfigMismatch, match="input of 'src' changed"):
        _folder(tmp_path, plan="p2")
    fresh = _folder(tmp_path, config_hash="c2", plan="p2", overwrite=True)
    assert fresh.committed_shards() == {} and not list((tmp_path / "errors").glob("*.parquet"))
    fresh.close()


def test_partial_files_of_a_dead_run_are_discarded_on_open(tmp_path):
    partial = tmp_path / "data" / "src" / ".train-00000-of-00002.parquet.partial"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"half a shard")
    _folder(tmp_path).close()
    assert not partial.exists()


def test_a_shard_rewritten_after_a_crash_before_its_ledger_commit_leaves_no_stale_errors_file(tmp_path):
    """A dead run renamed shard 0 with an error (say a WorkerLost) in place; the re-run got a row for it."""
    dead = _folder(tmp_path)
    for final, temporary in dead.writer.write(ERROR).files:  # renamed into place, never recorded in the ledger
        if temporary is not None:
            temporary.replace(final)
    dead.close()
    rerun = _folder(tmp_path)
    rerun.commit(rerun.writer.write(ROW))
    assert not list((tmp_path / "errors").glob("*.parquet"))
    assert pq.read_table(tmp_path / "data" / "src" / "train-00000-of-00002.parquet").num_rows == 1
    assert rerun.committed_shards()[0]["errors"] == 0


# -- with the curation stages on ------------------------------------------------------------------

#: Killed while planning (the first clip's cuts cached), while streaming, with a shard half written,
#: and between shards.
CURATED_KILL_POINTS = ("shots_cached:1", "during_stream:3", "during_write:1", "after_shard:2")


@pytest.fixture(scope="module")
def curated_args(video_clips, tmp_path_factory):
    """The CLI arguments of a folder run with shots, CLIP alignment (a tiny random CLIP, its threshold
    between the windows' scores) and a quality rule on: rows, and filtered units of every curation rule."""
    from clip_fixtures import save_tiny_clip, scores_and_split
    from media import curation_folder

    from magma_data.config import RunConfig

    root = curation_folder(video_clips, tmp_path_factory.mktemp("curation-folder"))
    checkpoint = save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")
    config = RunConfig(source="folder").with_overrides({
        "plan": {"window_len": 24, "window_stride": 12}, "decode": {"height": 96}, "shots": {"enabled": True},
        "alignment": {"checkpoint": str(checkpoint)}})
    _, threshold = scores_and_split(root, config)
    return ("--input", "folder", "--root", str(root), "--tracker", "lk", "--height", "96", "--grid-size", "4",
            "--window-len", "24", "--window-stride", "12", "--rows-per-shard", "2", "--no-progress",
            "--clip-checkpoint", str(checkpoint), "--set", "shots.enabled=true", "--set",
            f"alignment.threshold={threshold!r}", "--set", "quality.min_mean_motion_px=0.0")


@pytest.mark.slow
def test_killed_curated_runs_resume_to_the_uninterrupted_dataset(curated_args, tmp_path):
    """The same files with the same rows, every value equal but the CLIP scores: the resumed runs batch
    their windows otherwise, and on some CPUs a window's scores move with its place in a batch (within
    BATCH_TOLERANCE; clip_fixtures.scores_and_split keeps the threshold clear of that, so the same windows
    are kept and filtered)."""
    from clip_fixtures import batching_differences

    baseline = tmp_path / "uninterrupted"
    first = magma_run(baseline, *curated_args)
    assert first.returncode == 0, first.stderr
    rules = {row["rule"] for path in baseline.glob("filtered/*.parquet") for row in pq.read_table(path).to_pylist()}
    assert rules == {"ShotTooShort", "ClipScoreBelowThreshold", "NoTaskText"}

    output = tmp_path / "killed"
    for point in CURATED_KILL_POINTS:
        result = magma_run(output, *curated_args, crash_at=point)
        assert result.returncode == -signal.SIGKILL, f"{point} was not reached:\n{result.stderr[-3000:]}"
        if point == "shots_cached:1":  # killed while planning: the cuts found so far are kept, no shard yet
            cached = list((output / ".magma" / "folder" / "shots").glob("*.json"))
            assert 1 <= len(cached) < 3  # the first clip's (another may have landed in the same instant)
            assert not list(output.glob("data/*/*.parquet"))
    final = magma_run(output, *curated_args)
    assert final.returncode == 0, final.stderr
    assert len([p for kind in ("data/*", "errors", "filtered") for p in baseline.glob(f"{kind}/*.parquet")]) > 4
    assert batching_differences(output, baseline) == []
    assert stray_files(output) == []
