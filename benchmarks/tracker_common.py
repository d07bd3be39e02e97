"""What the CoTracker3 benchmarks share: the checkout's code, installed or not, the official code,
seeded random weights, real clip windows and interleaved timing.

Only torch, numpy and OpenCV are imported here, so the benchmarks that use this module also run
on a GPU machine's own Python (no Ray, decord or PyAV there). The official code is a checkout of
facebookresearch/co-tracker kept where git ignores it (``.official/co-tracker`` by default) and never
committed; the clips are found as ``clips.find_videos`` says (``--videos``).
"""

from __future__ import annotations

import importlib.util
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_DIR = REPO / ".official" / "co-tracker"
CLIPS = ("apple.mp4", "bear.mp4", "paragliding.mp4", "cat.mp4")
#: folders the installed distribution maps into ``magma_data`` (pyproject's package-dir)
MAPPED_PACKAGES = {"magma_data.stages": "stages"}


def use_checkout() -> None:
    """Import this checkout's code, installed or not: on a machine where only the repository
    travels, ``magma_data.stages`` is mapped to ``stages/`` here as an install would map it."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    for name, folder in MAPPED_PACKAGES.items():
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            spec = importlib.util.spec_from_file_location(
                name, REPO / folder / "__init__.py", submodule_search_locations=[str(REPO / folder)]
            )
            sys.modules[name] = module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)


use_checkout()

from magma_data.models.cotracker3 import MODEL_RESOLUTION as RESOLUTION  # noqa: E402
from magma_data.models.cotracker3 import CoTracker3Offline, CoTracker3Online  # noqa: E402
from magma_data.models.cotracker3_predictor import ITERS, WINDOW_LEN  # noqa: E402
from magma_data.stages.track import TrackConfig  # noqa: E402

#: Magma's query grid: grid x grid points on each window's first frame
GRID_SIZE = TrackConfig().grid_size


def import_official(path: Path = OFFICIAL_DIR):
    """The official ``cotracker`` package from a checkout (importing it seeds torch's global RNG)."""
    if not (path / "cotracker" / "predictor.py").is_file():
        raise FileNotFoundError(
            f"no co-tracker checkout at {path}; clone https://github.com/facebookresearch/co-tracker "
            "there (it is git-ignored; never commit it)"
        )
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    import cotracker.predictor

    return cotracker


def random_state(variant: str = "offline", seed: int = 0, resolution: tuple[int, int] = RESOLUTION) -> dict:
    """Seeded random weights whose update heads are scaled up so that points move tens of pixels
    in 6 iterations (the init's near-zero heads would leave every track at its query)."""
    torch.manual_seed(seed)
    model = {"offline": CoTracker3Offline, "online": CoTracker3Online}[variant](model_resolution=resolution)
    state = model.state_dict()
    for name in ("updateformer.flow_head.weight", "updateformer.vis_conf_head.weight"):
        state[name] = torch.randn_like(state[name]) * 0.05
    return state


def official_predictor(state: dict, variant: str = "offline", resolution: tuple[int, int] = RESOLUTION,
                       path: Path = OFFICIAL_DIR) -> torch.nn.Module:
    """The reference ``CoTrackerPredictor`` with ``state`` loaded strictly, at ``resolution``."""
    cotracker = import_official(path)
    from cotracker.models.core.cotracker.cotracker3_offline import CoTrackerThreeOffline
    from cotracker.models.core.cotracker.cotracker3_online import CoTrackerThreeOnline

    network = {"offline": CoTrackerThreeOffline, "online": CoTrackerThreeOnline}[variant]
    predictor = cotracker.predictor.CoTrackerPredictor(
        checkpoint=None, offline=variant == "offline", window_len=WINDOW_LEN[variant]
    )
    # its builder fixes the resolution at 384x512; the dry run's tiny shape needs another
    predictor.model = network(stride=4, corr_radius=3, window_len=WINDOW_LEN[variant], model_resolution=resolution)
    predictor.model.load_state_dict(state, strict=True)
    predictor.interp_shape = resolution
    return predictor.eval()


def clip_windows(folder: Path, frames: int, size: tuple[int, int] = RESOLUTION, clips=CLIPS) -> np.ndarray:
    """The first ``frames`` frames of each clip, RGB, resized to ``size`` (H, W): uint8 [clips, T, 3, H, W]."""
    windows = []
    for name in clips:
        capture = cv2.VideoCapture(str(folder / name))
        window = []
        while len(window) < frames:
            ok, frame = capture.read()
            if not ok:
                raise ValueError(f"{folder / name} has fewer than {frames} frames")
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            window.append(cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA))
        capture.release()
        windows.append(np.stack(window).transpose(0, 3, 1, 2))
    return np.stack(windows)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def clock(device: torch.device) -> Callable[[], float]:
    """Wall time on a GPU; on a CPU the process's CPU time (all its threads), which load from other
    processes on a shared machine barely changes, where it can multiply wall time."""
    return time.perf_counter if device.type == "cuda" else time.process_time


def time_interleaved(runs: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int) -> dict:
    """Median seconds per call of each run (see :func:`clock`), or the error that stopped it.

    The runs take turns within every repeat, so what load remains falls on all of them alike.
    """
    now = clock(device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    errors: dict[str, str] = {}
    for i in range(warmup + repeats):
        for name, run in runs.items():
            if name in errors:
                continue
            try:
                synchronize(device)
                start = now()
                run()
                synchronize(device)
            except Exception as error:  # a failed case is a result to record, not a reason to stop
                traceback.print_exc()
                errors[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
                continue
            if i >= warmup:
                times[name].append(now() - start)
    return {name: errors.get(name) or sorted(t)[len(t) // 2] for name, t in times.items()}
