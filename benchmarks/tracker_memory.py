"""Peak memory of our CoTracker3 and TAPNext++ forwards on CPU, and the memory models in the model
modules checked against it.

Peak memory is read from the profiler's allocation records (every allocation and free of the
forward, in order), so it is exact for fp32 on CPU and does not depend on the allocator. It measures
the two phases of a forward apart (the encoder, per frame and pixel; one refinement iteration, per
frame and per point-frame), fits the constants that ``forward_memory_bytes`` uses, and compares the
model with whole forwards, including one whose frames exceed an encoder chunk. TAPNext++
(``--tracker tapnextpp``): the released network's peak per token (a patch or a point on one frame)
from two forwards, and its model (``tapnextpp_predictor.BYTES_PER_TOKEN``) against whole forwards.
GPU figures come from ``tracker_gpu.py``, which checks the same models on the card.

    python benchmarks/tracker_memory.py [--tracker tapnextpp]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from magma_data.models import tapnextpp_predictor
from magma_data.models.cotracker3 import (
    ENCODER_BYTES_PER_PIXEL,
    REFINE_BYTES_PER_FRAME,
    REFINE_BYTES_PER_POINT_FRAME,
    CoTracker3Offline,
    forward_memory_bytes,
)

MIB = 2**20


def peak_bytes(run) -> int:
    """The most memory allocated at once while ``run`` runs, beyond what was allocated before it."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def inputs(batch: int, frames: int, points: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    height, width = size
    video = torch.randint(0, 256, (batch, frames, 3, height, width)).float()
    queries = torch.rand(batch, points, 3) * torch.tensor([0, width - 1.0, height - 1.0])
    return video, queries


def refine_peak(model: CoTracker3Offline, batch: int, frames: int, points: int, size: tuple[int, int]) -> int:
    """One refinement iteration's transients (the pyramid already exists)."""
    video, queries = inputs(batch, frames, points, size)
    pyramid = model.encode(video)
    feats = model.query_features(pyramid, queries)
    coords = (queries[:, :, None, 1:] / model.stride).expand(batch, points, frames, 2).float()
    logits = coords.new_zeros(batch, points, frames)
    return peak_bytes(lambda: model.refine(pyramid, coords, logits, logits, feats, iters=1))


def tapnextpp_memory(frames: int) -> None:
    """TAPNext++'s peak per token, from a forward of few tokens and one of twice as many windows."""
    from magma_data.models.point_tracking import grid_points
    from magma_data.models.tapnext import PATCH_SIZE, TAPNext
    from magma_data.models.tapnextpp_predictor import TAPNextPPPredictor

    size = (384, 512)
    predictor = TAPNextPPPredictor(TAPNext().eval(), 64)

    def measured(batch: int, frames: int, grid: int, resolution: int) -> tuple[int, int]:
        predictor.resolution = resolution
        video = torch.randint(0, 256, (batch, frames, 3, *size)).float()
        queries = torch.from_numpy(grid_points(grid, *size)).expand(batch, -1, -1)
        tokens = batch * frames * ((resolution // PATCH_SIZE) ** 2 + grid**2)
        resized = batch * frames * 3 * 4 * resolution**2  # the frames at the model resolution, before the network
        return peak_bytes(lambda: predictor(video, queries)) - resized, tokens

    with torch.no_grad():
        (one, tokens_one), (two, tokens_two) = measured(1, frames, 5, 64), measured(2, frames, 5, 64)
        print(f"TAPNext++: {(two - one) / (tokens_two - tokens_one) / 1024:.1f} KiB per token "
              f"(model: {tapnextpp_predictor.BYTES_PER_TOKEN / 1024:.1f})")
        print("\n| batch x frames, points, resolution | measured peak MiB | model MiB | model / measured |")
        print("|---|---:|---:|---:|")
        for batch, frames_, grid, resolution in ((1, frames, 15, 64), (2, frames, 15, 128), (1, 2, 15, 256)):
            peak, _ = measured(batch, frames_, grid, resolution)
            estimate = tapnextpp_predictor.forward_memory_bytes(batch, frames_, grid**2, resolution)
            print(f"| {batch} x {frames_}, {grid**2}, {resolution} | {peak / MIB:,.0f} | {estimate / MIB:,.0f} | "
                  f"{estimate / peak:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--tracker", choices=("cotracker3", "tapnextpp"), default="cotracker3")
    args = parser.parse_args()
    if args.tracker == "tapnextpp":
        return tapnextpp_memory(args.frames)
    size = (384, 512)
    pixels = size[0] * size[1]
    T = args.frames
    torch.manual_seed(0)
    model = CoTracker3Offline().eval()
    with torch.no_grad():
        video, _ = inputs(1, 4, 1, size)
        encoder = peak_bytes(lambda: model.fnet(2 * (video.flatten(0, 1) / 255.0) - 1.0))
        few, many = refine_peak(model, 1, T, 25, size), refine_peak(model, 1, T, 225, size)
        per_point_frame = (many - few) / (200 * T)
        per_frame = few / T - 25 * per_point_frame
        print(f"encoder: {encoder / (4 * pixels):.1f} bytes per frame-pixel (model: {ENCODER_BYTES_PER_PIXEL})")
        print(f"refinement: {per_frame / 1024:.1f} KiB per frame (model: {REFINE_BYTES_PER_FRAME / 1024:.1f}) + "
              f"{per_point_frame / 1024:.2f} KiB per point-frame (model: {REFINE_BYTES_PER_POINT_FRAME / 1024:.2f})")
        print("\n| batch x frames, points, size | measured peak MiB | model MiB | model / measured |")
        print("|---|---:|---:|---:|")
        for batch, frames, points, shape in ((1, T, 225, size), (2, T, 225, size), (1, T, 900, size),
                                             (16, T, 225, (96, 128)), (4, T, 1024, (96, 128))):
            video, queries = inputs(batch, frames, points, shape)
            measured = peak_bytes(lambda: model(video, queries, iters=1))
            estimate = forward_memory_bytes(batch, frames, points, shape)
            print(f"| {batch} x {frames}, {points}, {shape[0]}x{shape[1]} | {measured / MIB:,.0f} | "
                  f"{estimate / MIB:,.0f} | {estimate / measured:.2f} |")


if __name__ == "__main__":
    main()
