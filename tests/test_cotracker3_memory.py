"""CoTracker3's memory model: the batch size a tracker actor takes from the card's free memory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from magma_data.models.cotracker3 import CoTracker3Offline, batch_size_for_memory, forward_memory_bytes
from magma_data.stages.track import MAX_WINDOWS_PER_CALL

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from tracker_memory import inputs, peak_bytes  # noqa: E402

GIB = 2**30
CAP = MAX_WINDOWS_PER_CALL


def test_batch_size_grows_with_free_memory_from_one_to_the_cap():
    sizes = [batch_size_for_memory(free * GIB, frames=16, points=225, max_batch=CAP) for free in (0, 2, 8, 24, 80, 1000)]
    assert sizes[0] == 1  # too little memory still tries one window; the caller halves no further
    assert sizes == sorted(sizes) and len(set(sizes)) > 3
    assert sizes[-1] == CAP
    assert batch_size_for_memory(1000 * GIB, frames=16, points=225, max_batch=8) == 8


def test_chosen_batch_fits_in_the_headroom_with_its_videos_and_one_more_window_would_not():
    free = 24 * GIB  # below the cap of 64 windows (about 25 GiB and their videos)
    video = 16 * 3 * 4 * (512 * 910 + 384 * 512)  # a window as decoded (512x910, float) and resized to 384x512
    batch = batch_size_for_memory(free, frames=16, points=225, max_batch=CAP, input_size=(512, 910))
    assert forward_memory_bytes(batch, 16, 225) + batch * video <= 0.8 * free
    assert forward_memory_bytes(batch + 1, 16, 225) + (batch + 1) * video > 0.8 * free
    assert batch < batch_size_for_memory(free, frames=16, points=225, max_batch=CAP)  # smaller input frames leave room for more


def test_more_frames_points_or_pixels_need_more_memory():
    base = forward_memory_bytes(4, 16, 225)
    assert forward_memory_bytes(4, 32, 225) > base
    assert forward_memory_bytes(4, 16, 900) > base
    assert forward_memory_bytes(4, 16, 225, resolution=(768, 1024)) > base


@pytest.mark.parametrize(
    "batch,frames,points,size",
    [(1, 6, 4, (192, 256)), (3, 8, 100, (64, 96))],
    ids=["encoder-bound", "refinement-bound"],
)
def test_memory_model_bounds_the_measured_peak_of_a_forward(batch, frames, points, size):
    torch.manual_seed(0)
    model = CoTracker3Offline().eval()
    video, queries = inputs(batch, frames, points, size)
    with torch.no_grad():
        measured = peak_bytes(lambda: model(video, queries, iters=1))
    assert 0.9 <= forward_memory_bytes(batch, frames, points, size) / measured <= 1.5
