"""A tiny random CLIP checkpoint, saved as transformers saves openai/clip-vit-large-patch14-336: model,
tokenizer (from vocab.json and merges.txt written here) and image processor, in one folder; and the
threshold that splits a folder's windows by their scores under it."""

from __future__ import annotations

import json
from pathlib import Path


def save_tiny_clip(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """A random ``CLIPModel`` (2 layers, width 32) with a byte-level BPE tokenizer and CLIP's image processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())  # CLIP's vocabulary starts with these, alone and word-final
    vocab = {token: i for i, token in enumerate([*symbols, *(s + "</w>" for s in symbols)])}
    merges = [("a", "t</w>"), ("c", "at</w>"), ("t", "h"), ("th", "e</w>")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    images = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, **special),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def scores_and_split(root: Path, config) -> tuple[dict[tuple[str, int], float], float]:
    """The CLIP score ``config``'s alignment stage gives each window with text of the folder source at
    ``root`` (here, in one process: plan, decode, score), by (clip, start); and a threshold in the widest
    gap between the scores of the middle half: some windows reach it and the rest do not, and none is
    within ``BATCH_TOLERANCE`` of it, so a run decides each as here whatever its batches."""
    from magma_data.pipelines import load_pipeline
    from magma_data.sources import load_manifest, open_source
    from magma_data.stages.decode import DecodeStage
    from magma_data.stages.text_alignment import BATCH_TOLERANCE, TextAlignmentStage

    scoring = config.with_overrides({"alignment": {"threshold": -1.0}})  # every window passes, with its score
    units = load_pipeline("video_tom").plan(open_source(load_manifest("folder"), root), scoring)
    decode, align = DecodeStage(scoring.decode), TextAlignmentStage(scoring.alignment)
    scores = {(unit["clip_id"], unit["frame_index"]): float(align.process([{**unit, **decode(unit)}])[0]["clip_score"])
              for unit in units if not unit.get("drop_kind") and unit["task"]}
    ranked = sorted(scores.values())
    quarter = len(ranked) // 4
    split = max(range(max(1, quarter), len(ranked) - quarter), key=lambda k: ranked[k] - ranked[k - 1])
    assert ranked[split] - ranked[split - 1] > 2 * BATCH_TOLERANCE, f"no gap between the scores {ranked}"
    return scores, (ranked[split - 1] + ranked[split]) / 2
