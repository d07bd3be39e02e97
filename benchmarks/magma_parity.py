"""Side by side with Magma's official code: processor outputs, logits, loss, generation, checkpoints.

    python benchmarks/magma_parity.py --official-path /work/official/Magma \\
        --official-python /work/official/magma-venv/bin/python

``--official-path`` is a checkout of Magma's source (microsoft/Magma @ e373780; the public fork
phuongthao0515/Magma holds that commit) and ``--official-python`` a venv where it imports
(``scripts/official-magma-venv.sh``: torchvision, timm 0.9, open_clip, transformers 4.48).
For each small config, the official code builds the model from a seed and saves it
(``benchmarks/magma_parity_official.py``, run in that venv); ours loads the saved folder and must give
the official processor outputs, fp32 logits within 1e-4 at every position the official model attends
to, the same training-mode loss within 1e-5, the same greedy generation; then the official code loads
what ours saves and must give its own logits again. Figures go to benchmarks/RESULTS.md.

Then, from a folder the official code saved with a tokenizer that has ``<pad>`` and ``<image>``
but no ``<action>`` (Magma-8B's situation): our token addition must give the rows train.py's own
``smart_tokenizer_and_embedding_resize`` gives, ``magma-train finetune`` runs on it (a short run on
a sample-source output), and the official code loads the trained folder (tokenizer included) and
must compute our logits, within 1e-4.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from results_file import git_commit, replace_section

from magma_data.magma_text import SYSTEM_PROMPT, action_turn, semantic_turn, som_turn, tom_turn
from magma_data.train import MagmaForCausalLM, MagmaProcessor
from magma_data.train.tokenizer import add_magma_tokens, build_tiny_tokenizer, save_tokenizer

OFFICIAL_DRIVER = Path(__file__).with_name("magma_parity_official.py")
LOGITS_BUDGET = 1e-4
LOSS_BUDGET = 1e-5
#: image sizes (width, height): grids (rows x cols) 1x2, 2x1, 2x2 and 1x1 at Magma-8B's settings
IMAGES = {"landscape.png": (640, 480), "portrait.png": (300, 900), "large.png": (1200, 1100), "small.png": (200, 150)}
TASK = "pick up the red cup"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-path", required=True, help="checkout of Magma's source at e373780")
    parser.add_argument("--official-python", required=True, help="python of a venv where the official code imports")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--results", type=Path, help="markdown file to write (default benchmarks/RESULTS.md)")
    return parser.parse_args()


def configs(tokenizer) -> dict[str, dict]:
    """Two small configs: Magma-8B's design (crop, mlp2x_gelu, 512 crops) and the other branches."""
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    crop = {
        "seed": 11,
        "train_seed": 1234,
        "max_shard_size": "300KB",
        "image_token_index": image_token,
        "text_config": {
            **ids, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 8192,
            "tie_word_embeddings": False, "model_type": "llama",
        },
        "tower": {"depths": [2, 1, 3, 1], "dims": [16, 24, 32, 48], "clip_embed_dim": 20, "layer_norm_eps": 1e-5, "drop_path_rate": 0.1},
        "vision_config": {
            "vision_backbone": "convnextxxlarge", "img_anyres_strategy": "crop", "mm_projector_type": "mlp2x_gelu",
            "mm_hidden_size": 48, "vision_feature_layer": "clip_vis_dense",
        },
        "processor": {"anyres_strategy": "crop", "base_img_size": 512, "num_crops": 4},
    }
    other = {
        "seed": 12,
        "train_seed": 4321,
        "max_shard_size": "200KB",
        "image_token_index": image_token,
        "text_config": {
            **ids, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 1, "num_attention_heads": 3,
            "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 8192,
            "tie_word_embeddings": False, "model_type": "llama",
        },
        "tower": {"depths": [1, 2, 1, 1], "dims": [8, 16, 24, 40], "clip_embed_dim": 12, "layer_norm_eps": 1e-6, "drop_path_rate": 0.0},
        "vision_config": {
            "vision_backbone": "convnextxxlarge", "img_anyres_strategy": "global", "mm_projector_type": "mlp3x_gelu",
            "mm_hidden_size": 40, "vision_feature_layer": "clip_vis_dense",
            # not derivable from tensor shapes: stated for our model (the official code ignores them)
            "layer_norm_eps": 1e-6, "drop_path_rate": 0.0,
        },
        "processor": {"anyres_strategy": "crop", "base_img_size": 64, "num_crops": 6},
    }
    return {"crop_mlp2x_512": crop, "global_mlp3x_64": other}


