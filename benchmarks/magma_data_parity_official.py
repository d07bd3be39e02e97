"""The official side of benchmarks/magma_data_parity.py; runs in the official Magma venv, not ours.

    OFFICIAL_PYTHON benchmarks/magma_data_parity_official.py --official-path DIR --work WORK

Reads ``WORK/items.json`` (written by magma_data_parity.py) and turns every item into a sample
with Magma's own ``LazySupervisedDataset.__getitem__`` (microsoft/Magma @ e373780,
``data/dataset.py``): ``preprocess`` (chat template, labels, truncation), ``preprocess_multimodal``
and image loading for LLaVA items, the image processor, and the ``<action>`` swap, with action
ids from Magma's ``ActionTokenizer``. Batches go through ``DataCollatorForSupervisedDataset``.
Everything goes to ``WORK/official.pt``.

What the official code needs and this script supplies, without changing it:
- ``data/__init__.py`` imports every loader (cv2, decord, TensorFlow, pandas, deepspeed): the
  ``data`` package is registered without running it, and the modules ``dataset.py`` imports but
  these paths never call (deepspeed, cv2, pandas, the data-item reader) are empty stand-ins;
- ``pdb.set_trace()`` at the top of the image branch (docs/magma-model.md §Defects 1) does nothing;
- video items: Magma draws marks from raw traces in its conversation constructor; ours come from
  the shards, so the constructor for the item's tag hands back the row's frozen conversation and
  images (raw frame and marked frame, 1 crop), which the rest of ``__getitem__`` then processes.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch


def stub(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = module
    return module


def install_official(official_path: str):
    """Magma's data modules, imported without their unused heavy dependencies."""
    sys.modules["wandb"] = types.SimpleNamespace(init=lambda **kwargs: None, log=lambda *args, **kwargs: None)
    sys.path.insert(0, official_path)
    import pdb

    import transformers  # noqa: F401  (before the stand-ins: it probes which packages exist)

    pdb.set_trace = lambda *args, **kwargs: None
    for package in ("data", "data.openx"):
        stub(package).__path__ = [str(Path(official_path, *package.split(".")))]
    for name in ("deepspeed", "cv2", "pandas"):
        stub(name)
    stub("data.data_item").DataItem = None

    import data.data_collator as collator
    import data.dataset as dataset
    import data.openx.action_tokenizer as action_tokenizer
    from magma import image_processing_magma, processing_magma

    return dataset, collator, action_tokenizer, image_processing_magma, processing_magma


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-path", required=True)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    dataset, collator, action_tokenizer, image_processing, processing = install_official(args.official_path)
    from PIL import Image
    from transformers import AutoTokenizer

    work = args.work
    spec = json.loads((work / "items.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    processor = processing.MagmaProcessor(
        image_processor=image_processing.MagmaImageProcessor(**spec["image_processor"]), tokenizer=tokenizer
    )
    actions = action_tokenizer.ActionTokenizer(tokenizer)

    results = {}
    for max_length in spec["max_lengths"]:
        tokenizer.model_max_length = max_length
        data = object.__new__(dataset.LazySupervisedDataset)
        data.processor = processor
        data.data_args = types.SimpleNamespace(is_multimodal=True, mm_use_image_start_end=False, image_folder=None)
        data.action_placeholder_token_id = tokenizer.convert_tokens_to_ids("<action>")
        data.data_items, data.conv_constructor = [], {}
        for item in spec["items"]:
            data.data_items.append(official_item(item, work, actions, data.conv_constructor, Image))
        samples = {}
        for index, item in enumerate(spec["items"]):
            try:
                sample = data[index]
            except Exception as error:  # a case the official code cannot take: recorded, compared as such
                samples[item["name"]] = {"error": f"{type(error).__name__}: {error}"}
                continue
            samples[item["name"]] = {
                "input_ids": sample["input_ids"],
                "labels": sample["labels"],
                "pixel_values": torch.cat(sample["pixel_values"]),
                "image_sizes": torch.cat(sample["image_sizes"]),
            }
        batches = {}
        collate = collator.DataCollatorForSupervisedDataset(processor=processor)
        for name, members in spec["batches"].items():
            if all("error" not in samples[member] for member in members):
                batches[name] = collate([
                    {
                        "input_ids": samples[member]["input_ids"],
                        "labels": samples[member]["labels"],
                        "pixel_values": [samples[member]["pixel_values"]],
                        "image_sizes": [samples[member]["image_sizes"]],
                    }
                    for member in members
                ])
        results[max_length] = {"samples": samples, "batches": batches}
    torch.save(results, work / "official.pt")


def official_item(item: dict, work: Path, actions, constructors: dict, image_module) -> dict:
    """The item as Magma's dataset lists it: LLaVA rows as in their JSON, video rows as a video
    item whose conversation constructor returns the row's frozen conversation and images."""
    if item["kind"] == "llava":
        return {**item["row"], "image_folder": str(work / "llava"), "dataset_tag": "llava"}
    tag = f"ours_{item['name']}"
    frozen = {
        "conversations": item["conversations"],
        "image": [image_module.open(work / path).convert("RGB") for path in item["images"]],
        "num_crops": 1,
    }
    if item.get("action_normalized") is not None:
        frozen["action_token_ids"] = actions.encode_actions_to_token_ids(np.asarray(item["action_normalized"])).tolist()
    constructors[tag] = lambda item, video_path, visual_traces, frozen=frozen: {**item, **frozen}
    return {
        "video": [os.path.join("videos", f"{item['name']}.mp4")],
        "frame_interval": torch.tensor([0, 16]),
        "image_folder": str(work),
        "dataset_tag": tag,
    }


if __name__ == "__main__":
    main()
