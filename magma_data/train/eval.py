"""``magma-train eval``: does the model know where things will move?

For every row of the split, per source:

- next-token loss: the row as a training sample (``data.SampleMaker``), teacher-forced, averaged
  over its supervised tokens;
- for rows with a ToM question: the model answers it greedily, given the turns before it and the
  images they show, and ``magma_text.parse_answer`` reads the answer back. Scored against the
  row's ``tom_mark_ids`` / ``tom_targets`` (``score_tom_answer``):
  mark selection (precision and recall of the marks it says should move), trace error in cells
  of the 256 grid (average and final displacement, ADE / FDE), and malformed answers (the parser
  found a problem).

Trace error is over the steps the answer predicts, each compared with the target at the same
step (its last point once it ends). A target mark the answer does not trace, or traces in a list
the parser found malformed (its points may belong to other marks), is scored as if predicted to
stay at its start, over the target's steps: a model that answers nothing then scores the
no-motion baseline, never better than one that predicts motion well.

Results go to ``<output>/eval.json`` (``answers.jsonl`` holds every answer) and print as a table.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from magma_data.magma_text import ACTION_TOKEN, IGNORE_INDEX, IMAGE_TOKEN, asks_about_marks, parse_answer

from .lora import load_model
from .model import MagmaForCausalLM
from .parallel import Processes
from .processor import MagmaProcessor
from .readers import DataSpec, Reader, SplitRule, open_data, split_rows
from .samples import BadRow, SampleMaker
from .settings import EvalConfig

EVAL_FILE = "eval.json"
ANSWERS_FILE = "answers.jsonl"


@dataclass
class RowResult:
    """What one row contributed; summed per source by ``summarize``."""

    source: str
    sample_id: str
    skipped: str | None = None
    loss_sum: float = 0.0
    loss_tokens: int = 0
    answer: str | None = None
    problems: list[str] = field(default_factory=list)
    predicted_marks: int = 0
    target_marks: int = 0
    correct_marks: int = 0
    traced_marks: int = 0
    #: per target mark: (average, final) displacement in grid cells
    displacements: list[tuple[float, float]] = field(default_factory=list)


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Score the model on the split; returns (and, on the main process, writes) the results."""
    processes = Processes.start()
    try:
        return _evaluate(config, processes)
    finally:
        processes.end()


