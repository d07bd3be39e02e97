"""Curation: shot detection per video-minute beside decode, CLIP alignment and the quality rules per window.

Shots: a minute of real video (the team's clips, ``--videos`` or ``clips.VIDEO_DIRS``, looped to a
minute and written with PyAV at their own size) is decoded as the pipeline's decode stage decodes it
(every 16-frame window, resized to height 512), read whole as shot detection reads it, and scanned
for cuts (decode + downscale + ContentDetector). The three run interleaved, median of ``--repeats``,
so their ratios hold on a shared machine. Alignment: ``TextAlignmentStage.process`` over decoded
windows with a tiny random CLIPModel (the tests' checkpoint) and, with ``--vit-l``, a random model
of CLIP ViT-L/14@336px's shape (Magma's filter model; no weights are downloaded, so its scores mean
nothing, its cost is the real one). Quality: ``QualityStage`` on windows tracked by Lucas-Kanade
(15x15 grid) and compensated, beside the camera stage that runs before it. No GPU was available
here: GPU figures are not measured. Results go to benchmarks/RESULTS.md.

    python benchmarks/curation.py --repeats 3 --vit-l
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from clips import find_videos, shown
from results_file import git_commit, replace_section

from magma_data.execution import new_unit_row
from magma_data.sources.base import Clip
from magma_data.sources.sample import write_video
from magma_data.stages.base import Filtered
from magma_data.stages.camera import CameraConfig, CameraStage
from magma_data.stages.decode import DecodeConfig, DecodeStage
from magma_data.stages.plan import PlanConfig, plan_windows, probe_video
from magma_data.stages.quality import QualityConfig, QualityStage
from magma_data.stages.shots import ShotDetector, ShotsConfig, span_frames
from magma_data.stages.text_alignment import AlignmentConfig, TextAlignmentStage
from magma_data.stages.track import TrackConfig, TrackStage

REPO = Path(__file__).resolve().parents[1]
TITLE = "Curation before tracking: shots and CLIP alignment (CPU)"
#: (label, source clips looped into one minute): each set shares a size and a rate
MINUTES = (("854x480, 30 fps (bear, paragliding)", ("bear.mp4", "paragliding.mp4")),
           ("1296x720, 10 fps (apple)", ("apple.mp4",)))


#: What the figures say, as measured when this benchmark was written (2-core shared CPU).
READING = """Reading it: shot detection decodes every frame of a clip at its own size, as decoding all of a
clip's windows does, so on CPU the two cost about the same per video-minute and the detector's
own scoring (frames shrunk by width // 256, as PySceneDetect 0.6 did) is lost in the noise of the
read; with shots on, a clip is decoded twice (once to plan, in Ray tasks, once for its windows). Cuts found: every join of the looped
bear/paragliding minute (23), none in the apple orbit. CLIP ViT-L/14@336px costs 6 to 10 s a
window on this CPU (10.2 s in an earlier run of this benchmark, under more load), far above
Lucas-Kanade (about 0.1 s a window, "video_tom stages") and a sixth to a tenth of CoTracker3 on CPU
(about a minute a window, docs/environment.md): alignment belongs on the GPU actors. No GPU was
available to this task, so its GPU cost per window is not measured. The quality rules read the
tracks already made: a fortieth of the camera stage before them, nothing a run would notice."""


def video_minute(videos: Path, names: tuple[str, ...], folder: Path) -> Path:
    """The clips, in turn, repeated until a minute is full, as one H.264 file (cuts at every join)."""
    frames, fps = [], None
    for name in names:
        with av.open(str(videos / name)) as container:
            fps = fps or float(container.streams.video[0].average_rate)
            frames.append([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    size = frames[0][0].shape[1::-1]
    wanted = int(60 * fps)
    minute = []
    while len(minute) < wanted:
        for clip in frames:
            minute += [cv2.resize(frame, size) if frame.shape[1::-1] != size else frame for frame in clip]
    path = folder / f"minute-{'-'.join(Path(name).stem for name in names)}.mp4"
    write_video(np.stack(minute[:wanted]), path, fps=fps)
    return path


def time_shots(path: Path, repeats: int) -> dict[str, float]:
    """Seconds for the pipeline's decode of every window, a whole read, and shot detection (medians)."""
    info = probe_video(str(path))
    windows = plan_windows(Clip("m", "m", str(path)), info, "bench", PlanConfig())
    decode = DecodeStage(DecodeConfig(height=512))
    detector = ShotDetector(ShotsConfig())
    reader = DecodeStage(DecodeConfig(backend="decord"))
    runs: dict[str, list[float]] = {"decode": [], "read": [], "shots": []}
    for _ in range(repeats):
        start = time.perf_counter()
        for row in windows:
            decode(row)
        runs["decode"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for _frame in span_frames(reader, str(path), 0, info.num_frames):
            pass
        runs["read"].append(time.perf_counter() - start)
        start = time.perf_counter()
        cuts = detector(str(path), 0, info.num_frames, info.fps)
        runs["shots"].append(time.perf_counter() - start)
    minutes = info.num_frames / info.fps / 60
    figures = {name: statistics.median(times) / minutes for name, times in runs.items()}
    figures["cuts"] = len(cuts)
    return figures


def vit_l_stage(batch_size: int) -> TextAlignmentStage:
    """The stage with a random model of CLIP ViT-L/14@336px's shape, put in place of a loaded checkpoint."""
    sys.path.insert(0, str(REPO / "tests"))
    from clip_fixtures import save_tiny_clip
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = CLIPTokenizer.from_pretrained(save_tiny_clip(Path(folder)))
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=336, patch_size=14),
        projection_dim=768,
    )
    processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 336},
                                                                    crop_size={"height": 336, "width": 336}),
                              tokenizer=tokenizer)
    stage = TextAlignmentStage(AlignmentConfig(checkpoint="(random ViT-L/14@336px)", threshold=-1.0,
                                               batch_size=batch_size, device="cpu"))
    stage._loaded = (CLIPModel(config).eval(), processor, "cpu", 77)
    return stage