def conversation(turns: list[dict], tokenizer, generation_prompt: bool = False) -> dict:
    """The chat-rendered text, and the text before the first answer (where supervision starts)."""
    roles = {"human": "user", "gpt": "assistant"}
    messages = [{"role": "system", "content": SYSTEM_PROMPT}] + [
        {"role": roles[turn["from"]], "content": turn["value"]} for turn in turns
    ]
    if generation_prompt:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return {"text": text, "prompt_part": text}
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    first_answer = next(i for i, message in enumerate(messages) if message["role"] == "assistant")
    prompt = tokenizer.apply_chat_template(messages[:first_answer], tokenize=False, add_generation_prompt=True)
    return {"text": text, "prompt_part": prompt}


def write_cases(work: Path, tokenizer) -> dict:
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (width, height) in IMAGES.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(images / name)
    ids = np.array([3, 7, 12, 25])
    targets = [np.array([[120, 88], [125, 93], [131, 99]]), np.array([[40, 200], [44, 198]])]
    samples = {
        "one_image": {**conversation(semantic_turn(TASK), tokenizer), "images": ["landscape.png"]},
        "three_images_multiturn": {
            **conversation(
                semantic_turn(TASK)
                + tom_turn("video", TASK, ids, ids[:2], targets)
                + som_turn(ids, np.array([[10, 20], [30, 40], [50, 60], [70, 80]])),
                tokenizer,
            ),
            "images": ["small.png", "portrait.png", "large.png"],
        },
        "two_images": {
            **conversation(action_turn(TASK) + som_turn(ids[:2], np.array([[1, 2], [3, 4]])), tokenizer),
            "images": ["landscape.png", "small.png"],
        },
        "same_text_small": {**conversation(semantic_turn(TASK), tokenizer), "images": ["small.png"]},
        "same_text_large": {**conversation(semantic_turn(TASK), tokenizer), "images": ["large.png"]},
        "one_image_prompt": {
            **conversation(semantic_turn(TASK)[:1], tokenizer, generation_prompt=True),
            "images": ["portrait.png"],
        },
    }
    trio = ["one_image", "three_images_multiturn", "two_images"]
    cases = {
        "samples": samples,
        "cases": [
            {"name": "single image", "samples": ["one_image"], "padding": "right", "bool_mask": False},
            {"name": "3 images, 3 grids, multi-turn", "samples": ["three_images_multiturn"], "padding": "right", "bool_mask": False},
            {"name": "batch of 3, right-padded (collator)", "samples": trio, "padding": "right", "bool_mask": True},
            {"name": "batch of 3, left-padded", "samples": trio, "padding": "left", "bool_mask": False},
            {"name": "batch of 2, equal lengths, 1 vs 4 crops", "samples": ["same_text_small", "same_text_large"], "padding": "right", "bool_mask": False},
        ],
        "generate": ["one_image_prompt"],
        "max_new_tokens": 12,
    }
    (work / "cases.json").write_text(json.dumps(cases, indent=1))
    return cases


def run_official(args: argparse.Namespace, command: str, work: Path, config: str, *extra: str) -> None:
    subprocess.run(
        [args.official_python, str(OFFICIAL_DRIVER), command, "--official-path", args.official_path, "--work", str(work),
         "--config", config, *extra],
        check=True,
    )


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def compare_processor(ours: MagmaProcessor, work: Path, cases: dict, official: dict) -> dict:
    worst = {"ids_equal": True, "sizes_equal": True, "pixels": 0.0, "samples": 0}
    for name, sample in cases["samples"].items():
        images = [Image.open(work / "images" / file).convert("RGB") for file in sample["images"]]
        mine = ours(texts=sample["text"], images=images)
        theirs = official[name]
        worst["ids_equal"] &= torch.equal(mine["input_ids"][0], theirs["input_ids"]) and torch.equal(
            mine["attention_mask"][0], theirs["attention_mask"]
        )
        worst["sizes_equal"] &= torch.equal(mine["image_sizes"], theirs["image_sizes"])
        worst["pixels"] = max(worst["pixels"], max_diff(mine["pixel_values"], theirs["pixel_values"]))
        worst["samples"] += 1
    return worst


