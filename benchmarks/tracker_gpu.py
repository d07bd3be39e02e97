"""CoTracker3 and TAPNext++ on a GPU beside the official code: throughput, accuracy, memory and FLOPs, in one run.

On the same seeded random weights and the same real clips (16-frame windows at 384x512, grid 15 on
frame 0, offline model, 6 iterations), in this order, so that the figures that matter most come first:

1. accuracy: ours fp32 (the windows as one batch) against the official fp32 (window by window): track
   difference in pixels after the query frame, budget 0.05, and visibility agreement, budget above
   99 %; bf16 and tf32 (TF32 tensor cores) against fp32, for ours and for the official, so their
   accuracy cost sits beside their speed;
2. throughput in point-frames per second (points x frames / s) for each mode, precision and batch:
   ours eager, as a CUDA graph and torch.compile'd, with the whole batch in one call (the faster modes
   also checked against eager), and the official with one call per window (it cannot batch);
   larger batches until one runs out of memory;
3. peak GPU memory per window, and the per-window memory model of ``magma_data.models.cotracker3``
   checked against it, with the batch size it would choose for this card.

Then TAPNext++ (``tapnextpp_part``) on the same windows with the grid as queries, at 256x256
(``--tapnextpp-resolution 512``: the 512 checkpoint's input, its position embedding resized): accuracy of
ours fp32 (the windows as one batch) against the official ``TAPNextPP.track_frame`` loop (a frame a
call, a window at a time) on the same seeded random weights, budget 1e-3 px on 99.9 % of point-frames
and visibility on 99.9 %; ours bf16 against fp32, and the official float16 autocast (what it runs on
CUDA) against its fp32, so the precision's cost sits beside its speed; throughput and peak memory per
batch until out of memory, the official a window at a time; its memory model. Last, the FLOPs of one
window of each tracker (``torch.utils.flop_counter`` on the meta device: no time, no memory), at this
run's shape and at the pipeline's.

The run stops starting new timings after ``--budget-s`` seconds (TAPNext++'s after
``--tapnextpp-budget-s`` more) and writes what it has. It imports only torch, numpy and OpenCV (a GPU
machine's own Python has no Ray, decord or PyAV) and finds the official code in ``.official/co-tracker``
and ``.official/tapnet`` (the official TAPNext++ also needs torchvision and einops: without them its
side is skipped, with the reason in the report), and the clips in ``--videos`` (``clips.find_videos``).
Output: ``tracker_gpu.json`` and ``tracker_gpu.md`` in the folder given.

    python benchmarks/tracker_gpu.py out/tracker-gpu            # the whole matrix (< 8 min on one H200)
    python benchmarks/tracker_gpu.py out/tracker-tiny --tiny    # dry run on a tiny shape, any device
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from clips import find_videos
from results_file import git_commit
from tracker_common import (
    CLIPS,
    GRID_SIZE,
    ITERS,
    OFFICIAL_DIR,
    RESOLUTION,
    clip_windows,
    device_name,
    official_predictor,
    random_state,
    synchronize,
    time_interleaved,
)

from magma_data.models import tapnextpp_predictor
from magma_data.models.cotracker3 import CoTracker3Offline, batch_size_for_memory, forward_memory_bytes
from magma_data.models.cotracker3_predictor import CoTracker3Predictor
from magma_data.models.point_tracking import grid_points
from magma_data.models.tapnext import TAPNext
from magma_data.models.tapnextpp_predictor import TAPNextPPPredictor

#: autocast dtype per precision; "tf32" is fp32 with TF32 tensor-core matmuls and convolutions (CUDA only)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "tf32": None}
TRACK_BUDGET_PX = 0.05
VISIBILITY_AGREEMENT = 0.99


@dataclass(frozen=True)
class Shape:
    frames: int
    grid: int
    resolution: tuple[int, int]

    @property
    def points(self) -> int:
        return self.grid**2


FULL = Shape(frames=16, grid=GRID_SIZE, resolution=RESOLUTION)
TINY = Shape(frames=2, grid=3, resolution=(64, 96))


@dataclass
class Case:
    precision: str
    mode: str
    batch: int
    point_frames: int
    ours_s: float | None = None
    ours_peak_bytes: int | None = None
    official_s: float | None = None
    official_peak_bytes: int | None = None
    max_px_vs_eager: float | None = None  # CUDA graph and compile: largest track change against eager
    note: str = ""


@dataclass
class Report:
    device: str
    torch: str
    commit: str
    shape: dict
    started: str
    accuracy: list[dict] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)
    memory_model: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    tapnextpp: dict = field(default_factory=dict)  # accuracy, cases, memory_model, as above, for TAPNext++
    flops: list[dict] = field(default_factory=list)  # per window, each tracker, this run's shape and the pipeline's


class CudaGraphNetwork(torch.nn.Module):
    """The network's forward captured once per input shape in a CUDA graph and replayed.

    A window's forward is thousands of small kernels; replaying them as one graph removes the
    per-kernel launch cost from the host. Inputs are copied into the captured buffers and outputs
    cloned out, so callers see an ordinary module. Autocast (``dtype``) is applied inside, without
    its weight cache, which graph capture does not allow.
    """

    def __init__(self, network: torch.nn.Module, dtype: torch.dtype | None):
        super().__init__()
        self.network = network
        self.model_resolution = network.model_resolution
        self.dtype = dtype
        self.graphs: dict[tuple, tuple] = {}

    def _forward(self, video: torch.Tensor, queries: torch.Tensor, iters: int):
        precision = (
            torch.autocast("cuda", dtype=self.dtype, cache_enabled=False) if self.dtype else contextlib.nullcontext()
        )
        with precision:
            return self.network(video, queries, iters=iters)

    def forward(self, video: torch.Tensor, queries: torch.Tensor, iters: int = 4):
        key = (tuple(video.shape), tuple(queries.shape), iters)
        if key not in self.graphs:
            static_video, static_queries = video.clone(), queries.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the capture, as CUDA graphs require
                self._forward(static_video, static_queries, iters)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = self._forward(static_video, static_queries, iters)
            self.graphs[key] = (graph, static_video, static_queries, outputs)
        graph, static_video, static_queries, outputs = self.graphs[key]
        static_video.copy_(video)
        static_queries.copy_(queries)
        graph.replay()
        return tuple(output.clone() for output in outputs)


def our_tracker(network: CoTracker3Offline, mode: str, precision: str) -> torch.nn.Module:
    """Our predictor around the network as ``mode`` runs it: eager, CUDA graph or torch.compile."""
    dtype = PRECISIONS[precision]
    if mode == "eager":
        return CoTracker3Predictor(network, dtype=dtype)
    if mode == "cudagraph":
        return CoTracker3Predictor(CudaGraphNetwork(network, dtype), dtype=None)
    if mode == "compile":
        return CoTracker3Predictor(torch.compile(network), dtype=dtype)
    raise ValueError(f"unknown mode {mode!r}; use eager, cudagraph or compile")


def official_call(official: torch.nn.Module, precision: str, device: torch.device, grid: int):
    """One official predictor call per window, under autocast for bf16, outputs concatenated."""
    dtype = PRECISIONS[precision]

    def run(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        precision_context = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with torch.no_grad(), precision_context:
            results = [official(window, grid_size=grid) for window in video.split(1)]
        return torch.cat([r[0] for r in results]).float(), torch.cat([r[1] for r in results])

    return run


def peak_bytes(run, device: torch.device) -> tuple[object, int | None]:
    """Run once; the GPU memory it needed above what was allocated before (None off CUDA)."""
    if device.type != "cuda":
        return run(), None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = run()
    synchronize(device)
    return result, torch.cuda.max_memory_allocated(device) - before


def deviation(tracks: torch.Tensor, visible: torch.Tensor, reference: torch.Tensor, reference_visible: torch.Tensor,
              name: str, against: str) -> dict:
    """Track distance (input pixels) over every frame after the query frame, and visibility agreement."""
    distance = (tracks - reference).norm(dim=-1)[:, 1:].flatten().double().cpu().numpy()
    motion = (reference[:, -1] - reference[:, 0]).norm(dim=-1).mean().item()
    agreement = (visible == reference_visible)[:, 1:].double().mean().item()
    return {
        "run": name,
        "against": against,
        "median_px": float(np.median(distance)),
        "p95_px": float(np.percentile(distance, 95)),
        "max_px": float(distance.max()),
        "visibility_agreement": agreement,
        "reference_motion_px": motion,
    }


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def tensor_float32(precision: str):
    """TF32 on for the "tf32" precision and off otherwise, restored after."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def within_budget(row: dict) -> None:
    row["within_budget"] = row["max_px"] <= TRACK_BUDGET_PX and row["visibility_agreement"] > VISIBILITY_AGREEMENT


