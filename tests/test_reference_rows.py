"""The rows of small reference runs are the recorded ones, on any machine: a refactoring must not change them.

What the code decides (files, rows and their order, ids, paths, counts, marks, text, conversations,
shapes, integer targets, error rows) is compared exactly; floats within ``TOLERANCES``; images as
decoded pixels within ``IMAGE_TOLERANCE``. ``reference_runs.py`` holds the runs, the comparison,
and how and when to re-record. Each guard is shown to fail on a perturbed row below.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
from PIL import Image
from reference_runs import (
    IMAGE_TOLERANCE,
    RUNS,
    SHARED_VIDEOS,
    TOLERANCES,
    differences,
    make_output,
    read_reference,
    read_tables,
    run_config,
    schemas,
    written_columns,
)

from magma_data.stages.render import draw_marks, mark_font

_MADE: dict[str, dict] = {}


@pytest.fixture(scope="module")
def run_tables(tmp_path_factory, request):
    """The tables of a reference run, made once a session."""

    def tables(name: str) -> dict:
        if name not in _MADE:
            stand_ins = request.getfixturevalue("generated_videos") if RUNS[name].clips == "stand-ins" else None
            _MADE[name] = read_tables(make_output(name, tmp_path_factory.mktemp(name), stand_ins))
        return _MADE[name]

    return tables


@pytest.mark.parametrize("name", sorted(RUNS))
def test_each_reference_run_writes_the_recorded_rows(name, run_tables):
    if RUNS[name].clips == "shared" and not SHARED_VIDEOS.is_dir():
        pytest.skip("the real clips (../shared/videos) are not beside this checkout; the stand-in runs stand in")
    problems = differences(run_tables(name), read_reference(name))
    assert not problems, f"{name} departs from tests/reference/{name}.json:\n" + "\n".join(problems)


def test_each_pipelines_shard_schema_is_the_recorded_one():
    import json

    from reference_runs import REFERENCE

    assert schemas() == json.loads((REFERENCE / "schemas.json").read_text())


def test_every_float_column_has_a_tolerance_and_every_tolerance_a_column():
    floats = {column.name for column in written_columns() if column.dtype.startswith("float")}
    assert floats == set(TOLERANCES)


def test_the_references_exercise_what_they_guard():
    """ToM turns and SoM-only turns, compensated and static windows, plan and stream error rows."""
    rows = [row for name in RUNS for row in read_reference(name)["data"]]
    errors = [row for name in RUNS for row in read_reference(name)["errors"]]
    assert any(row["tom_steps"] > 0 for row in rows) and any(row["tom_steps"] == 0 for row in rows)
    assert {"applied", "static"} <= {row["camera_status"] for row in rows}
    assert {"plan", "render"} <= {row["stage"] for row in errors}
    assert any(len(row["tom_targets"]) > 1 for row in rows)


# -- each guard can fail ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample():
    return read_reference("sample")


def _changed(reference: dict, table: str, row: int, column: str, change) -> list[str]:
    perturbed = copy.deepcopy(reference)
    perturbed[table][row][column] = change(perturbed[table][row][column])
    return differences(perturbed, reference)


def _first_tom_row(reference: dict) -> int:
    return next(i for i, row in enumerate(reference["data"]) if row["tom_steps"] > 0)


def test_a_track_moved_beyond_its_tolerance_is_caught_and_within_it_is_not(sample):
    def moved(by):
        def change(tracks):
            tracks[3][2][0] += by
            return tracks
        return change

    [problem] = _changed(sample, "data", 1, "tracks", moved(2 * TOLERANCES["tracks"][0]))
    assert "tracks: 1 values off by more than 0.001" in problem and "at (3, 2, 0)" in problem
    assert not _changed(sample, "data", 1, "tracks", moved(TOLERANCES["tracks"][0] / 5))


def test_a_homography_entry_and_a_moved_nan_are_caught(sample):
    def tilted(homography):
        homography[2][2][0] += 1e-5  # a perspective term: the fit maps points elsewhere
        return homography

    assert "homography:" in _changed(sample, "data", 0, "homography", tilted)[0]

    def fitted(errors):
        return [0.5, *errors[1:]]  # frame 0 of a window not compensated was not fitted (NaN): now it is

    static = next(i for i, row in enumerate(sample["data"]) if row["reprojection_error"][0] is None)
    assert "reprojection_error: NaN in other places" in _changed(sample, "data", static, "reprojection_error", fitted)[0]


@pytest.mark.parametrize("column, change", [
    ("mark_ids", lambda ids: ids[::-1]),
    ("mark_positive", lambda flags: [not flag for flag in flags]),
    ("num_moving_points", lambda count: count + 1),
    ("tom_targets", lambda targets: [[[x + 1, y] for x, y in trace] for trace in targets]),
    ("conversations", lambda turns: [*turns[:-1], {**turns[-1], "value": turns[-1]["value"].replace("Mark", "mark", 1)}]),
    ("camera_status", lambda status: "applied" if status == "static" else "static"),
    ("video_path", lambda path: "/data/" + path),
])
def test_a_decision_that_differs_at_all_is_caught(sample, column, change):
    [problem] = _changed(sample, "data", _first_tom_row(sample), column, change)
    assert problem.startswith(f"data row {sample['data'][_first_tom_row(sample)]['sample_id']}, {column}: ")


def _jpeg_changed(reference: dict, row: int, column: str, change) -> list[str]:
    """The reference with one image's decoded pixels changed, stored without loss (PNG)."""
    def changed(data: bytes) -> bytes:
        picture = change(Image.open(io.BytesIO(data)).convert("RGB"))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return buffer.getvalue()
    return _changed(reference, "data", row, column, changed)


