"""Config changes that do not change rows keep old output folders resumable.

``.magma/<source>/config.json`` records its format; a folder written before a field existed (its
config.json lacks the field, its ledger holds the hash of the config without it) resumes and
exports with today's code as long as the field holds the value that makes the old rows, and is
refused when the field changes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sqlite3

import pyarrow.parquet as pq
import pytest

from magma_data import config as config_module
from magma_data.config import Added, RunConfig
from magma_data.export import export
from magma_data.outputs import UnfinishedOutput, finished_sources
from magma_data.pipelines import load_pipeline, shard_columns
from magma_data.runner import RunOptions, run
from magma_data.sink import ConfigMismatch

SMALL = {"plan": {"window_len": 8, "window_stride": 8}, "decode": {"height": 96},
         "track": {"tracker": "lk", "grid_size": 4}, "sink": {"rows_per_shard": 2}}
CONFIG = RunConfig(source="sample", limit=6).with_overrides(SMALL)


def test_hashes_are_those_configs_had_before_the_format_was_recorded():
    """Format 1 (no ``format_version``, ``root`` or ``videos``) gave these; its folders keep resuming. They
    marked frame 0: today's default draws the marked frame (format 4), which makes other rows."""
    first = {"marks": {"frame_pos": "first"}}
    assert RunConfig().with_overrides(first).hash() == "2fa9d3320cf0ef1b"
    assert RunConfig(pipeline="oxe_tom", source="oxe").with_overrides(first).hash() == "769af3178f37cffd"
    assert RunConfig().hash() != "2fa9d3320cf0ef1b"
    assert RunConfig(root="/data/ego4d", videos=("/videos",)).hash() == RunConfig().hash()


def test_the_curation_sections_off_hash_as_before_they_existed_and_fill_format_2_files():
    """Format 3 added shots, alignment, alignment_weights and quality; off, they change no hash, and a
    format 2 config.json (without them) loads with them off."""
    format_2 = {name: value for name, value in CONFIG.to_dict().items()
                if name not in ("shots", "alignment", "alignment_weights", "quality")}
    assert RunConfig.from_dict({**format_2, "format_version": 2}) == CONFIG
    assert CONFIG.hashed().keys() == format_2.keys() - {"root", "videos", "released"}
    # off, a section's other fields change nothing it writes: not hashed either
    assert CONFIG.with_overrides({"shots": {"threshold": 40}, "quality": {"drop_camera_fallback": False}}).hash() == \
        CONFIG.hash()
    on = CONFIG.with_overrides({"shots": {"enabled": True}})
    assert on.hash() != CONFIG.hash() and on.with_overrides({"shots": {"threshold": 40}}).hash() != on.hash()
    aligned = dataclasses.replace(CONFIG.with_overrides({"alignment": {"checkpoint": "/clip", "batch_size": 4}}),
                                  alignment_weights="0123456789abcdef")
    moved = aligned.with_overrides({"alignment": {"checkpoint": "/elsewhere", "batch_size": 8, "device": "cpu"}})
    assert aligned.hash() != CONFIG.hash() and moved.hash() == aligned.hash()  # the weights count, not their path
    assert dataclasses.replace(aligned, alignment_weights="fedcba9876543210").hash() != aligned.hash()


def test_shots_made_before_0_6s_rules_resume_with_0_7s_and_a_format_3_file_gets_them():
    """Format 4 added shots.filter_mode and shots.downscale (PySceneDetect 0.6's rules); a format 3 folder cut
    its shots with 0.7's defaults, loads with them, and hashes as it did."""
    on = CONFIG.with_overrides({"shots": {"enabled": True}})
    format_3 = _without(_without(on.to_dict(), "shots.filter_mode"), "shots.downscale")
    loaded = RunConfig.from_dict({**format_3, "format_version": 3})
    assert (loaded.shots.filter_mode, loaded.shots.downscale) == ("merge", "exact")
    assert loaded.hashed()["shots"] == format_3["shots"]  # what the code before format 4 hashed
    assert on.hash() != loaded.hash()  # today's rules cut other shots: another dataset


def test_a_format_3_folder_marked_frame_0_and_resumes_so():
    """Format 4 added marks.frame_pos (Magma's per-sample draw) and marks.step_rightmost_ratio; a format 3
    config.json loads pinned to frame 0, hashes as before, and its rows keep their columns (no frame_pos)."""
    format_3 = _without(_without(CONFIG.to_dict(), "marks.frame_pos"), "marks.step_rightmost_ratio")
    loaded = RunConfig.from_dict({**format_3, "format_version": 3})
    assert loaded.marks.frame_pos == "first" and json.loads(json.dumps(loaded.hashed()["marks"])) == format_3["marks"]
    pipeline = load_pipeline("video_tom")
    assert "frame_pos" not in {column.name for column in shard_columns(pipeline, loaded)}
    assert "frame_pos" in {column.name for column in shard_columns(pipeline, CONFIG)}


def test_a_format_1_config_loads_and_a_newer_format_is_refused():
    written = CONFIG.to_dict()
    old = {name: value for name, value in written.items() if name not in ("root", "videos")}
    assert RunConfig.from_dict(old) == CONFIG
    assert RunConfig.from_dict(json.loads(CONFIG.to_json())) == CONFIG
    with pytest.raises(ValueError, match="format 5, newer than this magma-data reads \\(4\\); upgrade"):
        RunConfig.from_dict({"format_version": 5, **written})