def accuracy(report: Report, network, official, windows: torch.Tensor, precisions: list[str], shape: Shape,
             device: torch.device) -> None:
    """Ours (eager, the whole batch in one call) and the official (a call per window) on the same
    windows in every precision; fills ``report.accuracy``."""
    results: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
    runs = {"ours": lambda p: our_tracker(network, "eager", p)(windows, grid_size=shape.grid),
            "official": lambda p: official_call(official, p, device, shape.grid)(windows)}
    with torch.no_grad():
        for precision in precisions:
            for name, run in runs.items():
                try:
                    with tensor_float32(precision):
                        results[(name, precision)] = run(precision)
                except Exception as error:  # a precision that fails is a finding; the rest still runs
                    traceback.print_exc()
                    report.skipped.append(f"accuracy of {name} {precision} ({type(error).__name__}: {error})"[:300])
    pairs = [(("ours", "fp32"), ("official", "fp32"))]
    for precision in precisions[1:]:
        pairs += [(("ours", precision), ("ours", "fp32")), (("official", precision), ("official", "fp32")),
                  (("ours", precision), ("official", precision))]
    report.accuracy = [
        deviation(*results[run], *results[against], " ".join(run), " ".join(against))
        for run, against in pairs if run in results and against in results
    ]
    if report.accuracy and report.accuracy[0]["against"] == "official fp32":
        within_budget(report.accuracy[0])


