"""A tiny Magma folder (built once per session) and inputs for it, made by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import LlamaConfig

from magma_data.magma_text import IMAGE_TOKEN, PAD_TOKEN, SYSTEM_PROMPT, semantic_turn
from magma_data.train import MagmaConfig, MagmaForCausalLM, MagmaImageProcessor, MagmaProcessor
from magma_data.train.config import MAGMA_VISION_SETTINGS, TOWER_STRUCTURE_KEYS
from magma_data.train.create import TINY_TEXT, TINY_TOWER, create_tiny
from magma_data.train.tokenizer import build_tiny_tokenizer

_built: dict[Path, Path] = {}


def tiny_magma(tmp_path_factory) -> Path:
    """``magma-train init --size tiny`` output, shared by the session's tests (read it, never write)."""
    base = tmp_path_factory.getbasetemp()
    if base not in _built:
        _built[base] = create_tiny(tmp_path_factory.mktemp("tiny-magma") / "model", seed=0)
    return _built[base]


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def chat(processor: MagmaProcessor, task: str = "open the drawer", answer: bool = True) -> str:
    """Magma's semantic turn rendered with the Llama-3 chat template (with or without the answer)."""
    turns = semantic_turn(task)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": turns[0]["value"]}]
    if answer:
        messages.append({"role": "assistant", "content": turns[1]["value"]})
    return processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not answer)


def batch_of_one(processor: MagmaProcessor, image: Image.Image, text: str) -> dict[str, torch.Tensor]:
    """One sample as the model takes it: pixel_values [1, crops, 3, H, W], image_sizes [1, images, 2]."""
    inputs = processor(texts=text, images=[image])
    return {
        "input_ids": inputs["input_ids"],
        "attention_mask": inputs["attention_mask"],
        "pixel_values": inputs["pixel_values"][None],
        "image_sizes": inputs["image_sizes"][None],
    }


def redraw_weights(model: MagmaForCausalLM, seed: int) -> MagmaForCausalLM:
    """Weights at scales where every one of them moves the logits (the tiny init barely does)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".gamma"):
                value = 0.2 + 0.8 * torch.rand(param.shape, generator=generator)
            elif param.dim() == 1:
                value = (1.0 if "norm" in name and name.endswith("weight") else 0.0) + 0.1 * torch.randn(
                    param.shape, generator=generator
                )
            else:
                value = torch.randn(param.shape, generator=generator) / param.shape[1:].numel() ** 0.5
            param.copy_(value)
    return model


#: A sample-source run with Trace-of-Mark rows: 2 windows of 8 frames from each of the 4 clips, a low
#: motion threshold so most windows have moving marks (7 of the 8 rows get a ToM turn).
TOM_RUN = ("--input", "sample", "--tracker", "lk", "--height", "128", "--grid-size", "8", "--window-len", "8",
           "--window-stride", "4", "--set", "marks.moving_threshold_px=0.5", "--set", "render.speed_threshold=1",
           "--set", "plan.max_windows_per_clip=2", "--rows-per-shard", "4", "--no-progress")
_shards: dict[Path, Path] = {}


def tom_shards(tmp_path_factory) -> Path:
    """``magma-data run video_tom --input sample`` output with ToM rows, made once per session (read it, never write)."""
    from cli_runs import magma_run

    base = tmp_path_factory.getbasetemp()
    if base not in _shards:
        output = tmp_path_factory.mktemp("tom-shards") / "sample"
        result = magma_run(output, *TOM_RUN)
        assert result.returncode == 0, result.stderr
        _shards[base] = output
    return _shards[base]


def as_official_config(folder: Path) -> dict:
    """Rewrite ``config.json`` as Magma's own code (transformers 4.44) writes Magma-8B's: the backbone
    named but not the tower's structure, the Llama fields copied to the top level, ``rope_theta``
    instead of ``rope_parameters``, ``auto_map`` pointing at remote code we do not run. Returns the
    tower structure it took out."""
    config = json.loads((folder / "config.json").read_text())
    structure = {key: config["vision_config"].pop(key) for key in TOWER_STRUCTURE_KEYS}
    text = config["text_config"]
    text.pop("rope_parameters")
    text |= {"torch_dtype": config.get("dtype", "float32"), "architectures": ["LlamaForCausalLM"],
             "_name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct"}
    config |= {key: text[key] for key in ("hidden_size", "num_hidden_layers", "vocab_size", "rope_theta", "rope_scaling")}
    config |= {
        "auto_map": {"AutoConfig": "configuration_magma.MagmaConfig", "AutoModelForCausalLM": "modeling_magma.MagmaForCausalLM"},
        "torch_dtype": config.pop("dtype", "float32"), "transformers_version": "4.44.1", "mm_use_im_start_end": False,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return structure


def official_layout_magma(folder: Path, seed: int = 0) -> Path:
    """A small Magma folder laid out as Magma's code saves Magma-8B: ``config.json`` as
    ``as_official_config`` writes it, sharded safetensors with their index, the tokenizer as plain
    JSON files (``tokenizer.json``, ``tokenizer_config.json`` with the chat template inside,
    ``special_tokens_map.json``) holding ``<image>`` and ``<pad>`` but no ``<action>``."""
    tokenizer = build_tiny_tokenizer(magma_tokens=(IMAGE_TOKEN, PAD_TOKEN))
    text = LlamaConfig(**TINY_TEXT, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = MagmaConfig(
        vision_config={**MAGMA_VISION_SETTINGS, **TINY_TOWER, "mm_hidden_size": TINY_TOWER["convnext_dims"][-1],
                       "hidden_size": TINY_TEXT["hidden_size"], "vision_backbone": "convnextxxlarge"},
        text_config=text, image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        tokenizer_vocab_size=tokenizer.vocab_size,
    )
    torch.manual_seed(seed)
    model = redraw_weights(MagmaForCausalLM(config), seed)
    model.save_pretrained(folder, max_shard_size="300KB")
    MagmaProcessor(MagmaImageProcessor(), tokenizer).save_pretrained(folder)
    special = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    as_official_config(folder)
    return folder


def shard_folder(root: Path, shards: dict[str, list[int]], rows_per_group: int = 4, rows_per_video: int = 3) -> Path:
    """An output folder laid out as magma-data writes one (``data/<source>/train-<i>-of-<n>.parquet``), with
    ``shards[source]`` rows in each shard, ``rows_per_group`` rows a row group and small rows: an id, a video
    (``rows_per_video`` windows each) and a turn. For the order and the readers; no image to make samples of."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for source, sizes in shards.items():
        folder = root / "data" / source
        folder.mkdir(parents=True)
        for index, size in enumerate(sizes):
            ids = [f"{source}-{index}-{row}" for row in range(size)]
            table = pa.table({
                "sample_id": ids, "source": [source] * size,
                "video_uid": [f"{source}-{index}-video{row // rows_per_video}" for row in range(size)],
                "conversations": [[{"from": "human", "value": "<image>\nWhat next?"}, {"from": "gpt", "value": id_}]
                                  for id_ in ids],
            })
            pq.write_table(table, folder / f"train-{index:05d}-of-{len(sizes):05d}.parquet", row_group_size=rows_per_group)
    return root
