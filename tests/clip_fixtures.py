"""A tiny random CLIP checkpoint, saved as transformers saves openai/clip-vit-large-patch14-336: model,
tokenizer (from vocab.json and merges.txt written here) and image processor, in one folder; the
threshold that splits a folder's windows by their scores under it; and how two runs that scored their
windows in other batches are compared."""

from __future__ import annotations

import json
from pathlib import Path

#: The data's columns that hold CLIP scores (and a ClipScoreBelowThreshold row's value, which its message
#: quotes): two runs that batch their windows otherwise (a resumed run and a clean one) write these within
#: ``BATCH_TOLERANCE`` of each other, not bit for bit on every CPU.
SCORE_COLUMNS = ("clip_scores", "clip_score")


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


def batching_differences(output: Path, reference: Path) -> list[str]:
    """How ``output``'s shards, errors and filtered files depart from ``reference``'s: the same files with the
    same rows, every value equal but CLIP scores, which may differ by ``BATCH_TOLERANCE``."""
    import numpy as np
    import pyarrow.parquet as pq

    from magma_data.stages.text_alignment import BATCH_TOLERANCE

    def files(folder):
        return sorted(p.relative_to(folder).as_posix()
                      for kind in ("data/*", "errors", "filtered") for p in folder.glob(f"{kind}/*.parquet"))

    if files(output) != files(reference):
        return [f"files {files(output)} instead of {files(reference)}"]
    problems = []
    for name in files(reference):
        ours, theirs = (pq.read_table(folder / name).to_pylist() for folder in (output, reference))
        if len(ours) != len(theirs):
            problems.append(f"{name}: {len(ours)} rows instead of {len(theirs)}")
            continue
        for row, want in zip(ours, theirs):
            scores = SCORE_COLUMNS
            if want.get("rule") == "ClipScoreBelowThreshold":
                scores, row, want = ("value",), {**row, "message": None}, {**want, "message": None}
            for column in scores:
                if column in want and not np.allclose(row[column], want[column], rtol=0, atol=BATCH_TOLERANCE):
                    problems.append(f"{name}: {column} {row[column]} instead of {want[column]}")
            if not same_values({k: v for k, v in row.items() if k not in scores},
                               {k: v for k, v in want.items() if k not in scores}):
                problems.append(f"{name}: a row differs beyond its scores: {row.get('sample_id', row.get('unit_id'))}")
    return problems


def same_values(a, b) -> bool:
    """Equal values of a Parquet row, NaN equal to NaN (reprojection_error is NaN where no homography was fitted)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same_values, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_values(a[k], b[k]) for k in a)
    return a == b