def run_case(case: Case, tracker, official, video: torch.Tensor, args, shape: Shape, device: torch.device,
             eager) -> bool:
    """Time one case (and the official beside it, if given); False if ours ran out of memory.

    With ``eager`` (the eager tracker), the case's tracks are also compared with eager's on the same batch.
    """
    with torch.no_grad(), tensor_float32(case.precision):
        ours = lambda: tracker(video, grid_size=shape.grid)  # noqa: E731
        try:
            result, case.ours_peak_bytes = peak_bytes(ours, device)  # also the warm-up: capture, compile, kernels
            if eager is not None:
                case.max_px_vs_eager = (result[0] - eager(video, grid_size=shape.grid)[0]).norm(dim=-1).max().item()
        except Exception as error:  # a failed case is a result to record
            traceback.print_exc()
            case.note = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
            return not is_out_of_memory(error)
        runs = {"ours": ours}
        if official is not None:
            run_official = official_call(official, case.precision, device, shape.grid)
            try:
                _, case.official_peak_bytes = peak_bytes(lambda: run_official(video[:1]), device)
                runs["official"] = lambda: run_official(video)
            except Exception as error:
                traceback.print_exc()
                case.note += f"official: {type(error).__name__}: {str(error).splitlines()[0][:120]} "
        for name, took in time_interleaved(runs, device, args.repeats, args.warmup).items():
            if isinstance(took, float):
                setattr(case, f"{name}_s", took)
            else:
                case.note += f"{name}: {took} "
    return True


def throughput(report: Report, network, official, windows: torch.Tensor, args, shape: Shape, device: torch.device,
               deadline: float, save) -> None:
    """Every (mode, precision, batch) case, eager first; fills ``report.cases`` and saves after each."""
    official_batches = {int(b) for b in args.official_batches.split(",")}
    compile_batches = {int(b) for b in args.compile_batches.split(",")}
    for mode in args.modes.split(","):
        for precision in args.precisions.split(","):
            for batch in [int(b) for b in args.batches.split(",")]:
                if mode == "compile" and batch not in compile_batches:
                    continue
                left = deadline - time.monotonic()
                if left < (args.compile_min_s if mode == "compile" else 0):
                    report.skipped.append(f"{mode} {precision} batch {batch} (time budget)")
                    continue
                case = Case(precision, mode, batch, batch * shape.frames * shape.points)
                video = windows[torch.arange(batch, device=device) % len(windows)]
                tracker = our_tracker(network, mode, precision)  # fresh: a CUDA graph holds its batch's memory
                checked = batch in official_batches  # small enough to run twice side by side
                fits = run_case(case, tracker, official if checked and mode == "eager" else None, video, args, shape,
                                device, our_tracker(network, "eager", precision) if checked and mode != "eager" else None)
                del tracker, video
                release(device)
                report.cases.append(case)
                print(asdict(case), flush=True)
                save()
                if not fits:
                    break  # larger batches of this mode will not fit either


