"""LoRA and QLoRA, as Magma's train.py offers them (``--lora_enable``, ``--bits 4/8``), through peft.

Adapters go on the language model's seven linear layers (``--lora-target-modules``), lm_head left
out, and everything else is frozen. train.py's ``find_all_linear_names`` also returns the projector's
``0`` and ``2`` (it skips LLaVA's ``mm_projector``, not Magma's ``multi_modal_projector``), which
peft matches as suffixes in the tower and the decoder too (README.md, its LoRA / QLoRA text). With
``--bits 4|8`` the frozen language model is held by bitsandbytes (QLoRA; its layers run on CUDA
only), the tower, projector and lm_head stay in 16 bits, as train.py skips them.

A trained model is saved either merged (``--lora-save merged``: W + B·A·alpha/r in every adapted
layer, a Magma folder like any other) or as the adapters alone (``adapter``: peft's
``adapter_config.json`` + ``adapter_model.safetensors``, with the processor), which
``peft.PeftModel.from_pretrained`` loads on the start model. When training added tokens
(``<action>``), the adapter folder also carries the resized embedding and lm_head
(peft's ``save_embedding_layers``), and the start model is resized to the folder's tokenizer before
the adapters load (``load_model`` does both).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from .model import MagmaForCausalLM

ADAPTER_CONFIG = "adapter_config.json"
#: bitsandbytes leaves these parts in 16 bits (train.py's ``llm_int8_skip_modules`` names the projector).
UNQUANTIZED = ["vision_tower", "multi_modal_projector", "lm_head"]
_PEFT_PREFIX = "base_model.model."


def lora_config(rank: int, alpha: float, dropout: float, target_modules: tuple[str, ...]):
    """peft's LoraConfig on the named layers of the language model only (the tower has Linear layers too)."""
    from peft import LoraConfig

    names = "|".join(re.escape(name) for name in target_modules)
    return LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=rf"language_model\..*\.({names})",
    )


def add_adapters(model: MagmaForCausalLM, rank: int, alpha: float, dropout: float, target_modules: tuple[str, ...]):
    """The model with fresh adapters (peft's initialisation: A random, B zero, so it starts as the base)."""
    from peft import get_peft_model

    with warnings.catch_warnings():  # peft asks transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        adapted = get_peft_model(model, lora_config(rank, alpha, dropout, target_modules))
    if not any("lora_" in name for name, _ in adapted.named_parameters()):
        raise ValueError(f"--lora-target-modules {','.join(target_modules)} names no layer of the language model")
    return adapted


def quantization(bits: int, compute_dtype: torch.dtype) -> dict[str, Any]:
    """``from_pretrained`` arguments for a 4- or 8-bit language model (train.py's BitsAndBytesConfig;
    ``TrainConfig.resolved`` has refused it on a machine without CUDA)."""
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=bits == 4, load_in_8bit=bits == 8, llm_int8_skip_modules=UNQUANTIZED, llm_int8_threshold=6.0,
        llm_int8_has_fp16_weight=False, bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_use_double_quant=True,
        bnb_4bit_quant_type="nf4",
    )
    return {"quantization_config": config, "device_map": {"": torch.cuda.current_device()}}


def merged_state_dict(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A peft model's full state dict -> the Magma model's, each adapted weight W + B·A·scaling.

    Computed from the tensors (in float32), not by merging in place: the training model's frozen
    weights stay bit for bit as they were, so a run resumed after a checkpoint is the same run.
    """
    merged = {}
    for key, value in state.items():
        key = key.removeprefix(_PEFT_PREFIX)
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            layer = key.split(".base_layer.")[0]
            if key.endswith(".base_layer.weight"):
                lora_a = _adapter_weight(state, layer, "lora_A")
                lora_b = _adapter_weight(state, layer, "lora_B")
                value = (value.float() + (lora_b.float() @ lora_a.float()) * scaling).to(value.dtype)
            key = key.replace(".base_layer.", ".")
        merged[key] = value
    return merged


def _adapter_weight(state: dict[str, torch.Tensor], layer: str, kind: str) -> torch.Tensor:
    found = [value for key, value in state.items() if key.removeprefix(_PEFT_PREFIX).startswith(f"{layer}.{kind}.")]
    if len(found) != 1:
        raise ValueError(f"{layer} has {len(found)} {kind} weights; one adapter was expected")
    return found[0]


def save_adapter(model, folder: Path, state: dict[str, torch.Tensor], base: Path, tokens_added: bool) -> None:
    """peft's adapter folder: ``adapter_config.json`` naming ``base`` and ``adapter_model.safetensors``."""
    model.peft_config["default"].base_model_name_or_path = str(base.resolve())
    model.save_pretrained(str(folder), state_dict=state, save_embedding_layers=tokens_added)


def is_adapter_folder(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file()


def load_model(folder: Path, dtype: torch.dtype) -> MagmaForCausalLM:
    """A Magma folder, or an adapter folder merged onto the start model its ``adapter_config.json`` names."""
    if not is_adapter_folder(folder):
        return MagmaForCausalLM.from_pretrained(folder, dtype=dtype)
    from peft import PeftModel
    from transformers import AutoTokenizer

    base_path = Path(json.loads((folder / ADAPTER_CONFIG).read_text())["base_model_name_or_path"])
    base = MagmaForCausalLM.from_pretrained(base_path, dtype=dtype)
    vocabulary = len(AutoTokenizer.from_pretrained(str(folder)))
    if vocabulary != base.get_input_embeddings().num_embeddings:
        base.resize_token_embeddings(vocabulary, mean_resizing=False)  # the rows come from the adapter folder
    return PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