def _evaluate(config: EvalConfig, processes: Processes) -> dict[str, Any]:
    config = config.resolved(torch.cuda.is_available())
    dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32
    model = load_model(config.model, dtype).to(processes.device).eval()
    processor = MagmaProcessor.from_pretrained(config.model)
    maker = SampleMaker(processor, config.max_length)
    if maker.action_token_id is None and processes.is_main:
        print(f"{config.model} has no {ACTION_TOKEN} token: rows with actions are skipped (magma-train finetune adds it, "
              "as Magma's train.py does)")
    fraction = config.validation_fraction
    sources = open_data([DataSpec.parse(entry) for entry in config.data])
    rule = SplitRule(config.split, fraction)

    results = []
    for source in sources:  # read in place; each process scores the rows of its own blocks
        for row in split_rows(source, rule, config.limit, processes.rank, processes.world_size):
            results.append(evaluate_row(model, maker, source, row, config, processes.device))
    results = [result for part in processes.gather(results) for result in part]
    if not results:
        raise ValueError(
            f"no {config.split} rows in {', '.join(config.data)} (validation fraction {fraction:g}); "
            "try --split all, or a larger --validation-fraction"
        )
    summary = {
        "model": str(config.model),
        "split": config.split,
        "validation_fraction": fraction,
        "max_new_tokens": config.max_new_tokens,
        "sources": {name: summarize(rows) for name, rows in _by_source(results).items()},
        "all": summarize(results),
    }
    if processes.is_main:
        config.output.mkdir(parents=True, exist_ok=True)
        (config.output / EVAL_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        with (config.output / ANSWERS_FILE).open("w") as answers:
            for result in results:
                answers.write(json.dumps(asdict(result)) + "\n")
    return summary


@torch.no_grad()
def evaluate_row(
    model: MagmaForCausalLM, maker: SampleMaker, source: Reader, row: dict[str, Any], config: EvalConfig, device
) -> RowResult:
    result = RowResult(source.name, str(row.get("sample_id", row.get("id", ""))))
    try:
        sample = maker(row, source)
    except BadRow as bad:
        result.skipped = bad.reason
        return result
    output = model(
        input_ids=sample.input_ids[None].to(device),
        labels=sample.labels[None].to(device),
        pixel_values=sample.pixel_values[None].to(device, model.dtype),
        image_sizes=sample.image_sizes[None].to(device),
        logits_to_keep=1,  # the loss only
    )
    result.loss_tokens = int((sample.labels[1:] != IGNORE_INDEX).sum())
    result.loss_sum = float(output.loss) * result.loss_tokens
    if len(row.get("tom_mark_ids") or []):
        try:
            targets = tom_targets(row)
            answer = answer_tom_question(model, maker, source, row, config.max_new_tokens, device)
        except BadRow as bad:
            result.skipped = bad.reason
            return result
        score_tom_answer(result, answer, *targets)
    return result


def tom_targets(row: dict[str, Any]) -> tuple[list[int], list[np.ndarray]]:
    """The row's ToM marks and their grid traces, [L, 2] each, checked before any generation."""
    ids = [int(mark) for mark in row["tom_mark_ids"]]
    traces = [np.asarray(trace, np.float64) for trace in row.get("tom_targets") or []]
    if len(traces) != len(ids) or any(trace.ndim != 2 or trace.shape[1] != 2 or len(trace) < 2 for trace in traces):
        raise BadRow("ToM targets are malformed", f"{len(ids)} marks, traces of shapes {[t.shape for t in traces]}")
    return ids, traces


def answer_tom_question(
    model: MagmaForCausalLM, maker: SampleMaker, source: Reader, row: dict[str, Any], max_new_tokens: int, device
) -> str:
    """The model's greedy answer to the row's ToM question, after the turns before it."""
    turns, images, num_crops = source.content(maker, row, epoch=0)  # eval's maker drops no turn
    maker.check_tokens(turns)
    questions = [i for i, turn in enumerate(turns) if turn["from"] == "human" and asks_about_marks(turn["value"])]
    if not questions:
        raise BadRow("no ToM question", "the row has tom_mark_ids but no turn asks about its marks")
    question = questions[0]
    shown = sum(turn["value"].count(IMAGE_TOKEN) for turn in turns[: question + 1] if turn["from"] == "human")
    input_ids, labels = maker.tokens(turns[: question + 1], generation_prompt=True)
    maker.insert_actions(input_ids, labels, row)
    pixels = maker.processor.image_processor(images[:shown], num_crops=num_crops)
    generated = model.generate(
        input_ids[None].to(device),
        pixel_values=pixels["pixel_values"][None].to(device, model.dtype),
        image_sizes=pixels["image_sizes"][None].to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
    )
    return maker.tokenizer.decode(generated[0, len(input_ids) :], skip_special_tokens=True)


def score_tom_answer(result: RowResult, answer: str, target_ids: list[int], target_traces: list) -> RowResult:
    """Mark selection, trace error and problems of one answer against the row's targets."""
    result.answer = answer
    parsed = parse_answer(answer)
    targets = {int(mark): np.asarray(trace, np.float64) for mark, trace in zip(target_ids, target_traces)}
    predicted = set(parsed.marks) if parsed.kind == "tom" else set()
    result.problems = parsed.problems if parsed.kind == "tom" else ["not a ToM answer", *parsed.problems]
    result.predicted_marks, result.target_marks = len(predicted), len(targets)
    result.correct_marks = len(predicted & targets.keys())
    for mark, target in targets.items():
        trace = parsed.traces.get(mark) if parsed.kind == "tom" and mark not in parsed.malformed else None
        if trace is not None and len(trace) >= 2:
            result.traced_marks += 1
            prediction, steps = np.asarray(trace, np.float64), len(trace) - 1
        else:
            prediction, steps = target[:1], len(target) - 1  # scored as staying at its start
        at = np.arange(1, steps + 1)
        distances = np.linalg.norm(
            prediction[np.minimum(at, len(prediction) - 1)] - target[np.minimum(at, len(target) - 1)], axis=1
        )
        result.displacements.append((float(distances.mean()), float(distances[-1])))
    return result


def summarize(rows: list[RowResult]) -> dict[str, Any]:
    """Per-source figures: micro averages over rows (marks, tokens)."""
    scored = [row for row in rows if row.skipped is None]
    questions = [row for row in scored if row.answer is not None]
    tokens = sum(row.loss_tokens for row in scored)
    predicted = sum(row.predicted_marks for row in questions)
    targets = sum(row.target_marks for row in questions)
    correct = sum(row.correct_marks for row in questions)
    displacements = np.asarray([pair for row in questions for pair in row.displacements], np.float64).reshape(-1, 2)
    skipped = defaultdict(int)
    for row in rows:
        if row.skipped:
            skipped[row.skipped] += 1
    return {
        "rows": len(rows),
        "skipped_rows": dict(skipped),
        "loss": sum(row.loss_sum for row in scored) / tokens if tokens else None,
        "tom_questions": len(questions),
        "malformed_answers": sum(bool(row.problems) for row in questions) / len(questions) if questions else None,
        "mark_precision": correct / predicted if predicted else (None if not questions else 0.0),
        "mark_recall": correct / targets if targets else None,
        "marks_traced": sum(row.traced_marks for row in questions) / targets if targets else None,
        "ade": float(displacements[:, 0].mean()) if len(displacements) else None,
        "fde": float(displacements[:, 1].mean()) if len(displacements) else None,
    }


def _by_source(results: list[RowResult]) -> dict[str, list[RowResult]]:
    grouped: dict[str, list[RowResult]] = defaultdict(list)
    for result in results:
        grouped[result.source].append(result)
    return dict(sorted(grouped.items()))


def table(summary: dict[str, Any]):
    """``eval.json`` as a rich table: one row per source, then all."""
    from rich import box
    from rich.table import Table

    columns = [
        ("rows", "rows", "{}"), ("loss", "loss", "{:.3f}"), ("ToM", "tom_questions", "{}"),
        ("malformed", "malformed_answers", "{:.0%}"), ("P", "mark_precision", "{:.2f}"), ("R", "mark_recall", "{:.2f}"),
        ("traced", "marks_traced", "{:.0%}"), ("ADE", "ade", "{:.1f}"), ("FDE", "fde", "{:.1f}"),
    ]
    grid = Table(
        title=f"{summary['model']}, {summary['split']} split",
        caption="P, R: precision, recall of the marks said to move; traced: moving marks with a well-formed trace; "
        "ADE, FDE: average, final trace error in 256-grid cells",
        box=box.SIMPLE_HEAD,
    )
    grid.add_column("source")
    for title, _, _ in columns:
        grid.add_column(title, justify="right")
    for name, figures in [*summary["sources"].items(), ("all", summary["all"])]:
        grid.add_row(name, *("-" if figures[key] is None else form.format(figures[key]) for _, key, form in columns))
    return grid