def compare_model(model: MagmaForCausalLM, cases: dict, official: dict, train_seed: int) -> list[dict]:
    rows = []
    for case in cases["cases"]:
        recorded = official["results"][case["name"]]
        batch = recorded["batch"]
        inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
        model.eval()
        with torch.no_grad():
            output = model(**inputs)
            with_labels = model(**inputs, labels=batch["labels"])  # transformers' contract: every position's logits
        attended = recorded["merged_mask"].bool()
        row = {
            "case": case["name"],
            "merged_mask_equal": torch.equal(output.attention_mask.bool(), attended),
            "attended": int(attended.sum()),
            "logits": max_diff(output.logits[attended], recorded["eval_logits"][attended]),
            "labels_logits": max_diff(with_labels.logits[attended], recorded["eval_logits"][attended]),
            "finite": bool(torch.isfinite(output.logits[attended]).all()),
        }
        model.train()
        torch.manual_seed(train_seed)
        trained = model(**inputs, labels=batch["labels"])
        trained.loss.backward()
        grad = model.multi_modal_projector.proj[0].weight.grad
        # the official training forward returns only the supervised positions' logits: compare those
        merged_labels = model.embed(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_sizes"],
                                    batch["labels"])[3]
        supervised_logits = trained.logits.detach()[:, :-1][merged_labels[:, 1:] != -100]
        row.update(
            loss=float(recorded["train_loss"]),
            loss_diff=abs(float(trained.loss) - float(recorded["train_loss"])),
            train_logits=max_diff(supervised_logits, recorded["train_logits"]),
            grad_rel=max_diff(grad, recorded["projector_grad"]) / float(recorded["projector_grad"].abs().max()),
        )
        model.zero_grad()
        rows.append(row)
    model.eval()
    return rows


def compare_generation(model: MagmaForCausalLM, cases: dict, official: dict) -> bool:
    same = True
    for name in cases["generate"]:
        sample = official["processed"][name]
        generated = model.generate(
            input_ids=sample["input_ids"][None],
            attention_mask=sample["attention_mask"][None],
            pixel_values=sample["pixel_values"][None],
            image_sizes=sample["image_sizes"][None],
            max_new_tokens=cases["max_new_tokens"],
            do_sample=False,
        )
        same &= torch.equal(generated[0], official["generations"][name])
    return same


def tower_drop_rates(model: MagmaForCausalLM) -> list[float]:
    return [block.drop_path.rate for stage in model.vision_tower.clip_vision_model.trunk.stages for block in stage.blocks]


def main() -> int:
    args = parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = args.work or Path(tempfile.mkdtemp(prefix="magma-parity-"))
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    save_tokenizer(tokenizer, work / "tokenizer")
    cases = write_cases(work, tokenizer)

    report = []
    failures = []
    for name, spec in configs(tokenizer).items():
        (work / f"{name}.json").write_text(json.dumps(spec, indent=1))
        run_official(args, "build", work, name)
        official = torch.load(work / name / "official.pt", weights_only=True)
        checkpoint = work / name / "official_checkpoint"

        processor = compare_processor(MagmaProcessor.from_pretrained(checkpoint), work, cases, official["processed"])
        model = MagmaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
        rows = compare_model(model, cases, official, spec["train_seed"])
        generation_same = compare_generation(model, cases, official)
        drop_rates_same = np.allclose(tower_drop_rates(model), official["drop_path_rates"], rtol=0, atol=1e-9)

        model.save_pretrained(work / name / "our_checkpoint", max_shard_size=spec["max_shard_size"])
        run_official(args, "reload", work, name)
        reloaded = torch.load(work / name / "official_reload.pt", weights_only=True)
        for row in rows:
            recorded = official["results"][row["case"]]
            attended = recorded["merged_mask"].bool()
            row["reload"] = max_diff(reloaded["eval_logits"][row["case"]][attended], recorded["eval_logits"][attended])
        shards = len(list((work / name / "our_checkpoint").glob("model-*.safetensors")))
        report.append((name, spec, processor, rows, generation_same, drop_rates_same, reloaded["loading_problems"], shards))

        checks = [
            processor["ids_equal"] and processor["sizes_equal"] and processor["pixels"] <= 1e-6,
            generation_same,
            drop_rates_same,
            json.loads(reloaded["loading_problems"]) == {},
        ] + [
            row["merged_mask_equal"] and row["finite"] and row["logits"] <= LOGITS_BUDGET and row["loss_diff"] <= LOSS_BUDGET
            and row["train_logits"] <= LOGITS_BUDGET and row["reload"] <= LOGITS_BUDGET and row["labels_logits"] <= LOGITS_BUDGET
            for row in rows
        ]
        if not all(checks):
            failures.append(name)

    body = render(report, work)
    print(body)
    results = [args.results] if args.results else []
    replace_section("Magma parity with the official code", body, *results)
    folder_body, folder_ok = official_folder(args, work)
    print(folder_body)
    replace_section("magma-train from an official-layout folder without <action>", folder_body, *results)
    if not folder_ok:
        failures.append("official folder without <action>")
    print("FAILED: " + ", ".join(failures) if failures else "all checks within budget")
    return 1 if failures else 0


