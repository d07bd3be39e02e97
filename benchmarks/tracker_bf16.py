"""Accuracy cost of bf16 autocast for our CoTracker3: the same windows tracked in fp32 and bf16.

Reports, per clip, how far bf16 tracks land from fp32 tracks (median, 95th percentile and max,
in input pixels, over every point after the query frame: random weights mark few points visible)
and how often the visibility decision flips.
With ``--checkpoint`` it measures the released weights; without, seeded random weights whose
output heads are scaled up so points actually move (a proxy: real weights may differ).
Results go to benchmarks/RESULTS.md.

    python benchmarks/tracker_bf16.py --frames 8 --grid 10
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import decord
import numpy as np
import torch
from clips import find_videos
from results_file import git_commit, replace_section

from magma_data.models.cotracker3_predictor import CoTracker3Offline, CoTracker3PointTracker

def random_checkpoint(path: Path) -> Path:
    """Seeded random weights with the update heads scaled so tracks move tens of pixels."""
    torch.manual_seed(0)
    state = CoTracker3Offline().state_dict()
    for name, tensor in state.items():
        if name.startswith(("updateformer.flow_head", "updateformer.vis_conf_head")) and tensor.is_floating_point():
            state[name] = torch.randn_like(tensor) * 0.05
    torch.save(state, path)
    return path


def window(clip: Path, frames: int) -> np.ndarray:
    reader = decord.VideoReader(str(clip))
    return reader.get_batch(list(range(frames))).asnumpy().transpose(0, 3, 1, 2)[None]  # 1 T 3 H W


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--grid", type=int, default=10)
    parser.add_argument("--clips", default="apple.mp4,bear.mp4,paragliding.mp4")
    parser.add_argument("--device", default=None)
    parser.add_argument("--videos", type=Path, help="folder of the clips (default: clips.VIDEO_DIRS)")
    args = parser.parse_args()
    videos = find_videos(args.videos)
    checkpoint = args.checkpoint or random_checkpoint(Path("/tmp/magma-data-bf16-random.pth"))
    trackers = {p: CoTracker3PointTracker(checkpoint, grid_size=args.grid, device=args.device, precision=p)
                for p in ("fp32", "bf16")}
    device = trackers["fp32"].device
    rows = []
    for name in args.clips.split(","):
        video = window(videos / name, args.frames)
        (t32, v32), (t16, v16) = (trackers[p].track(video) for p in ("fp32", "bf16"))
        distance = np.linalg.norm(t32 - t16, axis=-1)[:, 1:]  # every point after the query frame
        motion = np.linalg.norm(t32[:, -1] - t32[:, 0], axis=-1).mean()
        rows.append(f"| {name} | {motion:.1f} | {np.median(distance):.3f} | {np.percentile(distance, 95):.3f} | "
                    f"{distance.max():.3f} | {100 * (v32 != v16).mean():.2f} % |")
    commit = git_commit()
    weights = f"weights {args.checkpoint.name}" if args.checkpoint else "seeded random weights (heads scaled), a proxy"
    body = "\n".join([
        f"{datetime.date.today()} · commit {commit} · device {device} · {weights} · offline model, "
        f"{args.frames}-frame windows, grid {args.grid}, full 384x512 model resolution", "",
        "| clip | mean motion fp32 (px) | median bf16-fp32 (px) | p95 (px) | max (px) | visibility flips |",
        "|---|---:|---:|---:|---:|---:|", *rows,
    ])
    print(replace_section(f"CoTracker3 bf16 accuracy cost ({device})", body))


if __name__ == "__main__":
    main()
