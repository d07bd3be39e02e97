"""The official side of benchmarks/magma_parity.py; runs in the official Magma venv, not ours.

    OFFICIAL_PYTHON benchmarks/magma_parity_official.py build  --official-path DIR --work WORK --config NAME
    OFFICIAL_PYTHON benchmarks/magma_parity_official.py reload --official-path DIR --work WORK --config NAME

``build`` makes Magma's ``MagmaForCausalLM`` (microsoft/Magma @ e373780, imported from
``--official-path``) for a small config, re-draws every weight from a seed, saves it with the
official ``save_pretrained``, runs the official processor on the cases in ``WORK/cases.json``,
collates the batches as Magma's collator does, and records eval logits, training-mode loss and
logits, and greedy generations. ``reload`` loads the folder our model saved back into the
official model and records its eval logits. Everything goes to ``WORK/<config>/*.pt``.
With ``"add_action": true`` in the config, ``build`` also runs train.py's own
``smart_tokenizer_and_embedding_resize(["<action>"])`` on the model it saved (train.py L481-486)
and records the rows it makes; ``reload --folder NAME`` reads another folder ours wrote (a trained one)
and records its tokenizer's ``<action>`` id too.

What the official code needs and this script supplies, without changing it:
- its tower is fetched from the Hub (``hf-hub:laion/CLIP-convnext_xxlarge-...``); the Hub lookup is
  answered with open_clip's own convnext_xxlarge config whose timm model is a small ConvNeXt of
  the same block design (registered here with timm), and a 1-layer text tower (unused by Magma);
- ``wandb`` (imported by modeling_magma.py, not installed): a stub that records nothing;
- a one-process gloo group, which its training-mode forward requires;
- train.py imports deepspeed and its trainer / data packages at the top: stand-ins, so that its
  ``smart_tokenizer_and_embedding_resize`` can be called as it is;
- Magma's README rule for stock transformers 4.48: checkpoint keys under ``clip_vision_model``
  are not renamed (``gamma`` would become ``weight`` and the layer scales would be dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import types
from pathlib import Path

import torch

CLIP_HUB_NAME = "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg"
TIMM_NAME = "magma_parity_convnext"
IGNORE_INDEX = -100


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build", "reload"])
    parser.add_argument("--official-path", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--folder", default="our_checkpoint", help="reload: the folder under WORK/<config>/")
    return parser.parse_args()


def install_official(official_path: str, spec: dict):
    """Import the official package with the stand-ins described above; returns its modules."""
    sys.modules["wandb"] = types.SimpleNamespace(init=lambda **kwargs: None, log=lambda *args, **kwargs: None)
    sys.path.insert(0, official_path)

    import open_clip
    import timm
    from timm.models import register_model
    from timm.models.convnext import _create_convnext
    from transformers.modeling_utils import PreTrainedModel

    tower = spec["tower"]

    @register_model
    def magma_parity_convnext(pretrained=False, **kwargs):
        args = dict(depths=tower["depths"], dims=tower["dims"], norm_eps=tower["layer_norm_eps"])
        return _create_convnext("convnext_xxlarge", pretrained=pretrained, **dict(args, **kwargs))

    assert timm.is_model(TIMM_NAME)
    model_cfg = json.loads((Path(open_clip.__file__).parent / "model_configs/convnext_xxlarge.json").read_text())
    model_cfg["embed_dim"] = tower["clip_embed_dim"]
    model_cfg["vision_cfg"].update(timm_model_name=TIMM_NAME, timm_drop_path=tower["drop_path_rate"])
    model_cfg["text_cfg"].update(width=32, heads=2, layers=1)

    import magma.image_tower_magma as image_tower

    image_tower.download_pretrained_from_hf = lambda model_id, **kwargs: ""
    image_tower._get_hf_config = lambda model_id, cache_dir=None: {"model_cfg": json.loads(json.dumps(model_cfg)), "preprocess_cfg": {}}

    original_fix = PreTrainedModel._fix_state_dict_key_on_load

    def keep_tower_keys(key):
        return key if "clip_vision_model" in key else original_fix(key)

    PreTrainedModel._fix_state_dict_key_on_load = staticmethod(keep_tower_keys)

    from magma import configuration_magma, image_processing_magma, modeling_magma, processing_magma

    return configuration_magma, image_processing_magma, modeling_magma, processing_magma


def init_process_group() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        store = tempfile.mktemp(prefix="magma-parity-store-")
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)


def redraw_weights(model: torch.nn.Module, seed: int) -> None:
    """Every parameter from a seed, at scales where each one changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            shape = param.shape
            if name.endswith(".gamma"):
                value = 0.2 + 0.8 * torch.rand(shape, generator=generator)
            elif param.dim() == 1 and "norm" in name and name.endswith("weight"):
                value = 1.0 + 0.2 * torch.randn(shape, generator=generator)
            elif param.dim() == 1:
                value = 0.1 * torch.randn(shape, generator=generator)
            elif "row_seperator" in name:
                value = torch.randn(shape, generator=generator)
            else:
                value = torch.randn(shape, generator=generator) / shape[1:].numel() ** 0.5
            param.copy_(value)


