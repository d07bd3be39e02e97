"""The Ego4D reader on a miniature of the CLI's layout: narrations -> clips, every odd row reported."""

from __future__ import annotations

import pytest

from magma_data.sources import load_manifest, open_source
from magma_data.sources.base import Clip, ClipProblem
from magma_data.sources.ego4d import Ego4DSource, clean_narration, phrase_pattern
from source_fixtures import ego4d_filtered_only, ego4d_miniature


@pytest.fixture(scope="module")
def ego4d_root(tmp_path_factory):
    return ego4d_miniature(tmp_path_factory.mktemp("ego4d") / "v2")


def _read(root, **options):
    units = list(Ego4DSource(root, "ego4d", **options).clips())
    clips = {u.clip_id: u for u in units if isinstance(u, Clip)}
    problems = {u.unit_id: u for u in units if isinstance(u, ClipProblem)}
    return units, clips, problems


def test_narrations_become_spans_up_to_the_next_narration(ego4d_root):
    _, clips, _ = _read(ego4d_root)
    first = clips["vid-a/narration_pass_1/00000"]
    assert (first.start_sec, first.end_sec) == (0.0, 4.0)
    assert first.task == "the person opens the drawer"
    assert first.video_path == str(ego4d_root.resolve() / "full_scale" / "vid-a.mp4")
    assert (first.fps, first.num_frames) == (4.0, 32)  # from ego4d.json, no probing needed
    last = clips["vid-a/narration_pass_1/00001"]
    assert (last.start_sec, last.end_sec) == (4.0, 8.0)  # capped by the video's duration
    assert last.extra["narration_text"] == "#C C puts the café cup on the 瓶 shelf"


def test_non_ascii_narrations_are_kept(ego4d_root):
    _, clips, _ = _read(ego4d_root)
    assert clips["vid-a/narration_pass_1/00001"].task == "the person puts the café cup on the 瓶 shelf"


def test_verb_filter_matches_whole_words_only(ego4d_root):
    _, clips, problems = _read(ego4d_root)
    assert "vid-c/narration_pass_1/00000" in clips  # "understands" is not "stand"
    assert clips["vid-c/narration_pass_1/00004"].task == "the person wipes the sidewalk"
    dropped = problems["ego4d/vid-c/narration_pass_1/00001"]
    assert dropped.error_class == "NarrationFiltered" and "walks" in dropped.message
    assert dropped.kind == "filtered"  # a rule of the recipe, not an error


def test_every_awkward_row_is_a_problem_with_a_reason(ego4d_root):
    _, _, problems = _read(ego4d_root)
    classes = {unit: p.error_class for unit, p in problems.items()}
    assert classes == {
        "ego4d/../../outside": "PathEscapesRoot",
        "ego4d/vid-c/narration_pass_1/00001": "NarrationFiltered",
        "ego4d/vid-c/narration_pass_1/00002": "EmptyText",
        "ego4d/vid-c/narration_pass_1/00003": "ZeroLengthWindow",
        "ego4d/vid-c/narration_pass_1/00005": "TextNotUtf8",
        "ego4d/vid-c/narration_pass_1/00006": "BadTimestamp",
        "ego4d/vid-c/narration_pass_1/00007": "NarrationTooShort",
        "ego4d/vid-missing": "VideoMissing",
        "ego4d/vid-stereo": "StereoVideo",
        "ego4d/vid-unknown": "UnknownVideoUid",
    }
    assert "ego4d --datasets full_scale --video_uids vid-missing" in problems["ego4d/vid-missing"].message
    assert all(p.message for p in problems.values())


def test_order_is_stable_and_passes_are_selectable(ego4d_root):
    first, _, _ = _read(ego4d_root)
    again, _, _ = _read(ego4d_root)
    assert first == again
    _, clips, _ = _read(ego4d_root, passes=["narration_pass_1", "narration_pass_2"])
    assert clips["vid-a/narration_pass_2/00000"].task == "the person opens a drawer"


def test_manifest_opens_the_reader(ego4d_root):
    manifest = load_manifest("ego4d")
    source = open_source(manifest, ego4d_root)
    assert source.name == "ego4d"
    assert manifest.defaults["camera"]["force"] is True
    assert sum(isinstance(u, Clip) for u in source.clips()) == 4


def test_missing_metadata_says_which_option_to_set(tmp_path):
    with pytest.raises(FileNotFoundError, match="option metadata"):
        Ego4DSource(tmp_path, "ego4d")