def memory_model(report: Report, shape: Shape, device: torch.device) -> None:
    """The model module's memory estimate beside each eager fp32 peak, and its batch choice for this card."""
    rows = [
        {"batch": c.batch, "measured_bytes": c.ours_peak_bytes,
         "model_bytes": forward_memory_bytes(c.batch, shape.frames, shape.points, shape.resolution)}
        for c in report.cases if c.mode == "eager" and c.precision == "fp32" and c.ours_peak_bytes
    ]
    model: dict = {"by_batch": rows}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        model.update(free_bytes=free, total_bytes=total,
                     chosen_batch=batch_size_for_memory(free, shape.frames, shape.points, resolution=shape.resolution,
                                                          max_batch=64))  # the pipeline's MAX_WINDOWS_PER_CALL
    report.memory_model = model


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def markdown(report: Report) -> str:
    shape = report.shape
    lines = [
        f"### {report.started}, commit {report.commit}, {report.device}",
        "",
        f"offline model, {shape['frames']}-frame windows at {shape['resolution'][0]}x{shape['resolution'][1]}, "
        f"grid {shape['grid']} ({shape['grid'] ** 2} points), {ITERS} iterations, seeded random weights, real clips; "
        f"torch {report.torch}; fp32 without TF32, tf32 with TF32 matmuls and convolutions; "
        f"{report.seconds:.0f} s in all.",
        "",
        "Accuracy (input pixels, every frame after the query frame):",
        "",
        "| run | against | median px | p95 px | max px | visibility agreement | within budget |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in report.accuracy:
        budget = {True: "yes", False: "**no**", None: "-"}[row.get("within_budget")]
        lines.append(f"| {row['run']} | {row['against']} | {row['median_px']:.4f} | {row['p95_px']:.4f} | "
                     f"{row['max_px']:.4f} | {100 * row['visibility_agreement']:.2f} % | {budget} |")
    best = {}
    for case in report.cases:
        if case.official_s:
            rate = case.point_frames / case.official_s
            best[case.precision] = max(best.get(case.precision, 0.0), rate)
    lines += [
        "",
        "Throughput (point-frames/s; ours: the batch in one call; official: one call per window):",
        "",
        "| precision | mode | batch | ours s/call | ours point-frames/s | ours peak GiB | GiB/window | "
        "official s | official point-frames/s | official peak GiB/window | ours / official best (same precision) | "
        "ours / official fp32 best | max px vs eager |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in report.cases:
        ours_rate = case.point_frames / case.ours_s if case.ours_s else None
        official_rate = case.point_frames / case.official_s if case.official_s else None
        per_window = case.ours_peak_bytes / case.batch if case.ours_peak_bytes else None
        cells = [case.precision, case.mode, str(case.batch),
                 f"{case.ours_s:.3f}" if case.ours_s else case.note or "-",
                 f"{ours_rate:,.0f}" if ours_rate else "-", gib(case.ours_peak_bytes), gib(per_window),
                 f"{case.official_s:.3f}" if case.official_s else "-",
                 f"{official_rate:,.0f}" if official_rate else "-", gib(case.official_peak_bytes)]
        for reference in (best.get(case.precision), best.get("fp32")):
            cells.append(f"{ours_rate / reference:.2f}x" if ours_rate and reference else "-")
        cells.append("-" if case.max_px_vs_eager is None else f"{case.max_px_vs_eager:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    model = report.memory_model
    if model.get("by_batch"):
        lines += ["", "Memory model (`forward_memory_bytes`) against the eager fp32 peaks:", "",
                  "| batch | measured GiB | model GiB | model / measured |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['batch']} | {gib(r['measured_bytes'])} | {gib(r['model_bytes'])} | "
                  f"{r['model_bytes'] / r['measured_bytes']:.2f} |" for r in model["by_batch"]]
    if "chosen_batch" in model:
        lines += ["", f"`batch_size_for_memory` with {gib(model['free_bytes'])} GiB free of {gib(model['total_bytes'])}: "
                      f"batch {model['chosen_batch']}."]
    lines += tapnextpp_markdown(report)
    if report.flops:
        lines += ["", "FLOPs of one window (`FlopCounterMode` on the meta device: matrix products and convolutions):",
                  "", "| shape | tracker | frames | points | input | TFLOP |", "|---|---|---:|---:|---|---:|"]
        lines += [f"| {r['shape']} | {r['tracker']} | {r['frames']} | {r['points']} | {r['input'][0]}x{r['input'][1]} "
                  f"| {r['tflops']:.3f} |" for r in report.flops]
    if report.skipped:
        lines += ["", "Not run: " + "; ".join(report.skipped) + "."]
    return "\n".join(lines) + "\n"


def tapnextpp_markdown(report: Report) -> list[str]:
    part = report.tapnextpp
    if not part:
        return []
    side = part["resolution"]
    lines = ["", f"TAPNext++ at {side}x{side} (a dry run: the tiny network at 32), the same windows, the grid as "
             "queries; every frame. Accuracy:", "",
             "| run | against | within 1e-3 px | p99.9 px | max px | visibility agreement | visible | "
             "motion px | within budget |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in part["accuracy"]:
        budget = {True: "yes", False: "**no**", None: "-"}[row.get("within_budget")]
        lines.append(f"| {row['run']} | {row['against']} | {100 * row['within']:.3f} % | {row['p999_px']:.2e} | "
                     f"{row['max_px']:.2e} | {100 * row['visibility_agreement']:.3f} % | "
                     f"{100 * row['visible_share']:.1f} % | {row['reference_motion_px']:.1f} | {budget} |")
    lines += ["", "Throughput (ours: the batch in one call; official: `track_frame`, a frame a call, a window at a "
              "time, fp32 beside our fp32 and its float16 autocast beside our bf16):", "",
              "| precision | batch | ours s/call | ours point-frames/s | ours peak GiB | GiB/window | official s | "
              "official point-frames/s | ours / official |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case in part["cases"]:
        ours_rate = case.point_frames / case.ours_s if case.ours_s else None
        official_rate = case.point_frames / case.official_s if case.official_s else None
        per_window = case.ours_peak_bytes / case.batch if case.ours_peak_bytes else None
        lines.append("| " + " | ".join([
            case.precision, str(case.batch), f"{case.ours_s:.3f}" if case.ours_s else case.note or "-",
            f"{ours_rate:,.0f}" if ours_rate else "-", gib(case.ours_peak_bytes), gib(per_window),
            f"{case.official_s:.3f}" if case.official_s else "-", f"{official_rate:,.0f}" if official_rate else "-",
            f"{ours_rate / official_rate:.2f}x" if ours_rate and official_rate else "-"]) + " |")
    model = part.get("memory_model", {})
    if model.get("by_batch"):
        lines += ["", "Memory model (`tapnextpp_predictor.forward_memory_bytes`) against the fp32 peaks:", "",
                  "| batch | measured GiB | model GiB | model / measured |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['batch']} | {gib(r['measured_bytes'])} | {gib(r['model_bytes'])} | "
                  f"{r['model_bytes'] / r['measured_bytes']:.2f} |" for r in model["by_batch"]]
    if "chosen_batch" in model:
        lines += ["", f"`batch_size_for_memory` with {gib(model['free_bytes'])} GiB free: "
                      f"batch {model['chosen_batch']}."]
    return lines


# --- TAPNext++ -------------------------------------------------------------------------------------------

#: the dry run's network: the released layout shrunk (a 32x32 square, width 32, 2 blocks)
TAPNEXTPP_TINY = {"image_size": 32, "width": 32, "num_heads": 2, "depth": 2}
TAPNEXTPP_BUDGET_PX = 1e-3
TAPNEXTPP_SHARE = 0.999


def tapnextpp_networks(path: Path, tiny: bool, seed: int = 0):
    """(ours, the official ``TAPNextPP`` wrapper or None, why not): the same seeded random weights, built
    by the official modules with their ``torch.empty`` parameters filled (benchmarks/tapnextpp_parity.py)."""
    if tiny:
        ours = TAPNext(**TAPNEXTPP_TINY)
    else:
        ours = TAPNext()
    try:
        from tapnextpp_parity import centre_visibility, fill_random, import_official

        official_class, wrapper_class = import_official(path)
    except (ImportError, SystemExit) as error:  # no checkout, or no torchvision / einops
        torch.manual_seed(seed)
        return ours.eval(), None, f"official TAPNext++ ({type(error).__name__}: {error})"[:300]
    torch.manual_seed(seed)
    shape = dict(image_size=(32, 32), width=32, patch_size=(8, 8), num_heads=2, lru_width=32, depth=2) if tiny else {
        "image_size": (256, 256)}
    official = official_class(**shape).eval()
    fill_random(official, seed)
    ours.load_state_dict(official.state_dict(), strict=True)
    return ours.eval(), (official, wrapper_class, centre_visibility), None


def official_tapnextpp_call(official, device: torch.device, resolution: int, half: bool):
    """The official loop per window: BGR uint8 frames to ``track_frame``, a frame a call; float16 autocast
    on CUDA when ``half`` (its default there), fp32 otherwise. Returns [B, T, N, 2] x, y and [B, T, N]."""
    network, wrapper_class, _ = official
    wrapper = wrapper_class(network, device, input_resolution=resolution)

    def run(windows: torch.Tensor, queries: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        frames = windows.round().clamp(0, 255).byte().flip(2).permute(0, 1, 3, 4, 2).cpu().numpy()  # B T H W 3 BGR
        tracks, visible = [], []
        for window in frames:
            positions, seen, state = wrapper.track_frame(window[0], query_points_xy=queries, autocast=half)
            out, vis = [positions], [seen]
            for frame in window[1:]:
                positions, seen, state = wrapper.track_frame(frame, state=state, autocast=half)
                out.append(positions)
                vis.append(seen)
            tracks.append(np.stack(out))
            visible.append(np.stack(vis))
        return torch.from_numpy(np.stack(tracks)), torch.from_numpy(np.stack(visible))

    return run


def tapnextpp_deviation(tracks, visible, reference, reference_visible, name: str, against: str) -> dict:
    """The issue's figures: share of point-frames within 1e-3 px, p99.9 and max px, visibility agreement."""
    distance = (tracks.cpu().double() - reference.cpu().double()).norm(dim=-1).flatten().numpy()
    return {"run": name, "against": against, "within": float((distance <= TAPNEXTPP_BUDGET_PX).mean()),
            "p999_px": float(np.quantile(distance, TAPNEXTPP_SHARE)), "max_px": float(distance.max()),
            "visibility_agreement": float((visible.cpu() == reference_visible.cpu()).double().mean()),
            "visible_share": float(reference_visible.double().mean()),
            "reference_motion_px": float((reference[:, 1:] - reference[:, :1]).norm(dim=-1).mean())}


def tapnextpp_part(report: Report, windows: torch.Tensor, args, shape: Shape, device: torch.device, deadline: float,
                   save) -> None:
    """Accuracy, throughput and memory of TAPNext++ on ``windows``; fills ``report.tapnextpp``."""
    part = report.tapnextpp
    resolution = 32 if args.tiny else args.tapnextpp_resolution
    part.update(resolution=resolution, accuracy=[], cases=[], memory_model={})
    ours, official, why_not = tapnextpp_networks(args.tapnet, args.tiny)
    if why_not:
        report.skipped.append(why_not)
    queries_np = grid_points(shape.grid, *shape.resolution)
    queries = torch.from_numpy(queries_np).to(device)
    if official is not None:  # the official threshold both ways: half the point-frames visible
        network, wrapper_class, centre_visibility = official
        network.to(device)
        first_window = windows[0].round().clamp(0, 255).byte().flip(1).permute(0, 2, 3, 1).cpu().numpy()  # T H W BGR
        centre_visibility(network, wrapper_class(network, device, input_resolution=resolution), first_window,
                          queries_np)
        ours.load_state_dict(network.state_dict(), strict=True)
    ours = ours.to(device)
    precisions = args.precisions.split(",")
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "tf32": None}

    def predictor(precision: str) -> TAPNextPPPredictor:
        return TAPNextPPPredictor(ours, resolution, dtype=dtypes[precision])

    results = {}
    with torch.no_grad():
        for precision in precisions:
            with tensor_float32(precision):
                results[("ours", precision)] = predictor(precision)(windows, queries.expand(len(windows), -1, -1))
        if official is not None:
            with tensor_float32("fp32"):
                results[("official", "fp32")] = official_tapnextpp_call(official, device, resolution, False)(
                    windows, queries_np)
            if device.type == "cuda":
                results[("official", "fp16")] = official_tapnextpp_call(official, device, resolution, True)(
                    windows, queries_np)
            else:
                report.skipped.append("official TAPNext++ fp16 (its autocast is CUDA only)")
    pairs = [(("ours", "fp32"), ("official", "fp32"))] + [(("ours", p), ("ours", "fp32")) for p in precisions[1:]]
    pairs += [(("official", "fp16"), ("official", "fp32")), (("ours", "bf16"), ("official", "fp16"))]
    part["accuracy"] = [tapnextpp_deviation(*results[run], *results[against], " ".join(run), " ".join(against))
                        for run, against in pairs if run in results and against in results]
    for row in part["accuracy"][:1]:
        if row["against"] == "official fp32":
            row["within_budget"] = row["within"] >= TAPNEXTPP_SHARE and row["visibility_agreement"] >= TAPNEXTPP_SHARE
    print(json.dumps(part["accuracy"], indent=1), flush=True)
    save()

    official_batches = {int(b) for b in args.official_batches.split(",")}
    for precision in precisions:
        for batch in [int(b) for b in args.batches.split(",")]:
            if time.monotonic() > deadline:
                report.skipped.append(f"TAPNext++ {precision} batch {batch} (time budget)")
                continue
            case = Case(precision, "eager", batch, batch * shape.frames * shape.points)
            video = windows[torch.arange(batch, device=device) % len(windows)]
            run = predictor(precision)
            with torch.no_grad(), tensor_float32(precision):
                ours_call = lambda: run(video, queries.expand(batch, -1, -1))  # noqa: E731
                try:
                    _, case.ours_peak_bytes = peak_bytes(ours_call, device)
                except Exception as error:
                    traceback.print_exc()
                    case.note = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
                    part["cases"].append(case)
                    if is_out_of_memory(error):
                        break
                    continue
                runs = {"ours": ours_call}
                if official is not None and batch in official_batches and precision in ("fp32", "bf16"):
                    # the official's own precision beside ours: fp32, or its float16 autocast beside our bf16
                    call = official_tapnextpp_call(official, device, resolution, precision == "bf16")
                    runs["official"] = lambda: call(video, queries_np)
                for name, took in time_interleaved(runs, device, args.repeats, args.warmup).items():
                    if isinstance(took, float):
                        setattr(case, f"{name}_s", took)
                    else:
                        case.note += f"{name}: {took} "
            del run, video
            release(device)
            part["cases"].append(case)
            print(asdict(case), flush=True)
            save()

    rows = [{"batch": c.batch, "measured_bytes": c.ours_peak_bytes,
             "model_bytes": tapnextpp_predictor.forward_memory_bytes(c.batch, shape.frames, shape.points, resolution)}
            for c in part["cases"] if c.precision == "fp32" and c.ours_peak_bytes]
    part["memory_model"] = {"by_batch": rows}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        part["memory_model"].update(free_bytes=free, total_bytes=total, chosen_batch=(
            tapnextpp_predictor.batch_size_for_memory(free, shape.frames, shape.points, max_batch=64,
                                                      resolution=resolution, input_size=shape.resolution)))


def window_flops(shapes: dict[str, Shape]) -> list[dict]:
    """FLOPs of one window of each tracker (matrix products and convolutions, as ``FlopCounterMode`` counts
    them), on the meta device: exact shapes, no arithmetic."""
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    for label, shape in shapes.items():
        for tracker, resolution in (("CoTracker3 offline", None), ("TAPNext++ 256", 256), ("TAPNext++ 512", 512)):
            with torch.device("meta"), FlopCounterMode(display=False) as counter:
                video = torch.zeros(1, shape.frames, 3, *shape.resolution)
                if resolution is None:
                    CoTracker3Predictor(CoTracker3Offline())(video, grid_size=shape.grid)
                else:
                    points = torch.zeros(1, shape.points, 2)
                    TAPNextPPPredictor(TAPNext(), resolution)(video, points)
            rows.append({"shape": label, "tracker": tracker, "frames": shape.frames, "points": shape.points,
                         "input": list(shape.resolution), "tflops": counter.get_total_flops() / 1e12})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for tracker_gpu.json and tracker_gpu.md")
    parser.add_argument("--tiny", action="store_true", help="dry run: 2 frames at 64x96, grid 3, 2 clips, batches 1,2, one thread, no compile")
    parser.add_argument("--batches", default="1,4,16,32,64,128,256", help="ours: windows per call, until out of memory")
    parser.add_argument("--official-batches", default="1,4,16,32", help="batches the official runs (a call per window)")
    parser.add_argument("--precisions", default="fp32,bf16,tf32", help="fp32 first; tf32: CUDA only")
    parser.add_argument("--modes", default="eager,cudagraph,compile", help="eager, cudagraph (CUDA only), compile")
    parser.add_argument("--compile-batches", default="32", help="torch.compile compiles per shape: only these batches")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case (the median is kept)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed calls per case besides the memory-measuring one")
    parser.add_argument("--budget-s", type=float, default=300, help="start no case after this many seconds")
    parser.add_argument("--compile-min-s", type=float, default=150,
                        help="start a torch.compile case only with this much of the budget left (compiling is slow)")
    parser.add_argument("--official", type=Path, default=OFFICIAL_DIR, help="co-tracker checkout")
    parser.add_argument("--tapnet", type=Path, default=OFFICIAL_DIR.parent / "tapnet", help="tapnet checkout")
    parser.add_argument("--trackers", default="cotracker3,tapnextpp", help="which trackers to time")
    parser.add_argument("--tapnextpp-resolution", type=int, default=256, help="256 or 512 (its two checkpoints)")
    parser.add_argument("--tapnextpp-budget-s", type=float, default=200,
                        help="start no TAPNext++ timing after this many seconds of its part")
    parser.add_argument("--commit", default=None, help="the commit measured (default: git rev-parse, where git is)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--videos", type=Path, help="folder of the clips (default: clips.VIDEO_DIRS)")
    args = parser.parse_args()
    shape = TINY if args.tiny else FULL
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    clips = CLIPS[:2] if args.tiny else CLIPS
    if args.tiny:  # shapes this small gain nothing from more threads, and lose much on a shared machine
        args.batches, args.official_batches, args.repeats = "1,2", "1", 1
        torch.set_num_threads(1)
    reasons = {"cudagraph": "needs CUDA" if device.type != "cuda" else None,
               "tf32": "needs CUDA" if device.type != "cuda" else None,
               "compile": "compiling takes minutes, not for a dry run" if args.tiny else None}
    dropped = {name: reasons[name] for name in [*args.modes.split(","), *args.precisions.split(",")] if reasons.get(name)}
    args.modes = ",".join(mode for mode in args.modes.split(",") if mode not in dropped)
    precisions = [precision for precision in args.precisions.split(",") if precision not in dropped]
    if precisions[0] != "fp32":
        parser.error("--precisions must start with fp32, the reference for the others")
    args.precisions = ",".join(precisions)
    started = time.monotonic()
    deadline = started + args.budget_s

    report = Report(device=device_name(device), torch=torch.__version__, commit=args.commit or git_commit(),
                    shape={"frames": shape.frames, "grid": shape.grid, "resolution": list(shape.resolution)},
                    started=f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
                    skipped=[f"{name} ({reason})" for name, reason in dropped.items()])
    trackers = args.trackers.split(",")
    windows = torch.from_numpy(clip_windows(find_videos(args.videos), shape.frames, shape.resolution, clips)).to(device).float()

    def save() -> None:
        """Write both files now, so that a run stopped from outside still leaves its figures."""
        memory_model(report, shape, device)
        report.seconds = time.monotonic() - started
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "tracker_gpu.json").write_text(json.dumps(asdict(report), indent=1))
        (args.out / "tracker_gpu.md").write_text(markdown(report))

    report.flops = window_flops({"this run": shape, "the pipeline's": FULL})
    if "cotracker3" in trackers:
        state = random_state("offline", resolution=shape.resolution)
        official = official_predictor(state, "offline", shape.resolution, path=args.official).to(device)
        network = CoTracker3Offline(model_resolution=shape.resolution)
        network.load_state_dict(state, strict=True)
        network = network.eval().to(device)
        accuracy(report, network, official, windows, precisions, shape, device)
        print(json.dumps(report.accuracy, indent=1), flush=True)
        save()
        throughput(report, network, official, windows, args, shape, device, deadline, save)
        save()
        del network, official
        release(device)
    if "tapnextpp" in trackers:
        tapnextpp_part(report, windows, args, shape, device, time.monotonic() + args.tapnextpp_budget_s, save)
        save()
    print(markdown(report))


if __name__ == "__main__":
    main()
