"""A tiny Magma folder (built once per session) and inputs for it, made by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from magma_data.magma_text import SYSTEM_PROMPT, semantic_turn
from magma_data.train import MagmaForCausalLM, MagmaProcessor
from magma_data.train.create import create_tiny

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
