"""New Magma-format folders: a seeded tiny model, or Magma's pretraining start from its parts.

A Magma folder holds ``config.json``, ``generation_config.json``, safetensors weights (sharded with
``model.safetensors.index.json`` when large), ``preprocessor_config.json`` and the tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from magma_data.magma_text import IMAGE_TOKEN

from .weights import load_open_clip_visual, tower_structure
from .config import CONVNEXT_XXLARGE, MAGMA_VISION_SETTINGS, XXLARGE_BACKBONE, MagmaConfig, VisionSpec
from .model import MagmaForCausalLM, MagmaProjector
from .processor import MagmaImageProcessor, MagmaProcessor
from .tokenizer import add_magma_tokens, build_tiny_tokenizer

#: The tiny model: a few hundred thousand parameters, Magma-8B's layout and processor settings.
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
}
TINY_TOWER = {"convnext_depths": [1, 1, 2, 1], "convnext_dims": [16, 32, 48, 64], "clip_embed_dim": 32}


def create_tiny(output: Path, seed: int = 0) -> Path:
    """A random tiny Magma (same seed, same weights) with a real tokenizer: for tests and demos."""
    tokenizer = build_tiny_tokenizer()
    text = LlamaConfig(
        **TINY_TEXT,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = _magma_config(text, TINY_TOWER, tokenizer)
    torch.manual_seed(seed)
    model = MagmaForCausalLM(config)
    model.generation_config = _generation_config(tokenizer, tokenizer.eos_token_id)
    _write(model, MagmaProcessor(MagmaImageProcessor(), tokenizer), output)
    return output


def create_from_components(
    llm: Path, vision: Path, output: Path, dtype: torch.dtype = torch.bfloat16, seed: int = 0
) -> Path:
    """Magma's pretraining start as its train.py assembles it, from a Llama-3-Instruct folder and
    the open_clip ConvNeXt CLIP weights.

    The tokenizer gains ``MAGMA_ADDED_TOKENS`` in order (``<pad>`` only when it has none); each new
    embedding row, input and output, is the mean of the rows before it. The projector is drawn
    from ``seed`` (normal, std = ``initializer_range``; zero biases and row separator). Unlike the
    official loader (``strict=False``, docs/magma-model.md §Defects 6), every tower tensor must be present.
    """
    tokenizer = AutoTokenizer.from_pretrained(str(llm))
    visual = load_open_clip_visual(vision)
    structure = tower_structure({key: tuple(tensor.shape) for key, tensor in visual.items()}, prefix="")
    language_model = LlamaForCausalLM.from_pretrained(str(llm), dtype=dtype)
    config = _magma_config(language_model.config, structure, tokenizer)

    with torch.device("meta"):
        model = MagmaForCausalLM(config)
    model.language_model = language_model
    missing, unexpected = model.vision_tower.clip_vision_model.load_state_dict(
        {key: tensor.to(dtype) for key, tensor in visual.items()}, strict=False, assign=True
    )
    if missing or unexpected:
        raise ValueError(
            f"{vision} does not fit a ConvNeXt of depths {structure['convnext_depths']} and widths "
            f"{structure['convnext_dims']}: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    torch.manual_seed(seed)
    projector = MagmaProjector(VisionSpec.from_config(config))
    projector.apply(model._init_weights)
    model.multi_modal_projector = projector.to(dtype)

    add_magma_tokens(model, tokenizer)
    # Llama-3-Instruct stops at <|eot_id|> as well as <|end_of_text|>: keep its list
    model.generation_config = _generation_config(
        tokenizer, language_model.generation_config.eos_token_id or tokenizer.eos_token_id
    )
    _write(model, MagmaProcessor(MagmaImageProcessor(), tokenizer), output)
    return output


def _magma_config(text: LlamaConfig, tower: dict, tokenizer: PreTrainedTokenizerBase) -> MagmaConfig:
    vision = {**MAGMA_VISION_SETTINGS, **tower, "mm_hidden_size": tower["convnext_dims"][-1]}
    vision["hidden_size"] = text.hidden_size
    if all(tower[key] == value for key, value in CONVNEXT_XXLARGE.items()):
        vision["vision_backbone"] = XXLARGE_BACKBONE
    return MagmaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        # train.py records the base vocabulary for its action-accuracy metric (docs/magma-text.md §Action tokens)
        tokenizer_vocab_size=tokenizer.vocab_size,
    )


def _generation_config(tokenizer: PreTrainedTokenizerBase, eos_token_id: int | list[int]) -> GenerationConfig:
    """Magma-8B's generation_config.json: bos, eos and pad ids of its tokenizer."""
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_token_id, pad_token_id=tokenizer.pad_token_id
    )


def _write(model: MagmaForCausalLM, processor: MagmaProcessor, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    processor.save_pretrained(output)
