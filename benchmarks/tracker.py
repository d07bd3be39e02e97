"""Tracker throughput: point-frames per second (points x frames / s) of our CoTracker3 and TAPNext++.

The pipeline's workload is a batch of 16-frame windows at 384x512 with a 15x15 grid on frame 0;
``--batches``, ``--frames`` and ``--grid`` shrink it for CPU machines. TAPNext++ (``--tapnextpp``,
on by default; ``--tapnextpp-resolution`` 256 or 512) tracks the same windows in the same runs, so
the cost of a window of each stands side by side. With ``--official-path`` (a checkout of
facebookresearch/co-tracker) the reference CoTracker3 predictor runs the same windows in the same
process, one window per call since it cannot batch, and the ratio ours/official is reported.
Results are appended to the "Tracker" section of benchmarks/RESULTS.md.

    python benchmarks/tracker.py                                  # the full workload
    python benchmarks/tracker.py --batches 1,2 --frames 8 --grid 5 --official-path /tmp/co-tracker
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
from pathlib import Path

import torch
from results_file import git_commit
from tracker_common import device_name, official_predictor, time_interleaved

from magma_data.models.cotracker3_predictor import CoTracker3Offline, CoTracker3Online, CoTracker3Predictor
from magma_data.models.point_tracking import grid_points
from magma_data.models.tapnext import TAPNext
from magma_data.models.tapnextpp_predictor import TAPNextPPPredictor

RESULTS = Path(__file__).parent / "RESULTS.md"
SECTION = "## Tracker"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,4,16", help="comma-separated window counts per forward")
    parser.add_argument("--frames", type=int, default=16, help="frames per window")
    parser.add_argument("--grid", type=int, default=15, help="grid size (grid^2 points per window)")
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--precisions", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    parser.add_argument("--variant", choices=["offline", "online"], default="offline")
    parser.add_argument("--checkpoint", help="weights to load (speed does not depend on them; default random)")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (the median is kept)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per case")
    parser.add_argument("--official-path", help="facebookresearch/co-tracker checkout to time side by side")
    parser.add_argument("--tapnextpp", action=argparse.BooleanOptionalAction, default=True,
                        help="time TAPNext++ on the same windows (random weights; speed does not depend on them)")
    parser.add_argument("--tapnextpp-resolution", type=int, default=256, help="256 or 512 (its two checkpoints)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file to append to")
    parser.add_argument("--note", default="", help="free text written under the results table")
    return parser.parse_args()


def build_model(variant: str, checkpoint: str | None) -> CoTracker3Offline | CoTracker3Online:
    torch.manual_seed(0)
    model = {"offline": CoTracker3Offline, "online": CoTracker3Online}[variant]()
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("model", state), strict=True)
    return model.eval()


def append_results(path: Path, block: str) -> None:
    """Append ``block`` at the end of the Tracker section (created if absent), before any later section."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\nPoint-frames/s = points x frames per second; produced by `benchmarks/tracker.py`.\n"
    start = text.index(SECTION) + len(SECTION)
    end = text.find("\n## ", start)
    end = len(text) if end == -1 else end + 1
    before, after = text[:end].rstrip("\n"), text[end:]
    path.write_text(f"{before}\n\n{block.rstrip()}\n" + (f"\n{after}" if after else ""))


