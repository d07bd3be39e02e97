"""Reading Magma checkpoints: the tower's structure from tensor shapes, strict key checks, and
open_clip ConvNeXt weights for a new model.

Shapes come from the safetensors headers (``safe_open`` memory-maps the files; no tensor is read),
so the structure of an 8B checkpoint is known before the model is built on the meta device.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .config import TOWER_STRUCTURE_KEYS, MagmaConfig

TOWER_PREFIX = "vision_tower.clip_vision_model."
_BLOCK_GAMMA = re.compile(r"trunk\.stages\.(\d+)\.blocks\.(\d+)\.gamma")
SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
#: how many keys an error message lists before it only counts
_LISTED_KEYS = 20


def checkpoint_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor name of a safetensors checkpoint folder (sharded or not) with its shape."""
    if (folder / SAFE_INDEX).is_file():
        weight_map = json.loads((folder / SAFE_INDEX).read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (folder / SAFE_SINGLE).is_file():
        files = [SAFE_SINGLE]
    else:
        raise FileNotFoundError(
            f"{folder} has neither {SAFE_INDEX} nor {SAFE_SINGLE}; a Magma folder holds its weights as "
            "safetensors (save one with MagmaForCausalLM.save_pretrained or `magma-train init`)"
        )
    shapes = {}
    for name in files:
        with safe_open(folder / name, framework="pt") as shard:
            for key in shard.keys():
                shapes[key] = tuple(shard.get_slice(key).get_shape())
    return shapes


def tower_structure(shapes: dict[str, tuple[int, ...]], prefix: str = TOWER_PREFIX) -> dict[str, Any]:
    """``convnext_depths``, ``convnext_dims`` and ``clip_embed_dim`` of the ConvNeXt under ``prefix``."""
    blocks: dict[int, set[int]] = defaultdict(set)
    dims: dict[int, int] = {}
    for key, shape in shapes.items():
        if not key.startswith(prefix):
            continue
        match = _BLOCK_GAMMA.fullmatch(key[len(prefix) :])
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks[stage].add(block)
            dims[stage] = shape[0]
    projection = shapes.get(prefix + "head.proj.weight")
    if not blocks or projection is None:
        raise ValueError(
            f"no ConvNeXt tower under {prefix!r} (looked for trunk.stages.*.blocks.*.gamma and "
            "head.proj.weight): is this a Magma checkpoint?"
        )
    stages = sorted(blocks)
    if stages != list(range(len(stages))) or any(sorted(blocks[s]) != list(range(len(blocks[s]))) for s in stages):
        raise ValueError(f"the ConvNeXt stages / blocks under {prefix!r} are not numbered 0..n-1: {dict(blocks)}")
    return {
        "convnext_depths": [len(blocks[s]) for s in stages],
        "convnext_dims": [dims[s] for s in stages],
        "clip_embed_dim": projection[0],
    }


def complete_vision_config(config: MagmaConfig, folder: Path) -> None:
    """Fill the tower's structure from the checkpoint when ``config.json`` does not state it."""
    if set(TOWER_STRUCTURE_KEYS) <= config.vision_config.keys():
        return
    config.vision_config.update(tower_structure(checkpoint_shapes(folder)))


def raise_on_key_mismatch(source: str | Path, info: dict[str, Any]) -> None:
    """A checkpoint must fill every parameter with a tensor of its shape and hold nothing else."""
    problems = []
    for kind in ("missing_keys", "unexpected_keys"):
        keys = sorted(info.get(kind) or ())
        if keys:
            problems.append(f"{len(keys)} {kind.replace('_', ' ')}: {_listed(keys)}")
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        shown = [f"{key} (checkpoint {tuple(stored)}, model {tuple(expected)})" for key, stored, expected in mismatched]
        problems.append(f"{len(mismatched)} shape mismatches: {_listed(shown)}")
    if info.get("error_msgs"):
        problems.append("errors: " + "; ".join(info["error_msgs"]))
    if problems:
        raise ValueError(
            f"{source} does not match the Magma model it describes ({'; '.join(problems)}). "
            "Check that config.json belongs to these weights; a stock transformers that renamed "
            "ConvNeXt 'gamma' keys would show them here as missing."
        )


def _listed(keys: list[str]) -> str:
    more = f" ... and {len(keys) - _LISTED_KEYS} more" if len(keys) > _LISTED_KEYS else ""
    return ", ".join(keys[:_LISTED_KEYS]) + more


def load_open_clip_visual(path: Path) -> dict[str, torch.Tensor]:
    """The ``visual.*`` tensors of an open_clip CLIP checkpoint, keyed as in ``clip_vision_model``.

    Reads ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin`` (``weights_only``),
    the files laion/CLIP-convnext_xxlarge-* ships; the text tower's tensors are left out.
    """
    if path.suffix == ".safetensors":
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    visual = {key.removeprefix("visual."): tensor for key, tensor in state.items() if key.startswith("visual.")}
    if not visual:
        raise ValueError(
            f"{path} holds no 'visual.*' tensors: pass the open_clip CLIP checkpoint of "
            "laion/CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg (open_clip_pytorch_model.bin)"
        )
    return visual
