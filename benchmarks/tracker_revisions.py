"""Optimisation steps of our CoTracker3 network, each timed against the official code in one run.

Loads ``magma_data/models/cotracker3.py`` and ``cotracker3_blocks.py`` as they are at each git
revision (``WORKTREE``: the files on disk), wraps each in the current predictor with the same seeded
random weights, and runs them and the official predictor (one call per window) on the same real-clip
windows, taking turns so that load from other processes falls on all alike. Prints, per revision,
seconds per call, speed relative to the official code, and the largest track difference from it
(input pixels) with the share of visibility decisions that agree.

    python benchmarks/tracker_revisions.py --revisions b4857bd,WORKTREE --frames 16 --grid 15 --batch 1
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from clips import find_videos
from tracker_common import (
    OFFICIAL_DIR,
    REPO,
    clip_windows,
    device_name,
    official_predictor,
    random_state,
    time_interleaved,
)

from magma_data.models.cotracker3_predictor import CoTracker3Predictor

MODEL_FILES = ("cotracker3.py", "cotracker3_blocks.py")


def load_revision(revision: str, folder: Path) -> type:
    """The offline network class as it is at ``revision``, imported as its own package."""
    package = folder / f"revision_{revision.replace('~', '_').replace('^', '_')}"
    package.mkdir()
    (package / "__init__.py").touch()
    for name in MODEL_FILES:
        path = f"magma_data/models/{name}"
        if revision == "WORKTREE":
            text = (REPO / path).read_text()
        else:
            text = subprocess.run(
                ["git", "show", f"{revision}:{path}"], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout
        (package / name).write_text(text.replace("from magma_data.models.cotracker3_blocks", "from .cotracker3_blocks"))
    sys.path.insert(0, str(folder))
    return importlib.import_module(f"{package.name}.cotracker3").CoTracker3Offline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revisions", default="main,WORKTREE", help="comma-separated git revisions; WORKTREE = files on disk")
    parser.add_argument("--batch", type=int, default=1, help="windows per call of ours (the official: one call each)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--grid", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--official", type=Path, default=OFFICIAL_DIR)
    parser.add_argument("--videos", type=Path, help="folder of the clips (default: clips.VIDEO_DIRS)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state = random_state("offline")
    official = official_predictor(state, "offline", path=args.official).to(device)
    revisions = args.revisions.split(",")
    with tempfile.TemporaryDirectory() as folder:
        ours = {}
        for revision in revisions:
            network = load_revision(revision, Path(folder))()
            network.load_state_dict(state, strict=True)
            ours[revision] = CoTracker3Predictor(network).to(device)

    windows = torch.from_numpy(clip_windows(find_videos(args.videos), args.frames)).float().to(device)
    video = windows[torch.arange(args.batch) % len(windows)]
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def run_official():
        with torch.no_grad():
            results = [official(window, grid_size=args.grid) for window in video.split(1)]
        outputs["official"] = tuple(torch.cat(r) for r in zip(*results))

    runs = {"official": run_official}
    for revision, model in ours.items():
        runs[revision] = lambda model=model, revision=revision: outputs.__setitem__(revision, model(video, grid_size=args.grid))
    seconds = time_interleaved(runs, device, args.repeats, args.warmup)

    seconds_kind = "wall seconds" if device.type == "cuda" else "CPU seconds of the process"
    print(f"\n{device_name(device)}, torch {torch.__version__}; batch {args.batch} x {args.frames} frames, "
          f"grid {args.grid}, {tuple(video.shape[-2:])}; {seconds_kind}, median of {args.repeats} interleaved runs")
    print("| code | s/call | official s / this s | max track diff vs official (px) | visibility agreement |")
    print("|---|---:|---:|---:|---:|")
    tracks, visible = outputs.get("official", (None, None))
    for name, took in seconds.items():
        if not isinstance(took, float):
            print(f"| {name} | {took} | - | - | - |")
            continue
        speed = seconds["official"] / took if isinstance(seconds["official"], float) else float("nan")
        if name == "official" or tracks is None:
            print(f"| {name} | {took:.2f} | {speed:.2f}x | - | - |")
            continue
        ours_tracks, ours_visible = outputs[name]
        diff = (ours_tracks - tracks).abs().max().item()
        agree = (ours_visible == visible).float().mean().item()
        print(f"| {name} | {took:.2f} | {speed:.2f}x | {diff:.1e} | {100 * agree:.2f} % |")


if __name__ == "__main__":
    main()