def test_an_added_field_at_its_old_value_hashes_as_before_and_fills_older_files(monkeypatch):
    """A field added in format 5 whose value 90 makes the old rows, and whose new default (95) does not."""
    old = CONFIG.with_overrides({"render": {"jpeg_quality": 90}})
    before, before_the_section = _old_hash(old, "render.jpeg_quality"), _old_hash(CONFIG, "render")
    assert old.hash() != before  # unregistered, the field is one more thing the hash covers
    monkeypatch.setattr(config_module, "CONFIG_FORMAT", 5)
    monkeypatch.setattr(config_module, "ADDED", (*config_module.ADDED, Added("render.jpeg_quality", 5, 90)))
    assert old.hash() == before
    assert CONFIG.hash() != before  # the new default changes the rows: another dataset
    file = _without(old.to_dict(), "render.jpeg_quality")
    assert RunConfig.from_dict({**file, "format_version": 4}) == old  # an older file gets the old value
    assert RunConfig.from_dict({**_without(CONFIG.to_dict(), "render"), "format_version": 4}).render.jpeg_quality == 90
    monkeypatch.setattr(config_module, "ADDED", (*config_module.ADDED, Added("render", 5, CONFIG.render)))  # a section
    assert CONFIG.hash() == before_the_section


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    output = tmp_path_factory.mktemp("finished")
    run(CONFIG, RunOptions(output=output, num_cpus=2, progress=False))
    return output


def _unfinished_copy(finished, destination):
    """The finished folder with its last shard gone from the ledger and the disk, as a run killed before it."""
    shutil.copytree(finished, destination)
    state = destination / ".magma" / "sample"
    db = sqlite3.connect(state / "ledger.sqlite")
    (last,) = db.execute("SELECT MAX(shard) FROM shards").fetchone()
    db.execute("DELETE FROM shards WHERE shard = ?", (last,))
    db.commit()
    db.close()
    for path in destination.glob(f"data/sample/train-{last:05d}-of-*.parquet"):
        path.unlink()
    with pytest.raises(UnfinishedOutput):
        finished_sources(destination)
    return destination


def test_a_folder_written_before_the_root_was_recorded_resumes_and_exports(finished, tmp_path):
    folder = _unfinished_copy(finished, tmp_path / "out")
    config_file = folder / ".magma" / "sample" / "config.json"
    format_1 = {name: value for name, value in json.loads(config_file.read_text()).items()
                if name not in ("format_version", "root", "videos")}
    config_file.write_text(json.dumps(format_1, indent=2, sort_keys=True))  # as the code before format 2 wrote it
    summary = run(CONFIG, RunOptions(output=folder, num_cpus=2, progress=False))
    assert (summary.shards_skipped, summary.shards) == (2, 3)
    rewritten = json.loads(config_file.read_text())
    assert rewritten["format_version"] == 4 and rewritten["root"]  # migrated, and where the clips lie now
    assert not rewritten["shots"]["enabled"] and rewritten["alignment"]["checkpoint"] is None  # the sections, off
    [exported] = export(folder, "llava", tmp_path / "llava")
    assert exported.rows == 6


def test_a_folder_from_before_a_field_was_added_resumes_while_the_field_keeps_its_old_value(finished, tmp_path,
                                                                                            monkeypatch):
    folder = _unfinished_copy(finished, tmp_path / "out")
    state = folder / ".magma" / "sample"
    old_file = _without(json.loads((state / "config.json").read_text()), "render.jpeg_quality")
    old_file.pop("format_version")
    (state / "config.json").write_text(json.dumps(old_file))
    old_hash = _old_hash(CONFIG, "render.jpeg_quality")
    db = sqlite3.connect(state / "ledger.sqlite")  # the hash the code before the field gave this config
    db.execute("UPDATE meta SET value = ? WHERE key = 'config_hash'", (old_hash,))
    db.commit()
    db.close()
    with pytest.raises(ConfigMismatch):  # unregistered, the field would make it another config
        run(CONFIG, RunOptions(output=folder, num_cpus=2, progress=False))
    monkeypatch.setattr(config_module, "CONFIG_FORMAT", 5)
    monkeypatch.setattr(config_module, "ADDED",
                        (*config_module.ADDED, Added("render.jpeg_quality", 5, CONFIG.render.jpeg_quality)))
    summary = run(CONFIG, RunOptions(output=folder, num_cpus=2, progress=False))
    assert (summary.shards_skipped, summary.rows_written, summary.config_hash) == (2, 6, old_hash)
    [redone] = folder.glob("data/sample/train-00002-of-*.parquet")
    assert set(pq.read_table(redone)["config_hash"].to_pylist()) == {old_hash}  # the dataset the old rows are of
    [source] = finished_sources(folder)
    assert source.config.render.jpeg_quality == CONFIG.render.jpeg_quality
    [exported] = export(folder, "magma-video-tom", tmp_path / "export")
    assert exported.rows == 6


def _without(data: dict, name: str) -> dict:
    data = json.loads(json.dumps(data))
    section, _, key = name.rpartition(".")
    (data[section] if section else data).pop(key)
    return data


def _old_hash(config: RunConfig, name: str) -> str:
    """The hash code from before ``name`` existed gave ``config``: the same formula, without the field."""
    canonical = json.dumps(_without(config.hashed(), name), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