def test_an_image_a_grey_level_brighter_or_with_marks_drawn_elsewhere_is_caught(sample):
    row = _first_tom_row(sample)
    [brighter] = _jpeg_changed(sample, row, "image", lambda p: Image.eval(p, lambda v: min(255, v + 2)))
    assert "image: decoded pixels differ by 1.9" in brighter or "image: decoded pixels differ by 2.0" in brighter
    ids, xy = sample["data"][row]["mark_ids"], np.asarray(sample["data"][row]["mark_xy"]) + 4
    elsewhere = _jpeg_changed(sample, row, "som_image",
                              lambda picture: draw_marks(picture, ids, xy, mark_font(picture.width)))
    assert len(elsewhere) == 1 and "som_image: decoded pixels differ" in elsewhere[0]


def test_an_image_whose_pixels_another_cpu_rounded_otherwise_passes(sample):
    """A tenth of the pixels off by one grey level before the JPEG is made again, at the run's quality
    (a resize rounding otherwise in the last bit; the re-encoding alone costs about half a level)."""
    quality = run_config("sample").render.jpeg_quality
    rng = np.random.default_rng(0)

    def rounded_otherwise(data: bytes) -> bytes:
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.int16)
        off = (rng.random(pixels.shape[:2]) < 0.1)[..., None] * rng.choice([-1, 1], pixels.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels + off, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()

    assert IMAGE_TOLERANCE["mean"] == 1.0
    for row in range(len(sample["data"])):
        for column in ("image", "som_image"):
            assert not _changed(sample, "data", row, column, rounded_otherwise)


def test_error_rows_files_and_row_order_are_pinned_exactly():
    reference = read_reference("stand-ins-one-point")
    [message] = _changed(reference, "errors", 0, "message", lambda text: text + ".")
    assert message.startswith("errors row folder/") and ", message: " in message
    dropped = copy.deepcopy(reference)
    dropped["data"].pop()
    dropped["files"][next(iter(dropped["files"]))] -= 1
    assert [problem.split(":")[0] for problem in differences(dropped, reference)] == ["files and their row counts",
                                                                                    "data"]
    swapped = copy.deepcopy(reference)
    swapped["data"][:2] = swapped["data"][1::-1]
    assert differences(swapped, reference)[0].startswith("data: rows [")