def collate(samples: list[dict], pad_id: int, side: str, bool_mask: bool) -> dict:
    """Magma's collator (data/data_collator.py, docs/magma-model.md §Collation), padding on ``side``."""
    length = max(len(sample["input_ids"]) for sample in samples)
    max_crops = max(len(sample["pixel_values"]) for sample in samples)
    max_images = max(len(sample["image_sizes"]) for sample in samples)
    batch = {"input_ids": [], "labels": [], "pixel_values": [], "image_sizes": []}
    for sample in samples:
        pad = length - len(sample["input_ids"])
        for key, value in (("input_ids", pad_id), ("labels", IGNORE_INDEX)):
            filler = torch.full((pad,), value, dtype=torch.long)
            parts = [filler, sample[key]] if side == "left" else [sample[key], filler]
            batch[key].append(torch.cat(parts))
        crops = sample["pixel_values"]
        batch["pixel_values"].append(torch.cat([crops, crops.new_zeros(max_crops - len(crops), *crops.shape[1:])]))
        sizes = sample["image_sizes"]
        batch["image_sizes"].append(torch.cat([sizes, sizes.new_zeros(max_images - len(sizes), 2)]))
    batch = {key: torch.stack(value) for key, value in batch.items()}
    mask = batch["input_ids"].ne(pad_id)
    batch["attention_mask"] = mask if bool_mask else mask.long()
    return batch


def labels_for(input_ids: torch.Tensor, supervised_from: int, seed: int) -> torch.Tensor:
    """Supervise from the first answer token on, with a seeded fifth of those masked again."""
    labels = input_ids.clone()
    labels[:supervised_from] = IGNORE_INDEX
    generator = torch.Generator().manual_seed(seed)
    labels[torch.rand(len(labels), generator=generator) < 0.2] = IGNORE_INDEX
    return labels


def capture_merged_mask(model) -> dict:
    """The attention mask the official forward hands its LLM (the merged sequence's)."""
    captured = {}

    def hook(module, args, kwargs):
        captured["mask"] = kwargs["attention_mask"].detach().clone()

    model.language_model.model.register_forward_pre_hook(hook, with_kwargs=True)
    return captured


def run_cases(model, cases: list[dict], processed: dict, settings: dict, train: bool) -> dict:
    results = {}
    merged = capture_merged_mask(model)
    for case in cases:
        batch = collate([processed[name] for name in case["samples"]], settings["pad_id"], case["padding"], case["bool_mask"])
        inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
        model.eval()
        with torch.no_grad():
            logits = model(**inputs).logits
        results[case["name"]] = {"batch": batch, "eval_logits": logits, "merged_mask": merged["mask"]}
        if train:
            model.train()
            torch.manual_seed(settings["train_seed"])
            output = model(**inputs, labels=batch["labels"])
            output.loss.backward()
            results[case["name"]].update(
                train_loss=output.loss.detach(),
                train_logits=output.logits.detach(),
                projector_grad=model.multi_modal_projector.proj[0].weight.grad.detach().clone(),
            )
            model.zero_grad()
    model.eval()
    return results


