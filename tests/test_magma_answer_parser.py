"""Reading generated SoM / ToM answers back into marks and grid traces (magma_text.parse_answer)."""

from __future__ import annotations

import numpy as np
import pytest
from test_render import hand_built_row

from magma_data.magma_text import parse_answer, parse_som_answer, parse_tom_answer, som_turn, tom_turn
from magma_data.stages.render import RenderStage


def answer_of(turns: list[dict]) -> str:
    return turns[-1]["value"]


def test_the_render_stages_tom_answer_parses_back_to_its_marks_and_targets():
    row = RenderStage()(hand_built_row())

    parsed = parse_answer(answer_of(row["conversations"]))

    assert parsed.kind == "tom" and parsed.problems == []
    assert list(parsed.traces) == row["tom_mark_ids"].tolist()
    assert list(parsed.traces.values()) == row["tom_targets"]
    assert parsed.marks == {int(i): target[0] for i, target in zip(row["tom_mark_ids"], row["tom_targets"])}


def test_the_render_stages_som_answer_parses_back_to_every_mark():
    row = hand_built_row()
    row["mark_positive"] = np.zeros(4, bool)  # nothing moves: the SoM-only fallback
    rendered = RenderStage()(row)

    parsed = parse_answer(answer_of(rendered["conversations"]))

    assert parsed.kind == "som" and parsed.problems == []
    assert parsed.marks == {1: [10, 20], 2: [51, 50], 3: [250, 250], 4: [150, 100]}


@pytest.mark.parametrize("seed", range(20))
def test_random_tom_and_som_answers_round_trip_through_the_templates(seed):
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(np.arange(1, 60), size=rng.integers(2, 9), replace=False))
    moving = np.sort(rng.choice(ids, size=rng.integers(1, len(ids) + 1), replace=False))
    targets = [rng.integers(0, 256, (rng.integers(2, 12), 2)) for _ in moving]
    positions = rng.integers(0, 256, (len(ids), 2))
    trimmed = lambda text: text.strip()  # the Llama-3 chat template trims every message  # noqa: E731

    tom = parse_tom_answer(trimmed(answer_of(tom_turn("video", "stir the pot", ids, moving, targets))))
    som = parse_som_answer(trimmed(answer_of(som_turn(ids, positions))))

    assert tom.problems == [] and som.problems == []
    assert tom.traces == {int(i): target.tolist() for i, target in zip(moving, targets)}
    assert som.marks == {int(i): position.tolist() for i, position in zip(ids, positions)}


TOM = (
    'Mark 2 at [51,50], Mark 4 at [150,100] should be moved, and their future positions are:\n\n'
    '"Mark 2": "[[55,50],[59,50]]"\n\n"Mark 4": "[[150,103],[150,107]]"'
)


@pytest.mark.parametrize(
    "text, traces, problem",
    [
        (TOM[:-12], {2: [[51, 50], [55, 50], [59, 50]], 4: [[150, 100], [150, 103]]}, "mark 4 are malformed or cut off"),
        (TOM.replace('"Mark 4": "[[150,103],[150,107]]"', ""), {2: [[51, 50], [55, 50], [59, 50]]},
         "mark 4 should be moved but has no future positions"),
        (TOM.replace("Mark 4 at [150,100]", "Mark 4 at [150,300]"), None, "mark 4 has points off the 256x256 grid"),
        (TOM.replace(", Mark 4 at [150,100]", ""), {2: [[51, 50], [55, 50], [59, 50]]},
         "mark 4 has future positions but no start position"),
        (TOM.replace('"Mark 2": ', '"Mark 2": oops '), None, "mark 2 are malformed"),
        (TOM.split(" should")[0], {}, "the future positions are missing"),
        (TOM.replace("Mark 4 at", "Mark 2 at"), None, "mark 2 is listed twice"),
        (TOM + '\n\n"Mark 2": "[[1,1]]"', None, "mark 2 has two future lists"),
        (TOM.replace(" should be moved,", ""), None, "no 'should be moved'"),
    ],
)
def test_malformed_tom_answers_keep_what_parses_and_say_what_did_not(text, traces, problem):
    parsed = parse_tom_answer(text)  # the caller knows it asked a ToM question
    assert any(problem in message for message in parsed.problems), parsed.problems
    if traces is not None:
        assert parsed.traces == traces


@pytest.mark.parametrize(
    "text, marks, problem",
    [
        ("I cannot see any marks.", {}, "no mark found"),
        ("Mark 1 at [10,20]. Mark 2 at [51,", {1: [10, 20]}, "unreadable text: 'Mark 2 at [51'"),
        ("Mark 1 at [10,20]. the cup. Mark 3 at [5,6]", {1: [10, 20], 3: [5, 6]}, "unreadable text: 'the cup'"),
        ("Mark 1 at [-3,20]", {1: [-3, 20]}, "off the 256x256 grid"),
    ],
)
def test_malformed_som_answers_keep_what_parses_and_say_what_did_not(text, marks, problem):
    parsed = parse_answer(text)

    assert parsed.kind == "som" and parsed.marks == marks
    assert any(problem in message for message in parsed.problems), parsed.problems


def test_answers_with_extra_spaces_still_parse():
    parsed = parse_answer('Mark 7 at [ 1 , 2 ] should be moved, and their future positions are: "Mark 7" : "[[3, 4], [5, 6]]"')
    assert parsed.problems == [] and parsed.traces == {7: [[1, 2], [3, 4], [5, 6]]}
