"""Side by side with Magma's own data code: rows of a real magma-data run -> samples -> batches.

    python benchmarks/magma_data_parity.py --official-path /work/official/Magma \\
        --official-python /work/official/magma-venv/bin/python [--data out/sample] [--golden FILE]

``--official-path`` is a checkout of Magma's source (microsoft/Magma @ e373780) and
``--official-python`` a venv where it imports (``scripts/official-magma-venv.sh``).
Without ``--data``, a sample-source run is made first (``magma-data run video_tom --input sample``
with settings that give ToM rows). Every row of it, robot rows made from some of them by the
action stage, and LLaVA rows (an image with ``<image>`` after the text, two images, none) become
samples twice: by ``magma_data.train.data.SampleMaker`` here, and by Magma's
``LazySupervisedDataset.__getitem__`` and ``DataCollatorForSupervisedDataset`` there
(``benchmarks/magma_data_parity_official.py``). Token ids, labels and image grids must be equal,
pixels within 1e-6, for every sample and batch, at Magma's 4096 tokens and at a length that
truncates. ``--golden`` writes one video and one robot case for tests/test_train_data.py.
Figures go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from magma_parity import max_diff
from results_file import git_commit, replace_section

from magma_data.magma_text import asks_about_marks
from magma_data.stages.action_tokens import ActionTokensStage
from magma_data.train import MagmaProcessor
from magma_data.train.create import create_tiny
from magma_data.train.data import Collator
from magma_data.train.readers import DataSpec, Reader, SplitRule, open_data, split_rows
from magma_data.train.samples import BadRow, SampleMaker
from magma_data.train.tokenizer import save_tokenizer

OFFICIAL_DRIVER = Path(__file__).with_name("magma_data_parity_official.py")
#: Magma's length, one that cuts the longer ToM answers short, one that cuts the second image's token off
MAX_LENGTHS = (4096, 160, 80)
SAMPLE_RUN = (
    "--input", "sample", "--tracker", "lk", "--height", "128", "--grid-size", "8", "--window-len", "8",
    "--window-stride", "4", "--set", "marks.moving_threshold_px=0.5", "--set", "render.speed_threshold=1",
    "--no-progress",
)
LLAVA_ROWS = [
    {"id": "after", "image": "a.png", "conversations": [
        {"from": "human", "value": "What colour is the cup?\n<image>"}, {"from": "gpt", "value": "Red."},
        {"from": "human", "value": "And the table?"}, {"from": "gpt", "value": "Brown, with a cloth on it."}]},
    {"id": "portrait", "image": "b.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the scene."}, {"from": "gpt", "value": "A kitchen counter."}]},
    {"id": "text_only", "conversations": [
        {"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "Hello!"}]},
]
LLAVA_IMAGES = {"a.png": (640, 480), "b.png": (300, 900)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-path", required=True, help="checkout of Magma's source at e373780")
    parser.add_argument("--official-python", required=True, help="python of a venv where the official code imports")
    parser.add_argument("--data", type=Path, help="a magma-data output folder (default: a sample-source run)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--golden", type=Path, help="write the golden test cases to this JSON file")
    parser.add_argument("--results", type=Path, help="markdown file to write (default benchmarks/RESULTS.md)")
    return parser.parse_args()


def sample_run(work: Path) -> Path:
    output = work / "sample"
    magma_data = Path(sys.executable).with_name("magma-data")
    subprocess.run([str(magma_data), "run", "video_tom", "--output", str(output), *SAMPLE_RUN], check=True)
    return output


def robot_row(row: dict, index: int) -> dict:
    """A robot row made from a video row by the action stage: the action turn first, then the ToM turn."""
    rng = np.random.default_rng(index)
    turns = row["conversations"]
    marks_turns = [turn for question, answer in zip(turns[::2], turns[1::2]) if asks_about_marks(question["value"])
                   for turn in (question, answer)]  # a robot row has no semantic turn
    normalized = rng.uniform(-1, 1, 7).astype(np.float32)
    robot = dict(row, conversations=marks_turns, action=normalized, action_normalized=normalized, tom=True)
    return {**robot, **ActionTokensStage()(robot)}


def write_items(work: Path, sources: list[Reader], maker: SampleMaker) -> tuple[list[dict], dict]:
    """Every case, as both sides read it, and ours as rows; images saved losslessly for the official side."""
    (work / "images").mkdir(parents=True, exist_ok=True)
    items, rows = [], {}
    video, every = sources[0], SplitRule("all", 0.0)
    for index, row in enumerate(split_rows(video, every)):
        cases = [(f"video_{index}", row)]
        if index % 3 == 0:
            cases.append((f"robot_{index}", robot_row(row, index)))
        for name, case in cases:
            turns, images, _ = maker.magma_content(case)
            paths = []
            for number, image in enumerate(images):
                path = Path("images") / f"{name}_{number}.png"
                image.save(work / path)
                paths.append(str(path))
            item = {"name": name, "kind": "robot" if name.startswith("robot") else "video", "conversations": turns, "images": paths}
            if "action_normalized" in case:
                item["action_normalized"] = np.asarray(case["action_normalized"]).tolist()
            items.append(item)
            rows[name] = (case, video)
    llava = sources[1]
    for index, row in enumerate(split_rows(llava, every)):
        items.append({"name": f"llava_{row['id']}", "kind": "llava", "row": LLAVA_ROWS[index]})
        rows[f"llava_{row['id']}"] = (row, llava)
    return items, rows


def write_llava(work: Path) -> Path:
    folder = work / "llava"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    from PIL import Image

    for name, (width, height) in LLAVA_IMAGES.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name)
    (folder / "llava.json").write_text(json.dumps(LLAVA_ROWS))
    return folder / "llava.json"


def compare(ours: dict, theirs: dict, names: list[str], batches: dict, collate, image_token_id: int) -> dict:
    figures = {"samples": 0, "ids": True, "labels": True, "sizes": True, "pixels": 0.0, "supervised": 0,
               "ours_skipped": Counter(), "official_failed": [], "batches": 0, "batches_equal": True}
    for name in names:
        mine, official = ours[name], theirs["samples"][name]
        if isinstance(mine, BadRow) or "error" in official:
            if isinstance(mine, BadRow):
                figures["ours_skipped"][f"{mine.reason}; official: {_official_outcome(official, image_token_id)}"] += 1
            if "error" in official and not isinstance(mine, BadRow):
                figures["official_failed"].append(f"{name}: {official['error']}")
            continue
        figures["samples"] += 1
        figures["ids"] &= torch.equal(mine.input_ids, official["input_ids"])
        figures["labels"] &= torch.equal(mine.labels, official["labels"])
        figures["sizes"] &= torch.equal(mine.image_sizes, official["image_sizes"])
        figures["pixels"] = max(figures["pixels"], max_diff(mine.pixel_values, official["pixel_values"]))
        figures["supervised"] += int((mine.labels != -100).sum())
    for batch_name, members in batches.items():
        if batch_name not in theirs["batches"] or any(isinstance(ours[m], BadRow) for m in members):
            continue
        mine, official = collate([ours[m] for m in members]).inputs, theirs["batches"][batch_name]
        figures["batches"] += 1
        figures["batches_equal"] &= all(torch.equal(mine[k], official[k]) for k in ("input_ids", "labels", "attention_mask", "image_sizes"))
        figures["pixels"] = max(figures["pixels"], max_diff(mine["pixel_values"], official["pixel_values"]))
    return figures


def _official_outcome(official: dict, image_token_id: int) -> str:
    if "error" in official:
        return official["error"].partition(":")[0]
    tokens = int((official["input_ids"] == image_token_id).sum())
    images = len(official["image_sizes"])
    return "a sample with fewer <image> tokens than images, which the model rejects" if tokens < images else "a sample"


def main() -> int:
    args = parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="magma-data-parity-"))
    work.mkdir(parents=True, exist_ok=True)
    model = create_tiny(work / "tiny") if not (work / "tiny" / "config.json").exists() else work / "tiny"
    processor = MagmaProcessor.from_pretrained(model)
    save_tokenizer(processor.tokenizer, work / "tokenizer")
    data = args.data or sample_run(work)
    sources = open_data([DataSpec(data), DataSpec(write_llava(work))])
    items, rows = write_items(work, sources, SampleMaker(processor))
    names = [item["name"] for item in items]
    batches = {"first four video rows": names[:4], "video, robot and LLaVA": [names[0], next(n for n in names if n.startswith("robot")), names[-3], names[-1]]}
    settings = {key: getattr(processor.image_processor, key) for key in ("base_img_size", "num_crops", "anyres_strategy")}
    (work / "items.json").write_text(json.dumps({"items": items, "batches": batches, "max_lengths": list(MAX_LENGTHS), "image_processor": settings}))
    subprocess.run([args.official_python, str(OFFICIAL_DRIVER), "--official-path", args.official_path, "--work", str(work)], check=True)
    official = torch.load(work / "official.pt", weights_only=True)

    report, failures = [], []
    for max_length in MAX_LENGTHS:
        maker = SampleMaker(processor, max_length)
        ours = {}
        for name, (row, source) in rows.items():
            try:
                ours[name] = maker(row, source)
            except BadRow as bad:
                ours[name] = bad
        collate = Collator(processor.tokenizer.pad_token_id, max_length)
        figures = compare(ours, official[max_length], names, batches, collate, maker.image_token_id)
        report.append((max_length, figures))
        if not (figures["ids"] and figures["labels"] and figures["sizes"] and figures["pixels"] <= 1e-6 and figures["batches_equal"]
                and not figures["official_failed"]):
            failures.append(str(max_length))
    if args.golden:
        write_golden(args.golden, items, official[MAX_LENGTHS[0]], rows)

    body = render(report, len(items), data)
    print(body)
    replace_section("Magma data parity: rows to samples and batches", body, *([args.results] if args.results else []))
    print("FAILED at max length " + ", ".join(failures) if failures else "all samples and batches equal")
    return 1 if failures else 0


def write_golden(path: Path, items: list[dict], official: dict, rows: dict) -> None:
    """One ToM video case and one robot case: the row's turns (and action), Magma's ids and labels."""
    chosen = [next(i for i in items if i["kind"] == "video" and "should be moved" in i["conversations"][-1]["value"]),
              next(i for i in items if i["kind"] == "robot")]
    golden = []
    for item in chosen:
        sample = official["samples"][item["name"]]
        golden.append({
            "name": item["name"],
            "conversations": item["conversations"],
            "action_normalized": item.get("action_normalized"),
            "image_sizes": sample["image_sizes"].tolist(),
            "input_ids": sample["input_ids"].tolist(),
            "labels": sample["labels"].tolist(),
        })
    path.write_text("[\n" + ",\n".join(json.dumps(case) for case in golden) + "\n]\n")  # one case a line


def render(report: list, cases: int, data: Path) -> str:
    import transformers

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"{now} · commit {git_commit()} · {platform.machine()} CPU, torch {torch.__version__}, transformers "
        f"{transformers.__version__} (official: microsoft/Magma @ e373780 on transformers 4.48.2). Produced by "
        f"`benchmarks/magma_data_parity.py`: {cases} cases (every row of a sample-source run, robot rows made from "
        "every third by the action stage, 3 LLaVA rows) through `SampleMaker` and through Magma's "
        "`LazySupervisedDataset.__getitem__` and `DataCollatorForSupervisedDataset`; the tiny model's tokenizer.",
        "",
        "| max length | samples compared | ids equal | labels equal | supervised tokens | image grids equal | pixels max diff | batches equal | skipped by ours |",
        "|---:|---:|---|---|---:|---|---:|---|---|",
    ]
    for max_length, figures in report:
        skipped = "; ".join(f"{count} rows ({what})" for what, count in sorted(figures["ours_skipped"].items())) or "none"
        lines.append(
            f"| {max_length} | {figures['samples']} | {figures['ids']} | {figures['labels']} | {figures['supervised']} | "
            f"{figures['sizes']} | {figures['pixels']:.1e} | {figures['batches_equal']} ({figures['batches']}) | {skipped} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