#: A short sample-source run for the fine-tune (8 windows of 8 frames with ToM turns).
SAMPLE_RUN = ("--input", "sample", "--tracker", "lk", "--height", "128", "--grid-size", "8", "--window-len", "8",
              "--window-stride", "4", "--set", "marks.moving_threshold_px=0.5", "--set", "render.speed_threshold=1",
              "--set", "plan.max_windows_per_clip=2", "--no-progress")


def official_folder(args: argparse.Namespace, work: Path) -> tuple[str, bool]:
    """From a folder the official code saved without <action>: token addition, finetune, official reload."""
    name = "official_no_action"
    tokenizer = build_tiny_tokenizer(magma_tokens=("<image>", "<pad>"))
    save_tokenizer(tokenizer, work / "tokenizer_no_action")
    cases = write_cases(work, tokenizer)
    spec = {**configs(tokenizer)["crop_mlp2x_512"], "tokenizer": "tokenizer_no_action", "add_action": True}
    (work / f"{name}.json").write_text(json.dumps(spec, indent=1))
    run_official(args, "build", work, name)
    official = torch.load(work / name / "official.pt", weights_only=True)
    folder = work / name / "official_checkpoint"
    files = sorted(path.name for path in folder.iterdir())

    model = MagmaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    processor = MagmaProcessor.from_pretrained(folder)
    added = add_magma_tokens(model, processor.tokenizer)
    action = official["action"]
    tokens_same = {
        "added": added,
        "id_equal": processor.tokenizer.convert_tokens_to_ids("<action>") == action["id"],
        "vocab_equal": model.config.text_config.vocab_size == action["vocab_size"] == action["length"],
        "input_row": max_diff(model.get_input_embeddings().weight[-1].detach(), action["input_row"]),
        "output_row": max_diff(model.get_output_embeddings().weight[-1].detach(), action["output_row"]),
    }

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    shards = work / "sample_shards"
    if not (shards / "summary.json").is_file():
        subprocess.run([str(bin_dir / "magma-data"), "run", "video_tom", "--output", str(shards), *SAMPLE_RUN], check=True, env=env)
    trained = work / name / "trained"
    shutil.rmtree(trained, ignore_errors=True)
    finetune = subprocess.run(
        [str(bin_dir / "magma-train"), "finetune", "--model", str(folder), "--data", str(shards), "--output", str(trained),
         "--max-steps", "3", "--batch-size", "2", "--lr", "1e-3", "--precision", "fp32", "--validation-fraction", "0",
         "--num-workers", "0", "--no-progress"],
        check=True, env=env, capture_output=True, text=True,
    )
    said_once = finetune.stdout.count("has no <action>") == 1
    run_official(args, "reload", work, name, "--folder", "trained")
    reloaded = torch.load(work / name / "official_reload_trained.pt", weights_only=True)
    ours = MagmaForCausalLM.from_pretrained(trained, dtype=torch.float32).eval()
    rows = []
    for case in cases["cases"]:
        recorded = official["results"][case["name"]]
        batch = recorded["batch"]
        attended = recorded["merged_mask"].bool()
        with torch.no_grad():
            mine = ours(**{key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}).logits
        rows.append({"case": case["name"], "attended": int(attended.sum()),
                     "trained": max_diff(mine[attended], reloaded["eval_logits"][case["name"]][attended])})
    problems = json.loads(reloaded["loading_problems"])
    official_tokenizer = reloaded["action_id"] == action["id"] and reloaded["tokenizer_length"] == action["length"]
    ok = (
        tokens_same["added"] == ["<action>"] and tokens_same["id_equal"] and tokens_same["vocab_equal"]
        and tokens_same["input_row"] == 0 and tokens_same["output_row"] == 0 and said_once and problems == {}
        and official_tokenizer and all(row["trained"] <= LOGITS_BUDGET for row in rows)
    )
    lines = [
        f"Produced by `benchmarks/magma_parity.py` (commit {git_commit()}). The official code (e373780, transformers 4.48.2) "
        f"builds the crop_mlp2x_512 config with a tiny tokenizer holding `<image>` and `<pad>` but no `<action>`, and "
        f"saves it: {', '.join(files)}.",
        "",
        f"- `<action>` added by `tokenizer.add_magma_tokens` vs train.py's own `smart_tokenizer_and_embedding_resize` "
        f"on the same weights: id equal {tokens_same['id_equal']}, vocabulary sizes equal {tokens_same['vocab_equal']}, "
        f"new input row max |diff| {tokens_same['input_row']:.1e}, output row {tokens_same['output_row']:.1e}.",
        f"- `magma-train finetune --model <that folder>` (3 steps, every part, on a sample-source run): said once that "
        f"it added `<action>`: {said_once}.",
        f"- The official code loads the trained folder: loading problems {problems}; its tokenizer has `<action>` at "
        f"train.py's id and length: {official_tokenizer}. Its logits against ours on the same folder:",
        "",
        "| case | attended positions | trained folder, official vs ours (max abs diff) |",
        "|---|---:|---:|",
        *[f"| {row['case']} | {row['attended']} | {row['trained']:.1e} |" for row in rows],
    ]
    return "\n".join(lines), ok