def main() -> None:
    args = parse_args()
    commit = git_commit()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    batches = [int(b) for b in args.batches.split(",")]
    model = build_model(args.variant, args.checkpoint)
    official = (
        official_predictor(model.state_dict(), args.variant, path=Path(args.official_path)) if args.official_path else None
    )
    official = official.to(device) if official is not None else None
    points = args.grid**2

    tapnextpp = TAPNext().eval() if args.tapnextpp else None
    queries = torch.from_numpy(grid_points(args.grid, args.height, args.width)).to(device)

    rows = []
    for precision in args.precisions.split(","):
        dtype = PRECISIONS[precision]
        ours = CoTracker3Predictor(model, dtype=dtype).to(device)
        tapnext = (TAPNextPPPredictor(tapnextpp, args.tapnextpp_resolution, dtype=dtype).to(device)
                   if tapnextpp is not None else None)
        autocast = (
            (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
        )
        for batch in batches:
            video = torch.randint(0, 256, (batch, args.frames, 3, args.height, args.width), device=device).float()
            point_frames = batch * args.frames * points
            runs = {"ours": lambda: ours(video, grid_size=args.grid)}
            if tapnext is not None:
                runs["tapnextpp"] = lambda: tapnext(video, queries.expand(len(video), -1, -1))
            if official is not None:

                def run_official():
                    with torch.no_grad(), autocast():
                        for window in video.split(1):
                            official(window, grid_size=args.grid)

                runs["official"] = run_official
            row = {"precision": precision, "batch": batch, **time_interleaved(runs, device, args.repeats, args.warmup)}
            row["point_frames"] = point_frames
            rows.append(row)
            print(row, flush=True)

    full = (args.frames, args.grid, args.height, args.width) == (16, 15, 384, 512)
    shape = f"{args.frames}-frame windows, grid {args.grid} ({points} points), {args.height}x{args.width}"
    header = (
        f"### {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit}, "
        f"{device_name(device)}\n\n"
        f"{args.variant} model, {shape}{'' if full else ' (reduced workload)'}, "
        f"median of {args.repeats} interleaved runs after {args.warmup} warm-up "
        f"({'wall' if device.type == 'cuda' else 'CPU'} seconds), torch {torch.__version__}.\n"
    )
    if args.tapnextpp:
        header += (f"TAPNext++ at {args.tapnextpp_resolution}x{args.tapnextpp_resolution} on the same windows and "
                   "queries, in the same interleaved runs.\n")
        table = ["| precision | batch | CoTracker3 s/window | TAPNext++ s/window | TAPNext++ / CoTracker3 | "
                 "TAPNext++ point-frames/s |", "|---|---|---:|---:|---:|---:|"]
        for row in rows:
            ours, theirs = row["ours"], row.get("tapnextpp")
            cells = [row["precision"], str(row["batch"])]
            cells += [f"{t / row['batch']:.2f}" if isinstance(t, float) else str(t) for t in (ours, theirs)]
            both = isinstance(ours, float) and isinstance(theirs, float)
            cells += [f"{theirs / ours:.1f}x" if both else "-",
                      f"{row['point_frames'] / theirs:,.0f}" if isinstance(theirs, float) else "-"]
            table.append("| " + " | ".join(cells) + " |")
        header += "\n" + "\n".join(table) + "\n\nCoTracker3 against its official predictor:\n"
    table = ["| precision | batch | ours s/call | ours point-frames/s | official s | official point-frames/s | ours / official |"]
    table.append("|---|---|---|---|---|---|---|")
    for row in rows:
        ours, theirs = row["ours"], row.get("official")
        ours_rate = row["point_frames"] / ours if isinstance(ours, float) else None
        cells = [row["precision"], str(row["batch"])]
        cells += [f"{ours:.2f}", f"{ours_rate:,.0f}"] if ours_rate else [ours, "-"]
        if theirs is None:
            cells += ["not run", "-", "-"]
        elif isinstance(theirs, float):
            official_rate = row["point_frames"] / theirs
            ratio = f"{ours_rate / official_rate:.2f}x" if ours_rate else "-"
            cells += [f"{theirs:.2f}", f"{official_rate:,.0f}", ratio]
        else:
            cells += [theirs, "-", "-"]
        table.append("| " + " | ".join(cells) + " |")
    block = header + "\n" + "\n".join(table) + "\n" + (f"\n{args.note}\n" if args.note else "")
    append_results(args.results, block)
    print(block)


if __name__ == "__main__":
    main()
