"""The GPU benchmark's dry run: the whole script on a tiny shape, beside the official code (CoTracker3, TAPNext++).

The CoTracker3 case needs a co-tracker checkout in .official/co-tracker (git-ignored, never committed);
without one it is skipped. The TAPNext++ case runs anywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = REPO / ".official" / "co-tracker"


@pytest.mark.skipif(not (OFFICIAL / "cotracker" / "predictor.py").is_file(), reason=f"no co-tracker checkout in {OFFICIAL}")
def test_dry_run_tracks_like_the_official_code_and_times_every_case(tmp_path, video_clips):
    done = subprocess.run(
        [sys.executable, "benchmarks/tracker_gpu.py", str(tmp_path), "--tiny", "--device", "cpu", "--videos",
         str(video_clips)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "tracker_gpu.json").read_text())
    parity = report["accuracy"][0]
    assert (parity["run"], parity["against"]) == ("ours fp32", "official fp32")
    assert parity["within_budget"] and parity["max_px"] <= 0.05 and parity["visibility_agreement"] > 0.99
    assert parity["reference_motion_px"] > 1  # the random weights move points, so the comparison means something
    assert {(row["run"], row["against"]) for row in report["accuracy"][1:]} == {
        ("ours bf16", "ours fp32"), ("official bf16", "official fp32"), ("ours bf16", "official bf16")
    }
    cases = {(c["precision"], c["mode"], c["batch"]): c for c in report["cases"]}
    assert set(cases) == {(p, "eager", b) for p in ("fp32", "bf16") for b in (1, 2)}
    assert all(c["ours_s"] > 0 for c in cases.values())
    assert cases[("fp32", "eager", 1)]["official_s"] > 0 and cases[("bf16", "eager", 1)]["official_s"] > 0
    table = (tmp_path / "tracker_gpu.md").read_text()
    assert "| ours fp32 | official fp32 |" in table and "| fp32 | eager | 2 |" in table


def test_dry_run_times_tapnextpp_and_counts_the_flops_of_a_window_of_each_tracker(tmp_path, video_clips):
    """Without co-tracker; the official TAPNext++ side runs where .official/tapnet and torchvision are (not here:
    the CPU torch has no torchvision), else the report says why it did not."""
    done = subprocess.run(
        [sys.executable, "benchmarks/tracker_gpu.py", str(tmp_path), "--tiny", "--device", "cpu", "--videos",
         str(video_clips), "--trackers", "tapnextpp"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "tracker_gpu.json").read_text())
    cases = {(c["precision"], c["batch"]): c for c in report["tapnextpp"]["cases"]}
    assert set(cases) == {(p, b) for p in ("fp32", "bf16") for b in (1, 2)}
    assert all(c["ours_s"] > 0 for c in cases.values()) and not report["cases"]  # CoTracker3 was not asked for
    accuracy = {(row["run"], row["against"]): row for row in report["tapnextpp"]["accuracy"]}
    assert ("ours bf16", "ours fp32") in accuracy
    if ("ours fp32", "official fp32") in accuracy:
        assert accuracy[("ours fp32", "official fp32")]["within_budget"]
    else:
        assert any(skip.startswith("official TAPNext++") for skip in report["skipped"])
    flops = {(row["shape"], row["tracker"]): row["tflops"] for row in report["flops"]}
    pipeline = {tracker: value for (shape, tracker), value in flops.items() if shape == "the pipeline's"}
    assert 1 < pipeline["CoTracker3 offline"] < pipeline["TAPNext++ 256"] < pipeline["TAPNext++ 512"]
    assert "| the pipeline's | TAPNext++ 256 | 16 | 225 | 384x512 |" in (tmp_path / "tracker_gpu.md").read_text()
