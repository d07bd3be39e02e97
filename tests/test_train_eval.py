"""magma-train eval: ToM answers scored against the rows' targets; and a model that learns its rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from train_fixtures import tiny_magma, tom_shards

from magma_data.magma_text import tom_turn
from magma_data.train.cli import main
from magma_data.train.data import BadRow
from magma_data.train.eval import RowResult, score_tom_answer, summarize, tom_targets
from magma_data.train.training_log import read_log

TARGET_IDS = [3, 7]
TARGETS = [[[100, 100], [104, 100], [108, 100]], [[20, 200], [20, 196]]]


def _answer(ids, traces) -> str:
    return tom_turn("video", "open it", np.array([1, 3, 7]), np.array(ids), [np.array(t) for t in traces])[1]["value"]


def _score(answer: str) -> RowResult:
    return score_tom_answer(RowResult("s", "x"), answer, TARGET_IDS, TARGETS)


def test_the_target_answer_scores_perfectly():
    result = _score(_answer(TARGET_IDS, TARGETS))
    assert (result.predicted_marks, result.correct_marks, result.traced_marks, result.problems) == (2, 2, 2, [])
    assert result.displacements == [(0.0, 0.0), (0.0, 0.0)]


def test_untraced_marks_score_as_standing_still_and_malformed_lists_are_not_trusted():
    silent = _score("I do not know.")
    assert silent.predicted_marks == silent.traced_marks == 0 and silent.problems
    assert silent.displacements == [(pytest.approx(6.0), 8.0), (4.0, 4.0)]  # the no-motion baseline

    one_wrong = _score(_answer([3, 9], [TARGETS[0], [[50, 50], [60, 60]]]))
    assert (one_wrong.predicted_marks, one_wrong.correct_marks, one_wrong.traced_marks) == (2, 1, 1)
    assert one_wrong.displacements == [(0.0, 0.0), (4.0, 4.0)]

    cut = _score(_answer(TARGET_IDS, TARGETS)[:-12])  # the second list loses its end
    assert cut.traced_marks == 1 and any("malformed" in problem for problem in cut.problems)

    longer = _score(_answer([3], [[[100, 100], [104, 100], [108, 100], [112, 100]]]))
    assert longer.displacements[0] == (pytest.approx(4 / 3), 4.0)  # a fourth step against the target's end


def test_tom_targets_that_do_not_match_their_marks_are_a_skip_reason_not_a_crash():
    assert tom_targets({"tom_mark_ids": TARGET_IDS, "tom_targets": TARGETS})[0] == TARGET_IDS
    for broken in ({"tom_mark_ids": [3], "tom_targets": TARGETS}, {"tom_mark_ids": [3], "tom_targets": [[[1, 2]]]},
                   {"tom_mark_ids": [3], "tom_targets": None}):
        with pytest.raises(BadRow, match="ToM targets are malformed"):
            tom_targets(broken)


def test_summaries_are_micro_averages():
    rows = [_score(_answer(TARGET_IDS, TARGETS)), _score("nothing"), RowResult("s", "y", skipped="text does not fit")]
    rows[0].loss_sum, rows[0].loss_tokens, rows[1].loss_sum, rows[1].loss_tokens = 2.0, 10, 6.0, 10
    figures = summarize(rows)
    assert figures["rows"] == 3 and figures["skipped_rows"] == {"text does not fit": 1}
    assert figures["loss"] == pytest.approx(0.4) and figures["tom_questions"] == 2
    assert figures["mark_precision"] == 1.0 and figures["mark_recall"] == 0.5 and figures["marks_traced"] == 0.5
    assert figures["malformed_answers"] == 0.5 and figures["ade"] == pytest.approx((0 + 0 + 6 + 4) / 4)


def _eval(tmp_path_factory, model, output, *extra) -> dict:
    result = CliRunner().invoke(main, [
        "eval", "--model", str(model), "--data", str(tom_shards(tmp_path_factory)), "--output", str(output),
        *extra,
    ])
    assert result.exit_code == 0, result.output
    assert "ADE" in result.output and "sample" in result.output
    return json.loads((output / "eval.json").read_text())


def test_eval_writes_per_source_figures(tmp_path_factory, tmp_path):
    summary = _eval(tmp_path_factory, tiny_magma(tmp_path_factory), tmp_path, "--split", "all", "--limit", "3",
                    "--max-new-tokens", "6")
    figures = summary["sources"]["sample"]
    assert figures["rows"] == 3 and summary["all"] == figures and figures["loss"] > 0
    assert figures["tom_questions"] >= 1 and figures["ade"] > 0
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 3 and all(a["skipped"] is None for a in answers)
    result = CliRunner().invoke(main, ["eval", "--model", str(tiny_magma(tmp_path_factory)), "--data",
                                       str(tom_shards(tmp_path_factory)), "--output", str(tmp_path / "none"),
                                       "--validation-fraction", "0"])
    assert result.exit_code != 0 and "--split all" in str(result.exception)


@pytest.mark.slow
def test_overfitting_eight_rows_cuts_the_loss_five_times_and_beats_the_untrained_model(tmp_path_factory, tmp_path):
    shards = tom_shards(tmp_path_factory)
    result = CliRunner().invoke(main, [
        "pretrain", "--data", str(shards), "--model", str(tiny_magma(tmp_path_factory)), "--output", str(tmp_path / "run"),
        "--max-steps", "80", "--batch-size", "8", "--global-batch", "8", "--lr", "1e-2", "--train", "llm,projector",
        "--validation-fraction", "0", "--num-workers", "1", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    losses = [record["loss"] for record in read_log(tmp_path / "run")]
    assert losses[0] / losses[-1] >= 5, losses

    trained = _eval(tmp_path_factory, tmp_path / "run", tmp_path / "trained", "--split", "all", "--max-new-tokens", "120")
    untrained = _eval(tmp_path_factory, tiny_magma(tmp_path_factory), tmp_path / "untrained", "--split", "all",
                      "--max-new-tokens", "120")
    print(json.dumps({"losses": losses[::10] + losses[-1:], "trained": trained["all"], "untrained": untrained["all"]}))
    assert trained["all"]["tom_questions"] == untrained["all"]["tom_questions"] >= 6
    assert trained["all"]["ade"] < untrained["all"]["ade"] and trained["all"]["fde"] < untrained["all"]["fde"]
    assert trained["all"]["mark_recall"] > untrained["all"]["mark_recall"]
    assert trained["all"]["loss"] < untrained["all"]["loss"] / 5