def time_alignment(stage: TextAlignmentStage, windows: list[dict], repeats: int) -> float:
    """Seconds per window of ``stage.process`` over ``windows`` (median of ``repeats``, after one warm-up)."""
    stage.process(windows[: stage.config.batch_size])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        results = stage.process(windows)
        times.append(time.perf_counter() - start)
        failed = [r for r in results if isinstance(r, (Exception, Filtered))]
        if failed:
            raise RuntimeError(f"alignment failed: {failed[0]}")
    return statistics.median(times) / len(windows)


def time_quality(windows: list[dict], repeats: int) -> tuple[float, float]:
    """Seconds per window of the camera stage and of the quality stage (every rule on), on tracked windows."""
    track, camera = TrackStage(TrackConfig(tracker="lk", grid_size=15)), CameraStage(CameraConfig(force=True))
    rule = QualityStage(QualityConfig(min_mean_motion_px=0.0, max_invisible_fraction=1.0, drop_camera_fallback=True))
    tracked = []
    for row in windows:
        row = {**row, **track(row)}
        tracked.append({**row, **camera(row)})
    times: dict[str, list[float]] = {"camera": [], "quality": []}
    for _ in range(repeats):
        for name, stage in (("camera", camera), ("quality", rule)):
            start = time.perf_counter()
            for row in tracked:
                stage(row)
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["camera"]) / len(windows), statistics.median(times["quality"]) / len(windows)


def decoded_windows(videos: Path, count: int) -> list[dict]:
    clip = Clip("bear", "bear", str(videos / "bear.mp4"), task="a bear walks over the rocks")
    planned = plan_windows(clip, probe_video(clip.video_path), "bench", PlanConfig(window_stride=4))[:count]
    decode = DecodeStage(DecodeConfig(height=512))
    return [{**new_unit_row(row), **decode(row)} for row in planned]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--windows", type=int, default=16, help="windows the tiny CLIP scores per repeat")
    parser.add_argument("--vit-l", action="store_true", help="also a random CLIP ViT-L/14@336px (2 windows, slow)")
    parser.add_argument("--videos", type=Path, help="folder of the clips (default: clips.VIDEO_DIRS)")
    args = parser.parse_args()
    videos = find_videos(args.videos)
    sys.path.insert(0, str(REPO / "tests"))
    from clip_fixtures import save_tiny_clip

    threads = torch.get_num_threads()
    lines = [f"{datetime.date.today()} · commit {git_commit()} · 2-core {platform.machine()} CPU, shared, no GPU · "
             f"torch {torch.__version__}, {threads} threads · median of {args.repeats} · clips {shown(videos)}", "",
             "Seconds per minute of video (one process; the pipeline's decode: every 16-frame window resized to "
             "height 512; whole read: every frame at native size, as detection reads it; shots: read + downscale by "
             "width // 256 + ContentDetector, PySceneDetect 0.6's rules):", "",
             "| video | pipeline decode s/min | whole read s/min | shots s/min | shots / pipeline decode "
             "| cuts found |",
             "|---|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as folder:
        for label, names in MINUTES:
            f = time_shots(video_minute(videos, names, Path(folder)), args.repeats)
            lines.append(f"| {label} | {f['decode']:.2f} | {f['read']:.2f} | {f['shots']:.2f} | "
                         f"{f['shots'] / f['decode']:.2f}x | {f['cuts']} |")
        windows = decoded_windows(videos, args.windows)
        tiny = TextAlignmentStage(AlignmentConfig(checkpoint=str(save_tiny_clip(Path(folder) / "clip")),
                                                  threshold=-1.0, batch_size=8, device="cpu"))
        rows = [("tiny random CLIP (2 layers, width 32, 32 px)", 8, len(windows), time_alignment(tiny, windows,
                                                                                                 args.repeats))]
    if args.vit_l:
        rows.append(("random CLIP ViT-L/14@336px (Magma's model's shape; 1 run after a warm-up)", 2, 2,
                     time_alignment(vit_l_stage(2), windows[:2], 1)))
    lines += ["", "CLIP alignment on CPU, frames decoded at height 512 (4 frames a window through the processor "
              "and one forward):", "", "| model | windows per forward | windows | s/window |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {batch} | {count} | {seconds:.3f} |" for name, batch, count, seconds in rows]
    camera, rule = time_quality(windows, args.repeats)
    lines += ["", f"Quality rules after tracking ({len(windows)} windows tracked by Lucas-Kanade, 15x15 grid, height "
              "512): the camera stage that runs before them "
              f"{camera * 1e3:.2f} ms a window; the quality stage, every rule on, {rule * 1e3:.3f} ms a window.",
              "", READING]
    print(replace_section(TITLE, "\n".join(lines)))


if __name__ == "__main__":
    main()