def build(args: argparse.Namespace) -> None:
    work = args.work
    spec = json.loads((work / f"{args.config}.json").read_text())
    configuration_magma, image_processing_magma, modeling_magma, processing_magma = install_official(args.official_path, spec)
    init_process_group()
    from PIL import Image
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(work / spec.get("tokenizer", "tokenizer"))
    image_processor = image_processing_magma.MagmaImageProcessor(**spec["processor"])
    processor = processing_magma.MagmaProcessor(image_processor=image_processor, tokenizer=tokenizer)

    config = configuration_magma.MagmaConfig(
        vision_config=spec["vision_config"], text_config=spec["text_config"], image_token_index=spec["image_token_index"]
    )
    torch.manual_seed(spec["seed"])
    model = modeling_magma.MagmaForCausalLM(config)
    redraw_weights(model, spec["seed"])
    model.config.tokenizer_vocab_size = tokenizer.vocab_size

    out = work / args.config
    checkpoint = out / "official_checkpoint"
    model.save_pretrained(checkpoint, max_shard_size=spec["max_shard_size"])
    image_processor.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)

    cases = json.loads((work / "cases.json").read_text())
    processed = {}
    for name, sample in cases["samples"].items():
        images = [Image.open(work / "images" / file).convert("RGB") for file in sample["images"]]
        inputs = processor(texts=sample["text"], images=images, return_tensors="pt")
        ids = inputs["input_ids"][0]
        processed[name] = {
            "input_ids": ids,
            "attention_mask": inputs["attention_mask"][0],
            "pixel_values": inputs["pixel_values"],
            "image_sizes": inputs["image_sizes"],
            "labels": labels_for(ids, len(tokenizer(sample["prompt_part"]).input_ids), spec["seed"]),
        }
    settings = {"pad_id": tokenizer.pad_token_id, "train_seed": spec["train_seed"]}
    results = run_cases(model, cases["cases"], processed, settings, train=True)

    generations = {}
    for name in cases["generate"]:
        sample = processed[name]
        with torch.no_grad():
            generated = model.generate(
                input_ids=sample["input_ids"][None],
                attention_mask=sample["attention_mask"][None],
                pixel_values=sample["pixel_values"][None],
                image_sizes=sample["image_sizes"][None],
                max_new_tokens=cases["max_new_tokens"],
                do_sample=False,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
            )
        generations[name] = generated[0]
    drop_rates = [
        float(getattr(block.drop_path, "drop_prob", 0.0))
        for stage in model.vision_tower.clip_vision_model.trunk.stages
        for block in stage.blocks
    ]
    recorded = {"processed": processed, "results": results, "generations": generations, "drop_path_rates": drop_rates}
    if spec.get("add_action"):
        recorded["action"] = add_action_as_train_py_does(args.official_path, model, tokenizer)
    torch.save(recorded, out / "official.pt")


def add_action_as_train_py_does(official_path: str, model, tokenizer) -> dict:
    """train.py's own ``smart_tokenizer_and_embedding_resize(["<action>"], ...)``, imported with stand-ins."""
    sys.modules.setdefault("deepspeed", types.ModuleType("deepspeed"))
    sys.modules.setdefault("trainer", types.SimpleNamespace(MagmaTrainer=object))
    sys.modules.setdefault("data", types.ModuleType("data"))
    sys.path.insert(0, official_path)
    import train as magma_train

    before = len(tokenizer)
    magma_train.smart_tokenizer_and_embedding_resize(special_tokens_dict=["<action>"], tokenizer=tokenizer, model=model)
    return {
        "id": tokenizer.convert_tokens_to_ids("<action>"),
        "length": len(tokenizer),
        "before": before,
        "vocab_size": model.config.text_config.vocab_size,
        "input_row": model.get_input_embeddings().weight[-1].detach().clone(),
        "output_row": model.get_output_embeddings().weight[-1].detach().clone(),
    }


def reload(args: argparse.Namespace) -> None:
    work = args.work
    spec = json.loads((work / f"{args.config}.json").read_text())
    _, _, modeling_magma, _ = install_official(args.official_path, spec)
    out = work / args.config
    model, info = modeling_magma.MagmaForCausalLM.from_pretrained(out / args.folder, output_loading_info=True)
    from transformers import PreTrainedTokenizerFast

    # the class tokenizer_config.json names (AutoTokenizer would need the remote-code config registered)
    has_tokenizer = (out / args.folder / "tokenizer.json").is_file()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(out / args.folder) if has_tokenizer else None
    problems = {key: value for key, value in info.items() if value}
    cases = json.loads((work / "cases.json").read_text())
    recorded = torch.load(out / "official.pt", weights_only=True)
    logits = {}
    with torch.no_grad():
        for case in cases["cases"]:
            batch = recorded["results"][case["name"]]["batch"]
            inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
            logits[case["name"]] = model.eval()(**inputs).logits
    torch.save(
        {"eval_logits": logits, "loading_problems": json.dumps(problems, default=str),
         "action_id": tokenizer.convert_tokens_to_ids("<action>") if tokenizer else None,
         "tokenizer_length": len(tokenizer) if tokenizer else None},
        out / ("official_reload.pt" if args.folder == "our_checkpoint" else f"official_reload_{args.folder}.pt"),
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    arguments = parse_args()
    {"build": build, "reload": reload}[arguments.command](arguments)
