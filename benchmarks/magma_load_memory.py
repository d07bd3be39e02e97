"""Peak memory of MagmaForCausalLM.from_pretrained relative to the checkpoint's size.

Writes a synthetic checkpoint in Magma-8B's layout (the full convnext_xxlarge tower and
projector, Llama-3-8B's embeddings and layer shapes) with fewer LLM layers, so it fits a small
machine, then loads it in a fresh process and reads that process's peak resident memory
(``VmHWM``). Memory-mapped shards count in the resident set while their pages are mapped, so
the anonymous and file-backed parts are reported separately at the end of the load.

    python benchmarks/magma_load_memory.py                       # 2 LLM layers (~4.7 GB bf16)
    python benchmarks/magma_load_memory.py --llm-layers 4 --dtypes bf16,fp32
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_file import git_commit, replace_section

SECTION = "Magma checkpoint loading memory"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm-layers", type=int, default=2, help="Llama layers of the synthetic checkpoint (8B: 32)")
    parser.add_argument("--dtypes", default="bf16", help="comma-separated dtypes to load in: bf16, fp32")
    parser.add_argument("--shard-size", default="2GB", help="max shard size of the synthetic checkpoint")
    parser.add_argument("--work", type=Path, help="folder for the checkpoint (default: a temporary one)")
    parser.add_argument("--results", type=Path, help="markdown file to write (default benchmarks/RESULTS.md)")
    parser.add_argument("--child", choices=["write", "load"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="bf16", help=argparse.SUPPRESS)
    return parser.parse_args()


def status_kib() -> dict[str, int]:
    """VmRSS, VmHWM (peak), RssAnon and RssFile of this process, in KiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


def write_checkpoint(folder: Path, llm_layers: int, shard_size: str) -> None:
    import torch

    from magma_data.train import MagmaConfig, MagmaForCausalLM
    from magma_data.train.config import CONVNEXT_XXLARGE, MAGMA_VISION_SETTINGS, XXLARGE_BACKBONE

    config = MagmaConfig(
        vision_config={**MAGMA_VISION_SETTINGS, **CONVNEXT_XXLARGE, "vision_backbone": XXLARGE_BACKBONE},
        text_config={
            "vocab_size": 128258, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": llm_layers,
            "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "max_position_embeddings": 8192, "tie_word_embeddings": False,
        },
        image_token_index=128257,
    )
    with torch.device("meta"):
        model = MagmaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(0.01)
    model.save_pretrained(folder, max_shard_size=shard_size)


def load_checkpoint(folder: Path, dtype_name: str) -> dict:
    import torch

    from magma_data.train import MagmaForCausalLM

    before = status_kib()
    start = time.perf_counter()
    model = MagmaForCausalLM.from_pretrained(folder, dtype={"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name])
    seconds = time.perf_counter() - start
    after = status_kib()
    with torch.no_grad():  # read every weight once: pages of memory-mapped shards become resident
        for param in model.parameters():
            param.sum()
    touched = status_kib()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"before": before, "after": after, "touched": touched, "seconds": seconds, "weights_bytes": weights}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    args = parse_args()
    if args.child == "write":
        write_checkpoint(args.work, args.llm_layers, args.shard_size)
        print(json.dumps({}))
        return 0
    if args.child == "load":
        print(json.dumps(load_checkpoint(args.work, args.dtype)))
        return 0

    work = args.work or Path(tempfile.mkdtemp(prefix="magma-load-memory-"))
    run_child("--child", "write", "--work", str(work), "--llm-layers", str(args.llm_layers), "--shard-size", args.shard_size)
    shards = sorted(work.glob("model-*.safetensors"))
    file_bytes = sum(path.stat().st_size for path in shards)
    rows = []
    for dtype in args.dtypes.split(","):
        measured = run_child("--child", "load", "--work", str(work), "--dtype", dtype)
        kib = 1024
        for moment in ("after", "touched"):
            status = measured[moment]
            rows.append(
                {
                    "case": f"{dtype}, {'after from_pretrained' if moment == 'after' else 'then every weight read'}",
                    "seconds": measured["seconds"],
                    "weights_gb": measured["weights_bytes"] / 1e9,
                    "baseline_gb": measured["before"]["VmRSS"] * kib / 1e9,
                    "peak_gb": status["VmHWM"] * kib / 1e9,
                    "peak_over_file": status["VmHWM"] * kib / file_bytes,
                    "load_peak_over_weights": (status["VmHWM"] - measured["before"]["VmRSS"]) * kib
                    / measured["weights_bytes"],
                    "anon_gb": status["RssAnon"] * kib / 1e9,
                    "file_gb": status["RssFile"] * kib / 1e9,
                }
            )
    body = render(rows, args.llm_layers, file_bytes, len(shards))
    print(body)
    replace_section(SECTION, body, *([args.results] if args.results else []))
    if not args.work:
        for path in work.iterdir():
            path.unlink()
        work.rmdir()
    return 0


def render(rows: list[dict], llm_layers: int, file_bytes: int, shards: int) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"{now} · commit {git_commit()} · {platform.machine()} CPU ({os.cpu_count()} cores), no GPU · "
        "produced by `benchmarks/magma_load_memory.py`",
        "",
        f"Synthetic checkpoint in Magma-8B's layout with {llm_layers} of 32 Llama layers: {file_bytes / 1e9:.2f} GB of "
        f"bf16 safetensors in {shards} shards, loaded by `MagmaForCausalLM.from_pretrained` in a fresh process. "
        "Peak = the process's VmHWM; baseline = its resident memory after importing torch, transformers and "
        "magma_data.train, before loading.",
        "",
        "Reading it: shards already in the requested dtype load memory-mapped without a copy, so their weights "
        "stay file-backed (page cache) and become resident as they are read: one copy of the checkpoint at the "
        "peak. Another dtype is converted tensor by tensor into anonymous memory, one copy in that dtype, while "
        "the source pages are mapped: that copy plus the file at the peak.",
        "",
        "| load dtype, moment | weights in memory (GB) | load seconds | baseline RSS (GB) | peak RSS (GB) | "
        "peak / file size | (peak - baseline) / weights | anonymous / file-backed RSS then (GB) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['weights_gb']:.2f} | {row['seconds']:.1f} | {row['baseline_gb']:.2f} | "
            f"{row['peak_gb']:.2f} | {row['peak_over_file']:.2f} | {row['load_peak_over_weights']:.2f} | "
            f"{row['anon_gb']:.2f} / {row['file_gb']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