@pytest.mark.parametrize(
    ("text", "dropped"),
    [("C walks to the door", True), ("C walked", True), ("C walking", True), ("C crosses the sidewalk", False),
     ("C stands up", True), ("C understands", False), ("C is conversing", True), ("C moves around", True),
     ("C moving around the room", True), ("C looks around", True), ("C looks at the pot", False),
     ("C LAUGHS", True), ("C reads a walkthrough", False)],
)
def test_phrase_pattern(text, dropped):
    pattern = phrase_pattern(("converse", "walk", "laugh", "stand", "move around", "looks around"))
    assert bool(pattern.search(text)) is dropped


def test_clean_narration():
    assert clean_narration("#C C picks a #unsure from the table") == "the person picks a something from the table"
    assert clean_narration("#O man X gives C a cup") == "man X gives the person a cup"


def test_run_video_tom_on_ego4d_writes_rows_that_map_back_to_the_narrations(tmp_path):
    """The headline command on a miniature: rows carry the narration, the video and the frame index."""
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from magma_data.cli import EXIT_SOME_UNITS_FAILED, main

    root = ego4d_miniature(tmp_path / "v2", video_size=(128, 96))
    output = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "run", "video_tom", "--input", "ego4d", "--root", str(root), "--output", str(output),
        "--tracker", "lk", "--height", "96", "--grid-size", "8", "--num-cpus", "2", "--no-progress",
    ])
    # the miniature's awkward narrations are error rows, so the run reports that some units failed
    assert result.exit_code == EXIT_SOME_UNITS_FAILED, result.output

    rows = pq.read_table(sorted((output / "data" / "ego4d").glob("train-*.parquet"))).to_pylist()
    got = sorted((r["video_uid"], r["frame_index"], r["task"], r["source"]) for r in rows)
    assert got == [
        ("vid-a", 0, "the person opens the drawer", "ego4d"),
        ("vid-a", 16, "the person puts the café cup on the 瓶 shelf", "ego4d"),  # 4.0 s at 4 fps
    ]
    assert all(r["clip_id"].startswith("vid-a/narration_pass_1/") for r in rows)
    errors = pq.read_table(sorted((output / "errors").glob("ego4d-*.parquet"))).to_pylist()
    classes = sorted(e["error_class"] for e in errors)
    assert classes.count("ClipTooShort") == 2 and "VideoMissing" in classes and "PathEscapesRoot" in classes
    # the 10 source problems and the 2 narrations shorter than a window, less the 2 Magma's rules drop
    assert len(errors) == 10
    filtered = pq.read_table(sorted((output / "filtered").glob("ego4d-*.parquet"))).to_pylist()
    assert sorted(f["rule"] for f in filtered) == ["NarrationFiltered", "NarrationTooShort"]


def test_a_run_whose_only_dropped_units_are_magmas_filters_exits_0_and_lists_them_in_filtered(tmp_path):
    import json

    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from magma_data.cli import main
    from magma_data.show import dataset_stats

    output = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "run", "video_tom", "--input", "ego4d", "--root", str(ego4d_filtered_only(tmp_path / "v2")), "--output",
        str(output), "--tracker", "lk", "--height", "96", "--grid-size", "8", "--num-cpus", "2", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    assert pq.read_table(output / "data" / "ego4d").num_rows == 1 and not list(output.glob("errors/*"))
    filtered = pq.read_table(output / "filtered").to_pylist()
    assert [(f["unit_id"], f["rule"]) for f in filtered] == [
        ("ego4d/vid-a/narration_pass_1/00001", "NarrationFiltered"),
        ("ego4d/vid-a/narration_pass_1/00002", "NarrationTooShort"),
    ]
    assert "walks" in filtered[0]["message"] and filtered[0]["config_hash"]
    summary = json.loads((output / "summary.json").read_text())["ego4d"]
    assert (summary["rows_written"], summary["error_rows"], summary["filtered_rows"]) == (1, 0, 2)
    assert summary["filter_rules"] == {"NarrationFiltered": 1, "NarrationTooShort": 1}
    assert "| `ego4d` | 1 | 0 | 2 (NarrationFiltered 1, NarrationTooShort 1) |" in (output / "README.md").read_text()
    assert "NarrationTooShort" in result.output  # the summary table counts filtered units per rule
    [stats] = dataset_stats(output)  # magma-data show
    assert stats.filtered == {"NarrationFiltered": 1, "NarrationTooShort": 1} and not stats.errors


def test_manifest_defaults_compose_into_the_run_config():
    from magma_data.config import RunConfig

    config = RunConfig(source="ego4d").with_overrides(load_manifest("ego4d").defaults)
    assert config.camera.force is True and config.render.speed_threshold == 2.0
    assert (config.marks.moving_threshold_px, config.marks.moving_clusters, config.marks.static_clusters) == \
        (3.0, (2, 5), (6, 14))