def render(report: list, work: Path) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    import transformers

    lines = [
        f"{now} · commit {git_commit()} · {platform.machine()} CPU, fp32, torch {torch.__version__}, "
        f"transformers {transformers.__version__} (official: microsoft/Magma @ e373780 on transformers 4.48.2). "
        "Produced by `benchmarks/magma_parity.py`.",
        "",
        f"Budgets: logits {LOGITS_BUDGET:g} (max |diff| over the positions the official model attends to), "
        f"loss {LOSS_BUDGET:g}. Weights drawn by the official code from a seed, saved by it and loaded by ours; "
        "\"with labels\" is our forward given the labels, whose logits are every position's ([batch, length, V]) "
        "as transformers returns them, against the official eval-mode logits; \"train logits\" are our full logits at "
        "the supervised positions against the official training forward's (it returns only those). "
        "\"reload\" is the official model loading what ours saved. Train mode runs the towers' drop path "
        "with the same seed on both sides; the gradient column is the projector's first weight.",
        "",
        "Reading it: a difference of exactly 0 means both sides ran the same torch kernels in the same order "
        "(drop path included: the same Bernoulli draws under one seed); the official tower always runs under a "
        "reentrant checkpoint, so its backward may differ in the last bits. Not covered here: bf16 and GPU "
        "kernels (the official training scripts use flash attention), and Magma-8B's own weights (not "
        "downloadable on the machine that ran this).",
    ]
    for name, spec, processor, rows, generation_same, drop_rates_same, problems, shards in report:
        tower = spec["tower"]
        text = spec["text_config"]
        lines += [
            "",
            f"### {name}",
            "",
            f"{spec['vision_config']['img_anyres_strategy']} strategy, {spec['vision_config']['mm_projector_type']}, "
            f"{spec['processor']['base_img_size']}-px crops (up to {spec['processor']['num_crops']}); ConvNeXt depths "
            f"{tower['depths']}, widths {tower['dims']}, drop path {tower['drop_path_rate']}; Llama {text['num_hidden_layers']} "
            f"layers x {text['hidden_size']}, rope_theta {text['rope_theta']:g}, vocabulary {text['vocab_size']} (tiny BPE).",
            "",
            f"Processor ({processor['samples']} samples): input ids and masks equal: {processor['ids_equal']}; image "
            f"grids equal: {processor['sizes_equal']}; pixel values max |diff| {processor['pixels']:.1e}. Greedy "
            f"generation (12 tokens, KV cache) identical: {generation_same}. Drop-path rates per block equal: "
            f"{drop_rates_same}. Our save in {shards} shards, loaded by the official code with problems: {problems}.",
            "",
            "| case | attended positions | eval logits | with labels, [B, L, V] | train loss | loss diff | train logits | projector grad (rel) | reload logits |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row['case']} | {row['attended']} | {row['logits']:.1e} | {row['labels_logits']:.1e} | {row['loss']:.4f} | "
                f"{row['loss_diff']:.1e} | {row['train_logits']:.1e} | {row['grad_rel']:.1e} | {row['reload']:.1e} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
