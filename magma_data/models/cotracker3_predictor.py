"""CoTracker3 point tracking: checkpoint loading, the predictor, and the pipeline's tracker.

The ``cotracker3`` entry of the tracker registry (``magma_data.stages.track.CoTracker3``) finds,
checks and loads the weights with the functions here and runs :class:`CoTracker3PointTracker`.

``load_cotracker3`` builds our own CoTracker3 network (``magma_data.models.cotracker3``) from the
released checkpoints and wraps it in :class:`CoTracker3Predictor`, which has the reference
predictor's semantics: resize to the model resolution (384x512) and back, grid or user queries,
the 6x6 support grid for user queries and masked grids, 6 refinement iterations, optional
backward tracking, query pinning, and the variant's visibility rule. Unlike the reference, a
batch of videos goes through one forward.

Checkpoints (CC-BY-NC-4.0) are on the Hugging Face Hub, repository ``facebook/cotracker3``:
``scaled_offline.pth`` and ``scaled_online.pth`` (docs/cotracker3.md §Checkpoints, §Predictor).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from magma_data.models.cotracker3 import CoTracker3Offline, CoTracker3Online, batch_size_for_memory
from magma_data.models.point_tracking import DEFAULT_BATCH_SIZE, MAX_WINDOWS_PER_CALL, grid_points

CHECKPOINT_ENV = "MAGMA_COTRACKER3_CHECKPOINT"
HUB_REPO = "facebook/cotracker3"
CHECKPOINT_FILES = {"offline": "scaled_offline.pth", "online": "scaled_online.pth"}
MODELS: dict[str, type[CoTracker3Offline | CoTracker3Online]] = {
    "offline": CoTracker3Offline,
    "online": CoTracker3Online,
}
#: frames of the ``time_emb`` buffer in each variant's checkpoint
WINDOW_LEN = {"offline": 60, "online": 16}

ITERS = 6
SUPPORT_GRID_SIZE = 6
DENSE_GRID_SIZE = 80


def _check_variant(variant: str) -> None:
    if variant not in MODELS:
        raise ValueError(f"unknown CoTracker3 variant {variant!r}; use 'offline' or 'online'")


def _hub_checkpoint(variant: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINT_FILES[variant]


def _where_to_get(variant: str) -> str:
    name = CHECKPOINT_FILES[variant]
    return (
        f"download {name} from the Hugging Face Hub "
        f"(https://huggingface.co/{HUB_REPO}/resolve/main/{name}, e.g. "
        f"`huggingface-cli download {HUB_REPO} {name}`) and put it at {_hub_checkpoint(variant)}, "
        f"or pass its path (--checkpoint) or set {CHECKPOINT_ENV}"
    )


def checkpoint_missing(variant: str) -> str:
    """What to tell the user when no checkpoint is named and the hub cache has none."""
    return f"no CoTracker3 checkpoint found; {_where_to_get(variant)}"


def find_checkpoint(explicit: str | os.PathLike | None, variant: str = "offline") -> Path | None:
    """The checkpoint to load: ``explicit``, else ``$MAGMA_COTRACKER3_CHECKPOINT``, else the torch
    hub cache (``torch.hub.get_dir()/checkpoints/scaled_<variant>.pth``, which follows TORCH_HOME).

    A path the user named (argument or environment variable) that does not exist is an error, not
    a silent fall-through; ``None`` means nothing was named and the hub cache has no file.
    """
    _check_variant(variant)
    for named, origin in ((explicit, "checkpoint path"), (os.environ.get(CHECKPOINT_ENV), f"${CHECKPOINT_ENV}")):
        if named:
            path = Path(named).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"CoTracker3 {origin} {path} does not exist; {_where_to_get(variant)}")
            return path
    cached = _hub_checkpoint(variant)
    return cached if cached.is_file() else None


class UnusableWeights(ValueError):
    """A file that is not the weights of the CoTracker3 variant asked for: damaged, not a checkpoint,
    or another network's."""


def read_weights(path: Path, variant: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (a plain state_dict or a training checkpoint ``{"model": ...}``; tensors
    only), checked tensor by tensor against the ``variant`` network's names and shapes."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
        raise UnusableWeights(f"{path} cannot be read as a PyTorch checkpoint ({type(error).__name__}: {reason}); it "
                              f"is damaged or not a checkpoint: {_where_to_get(variant)}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise UnusableWeights(f"{path} holds no state dict of tensors; {_where_to_get(variant)}")
    with torch.device("meta"):  # names and shapes, no memory
        wanted = {name: tensor.shape for name, tensor in MODELS[variant]().state_dict().items()}
    time_emb = state.get("time_emb")
    if time_emb is not None and time_emb.ndim == 3 and time_emb.shape[1] != WINDOW_LEN[variant]:
        other = next(name for name, frames in WINDOW_LEN.items() if name != variant)
        raise UnusableWeights(
            f"{path} has a {time_emb.shape[1]}-frame time_emb but the {variant} model needs "
            f"{WINDOW_LEN[variant]} (offline checkpoints have 60, online 16): it is the {other} variant's; pass "
            f"--set track.variant={other} to use it, or {_where_to_get(variant)}"
        )
    missing = sorted(wanted.keys() - state.keys())
    unexpected = sorted(state.keys() - wanted.keys())
    reshaped = sorted(name for name in wanted.keys() & state.keys() if state[name].shape != wanted[name])
    if missing or unexpected or reshaped:
        found = [f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                 for what, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
                 if names]
        raise UnusableWeights(f"{path} is not a CoTracker3 {variant} checkpoint: tensors {'; '.join(found)}; "
                              f"{_where_to_get(variant)}")
    return state


def load_cotracker3(
    checkpoint_path: str | os.PathLike | None,
    variant: str = "offline",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> CoTracker3Predictor:
    """Build the ``variant`` network, load the checkpoint strictly and wrap it in a predictor.

    ``checkpoint_path`` None searches as :func:`find_checkpoint` does. Weights stay fp32;
    ``dtype`` bfloat16 or float16 runs the forward under ``torch.autocast`` (coordinates need fp32).
    ``device`` None picks CUDA when available.
    """
    _check_variant(variant)
    path = find_checkpoint(checkpoint_path, variant)
    if path is None:
        raise FileNotFoundError(checkpoint_missing(variant))
    model = MODELS[variant]()
    model.load_state_dict(read_weights(path, variant), strict=True)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return CoTracker3Predictor(model, dtype=dtype).to(device)


def _query_grid(size: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """The pipeline's query grid (``grid_points``) at the model resolution, [1, size^2, 2] (x, y)."""
    return torch.from_numpy(grid_points(size, height, width)).to(device)[None]


def _visible_offline(vis: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
    return vis > 0.9


def _visible_online(vis: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
    return vis * conf > 0.6


class CoTracker3Predictor(nn.Module):
    """Tracks points in videos of any size with a CoTracker3 network; the model is ``.model``.

    Call it as ``tracks, visibility = predictor(video, queries=None, segm_mask=None, grid_size=0,
    grid_query_frame=0, backward_tracking=False)`` with ``video`` [B, T, 3, H, W] in 0..255:

    - ``queries`` [B, N, 3] as (t, x, y) in input pixels: those points, co-tracked with a 6x6
      support grid on frame 0 (dropped from the output) because points inform each other;
    - else ``grid_size`` > 0: a grid on frame ``grid_query_frame`` (no support grid), restricted to
      ``segm_mask`` [B, 1, H, W] of batch element 0 when given (then with the support grid);
    - else dense tracks: every ``W // 80``-th pixel, in several passes.

    Returns tracks [B, T, N, 2] (x, y) in input pixels and visibility [B, T, N] bool: offline
    ``vis > 0.9``, online ``vis * conf > 0.6`` (the reference predictors' rules). Each query is
    pinned to its own position, visible, on its query frame. ``backward_tracking`` fills the
    frames before each query's frame from a pass over the reversed video.
    """

    def __init__(self, model: CoTracker3Offline | CoTracker3Online, dtype: torch.dtype | None = None):
        super().__init__()
        self.model = model.eval()
        self.variant = "online" if isinstance(model, CoTracker3Online) else "offline"
        self.visible: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = (
            _visible_online if self.variant == "online" else _visible_offline
        )
        self.autocast_dtype = dtype if dtype not in (None, torch.float32) else None
        self.interp_shape = model.model_resolution

    def _precision(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def forward(
        self,
        video: torch.Tensor,
        queries: torch.Tensor | None = None,
        segm_mask: torch.Tensor | None = None,
        grid_size: int = 0,
        grid_query_frame: int = 0,
        backward_tracking: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        video = video.float()
        if queries is None and grid_size == 0:
            return self._dense_tracks(video, grid_query_frame, backward_tracking)
        return self._sparse_tracks(
            video,
            queries,
            segm_mask,
            grid_size,
            add_support_grid=grid_size == 0 or segm_mask is not None,
            grid_query_frame=grid_query_frame,
            backward_tracking=backward_tracking,
        )

    def _dense_tracks(
        self, video: torch.Tensor, grid_query_frame: int, backward_tracking: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every ``step``-th input pixel, tracked in step^2 shifted passes of one lattice each."""
        B, _, _, H, W = video.shape
        step = W // DENSE_GRID_SIZE
        ys, xs = torch.meshgrid(
            torch.arange(H // step, device=video.device) * step,
            torch.arange(W // step, device=video.device) * step,
            indexing="ij",
        )
        lattice = torch.stack([xs, ys], dim=-1).reshape(1, -1, 2).float()  # 1 N 2 as (x, y)
        frame = torch.full_like(lattice[..., :1], float(grid_query_frame))
        results = [
            self._sparse_tracks(
                video,
                torch.cat([frame, lattice + lattice.new_tensor([ox, oy])], dim=-1).expand(B, -1, -1),
                backward_tracking=backward_tracking,
            )
            for oy in range(step)
            for ox in range(step)
        ]
        return torch.cat([r[0] for r in results], dim=2), torch.cat([r[1] for r in results], dim=2)

    def _sparse_tracks(
        self,
        video: torch.Tensor,
        queries: torch.Tensor | None,
        segm_mask: torch.Tensor | None = None,
        grid_size: int = 0,
        add_support_grid: bool = False,
        grid_query_frame: int = 0,
        backward_tracking: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, C, H, W = video.shape
        h, w = self.interp_shape
        video = F.interpolate(video.flatten(0, 1), (h, w), mode="bilinear", align_corners=True)
        video = video.unflatten(0, (B, T))  # B T 3 h w
        to_model = video.new_tensor([(w - 1) / (W - 1), (h - 1) / (H - 1)])

        if queries is not None:
            queries = torch.cat([queries[..., :1], queries[..., 1:] * to_model], dim=-1).float()
        else:
            grid = _query_grid(grid_size, h, w, video.device)  # 1 N 2
            if segm_mask is not None:
                mask = F.interpolate(segm_mask.float(), (h, w), mode="nearest")[0, 0]
                grid_cpu = grid[0].round().long().cpu()
                grid = grid[:, mask.cpu()[grid_cpu[:, 1], grid_cpu[:, 0]] != 0]
            queries = F.pad(grid, (1, 0), value=float(grid_query_frame)).expand(B, -1, -1)
        num_queries = queries.shape[1]
        if add_support_grid:
            support = F.pad(_query_grid(SUPPORT_GRID_SIZE, h, w, video.device), (1, 0))
            queries = torch.cat([queries, support.expand(B, -1, -1)], dim=1)

        tracks, vis, conf = self._run_model(video, queries)
        if backward_tracking:
            back_queries = torch.cat([T - 1 - queries[..., :1], queries[..., 1:]], dim=-1)
            back_tracks, back_vis, back_conf = (x.flip(1) for x in self._run_model(video.flip(1), back_queries))
            before = torch.arange(T, device=video.device)[None, :, None] < queries[:, None, :, 0]  # B T N
            tracks = torch.where(before[..., None], back_tracks, tracks)
            vis = torch.where(before, back_vis, vis)
            conf = torch.where(before, back_conf, conf)

        queries = queries[:, :num_queries]
        tracks, visible = tracks[:, :, :num_queries], self.visible(vis, conf)[:, :, :num_queries]
        # A query is where the user put it, and visible there (co-tracker issue #28).
        batch = torch.arange(B, device=video.device)[:, None]
        points = torch.arange(num_queries, device=video.device)[None]
        query_frames = queries[..., 0].long()
        tracks[batch, query_frames, points] = queries[..., 1:]
        visible[batch, query_frames, points] = True
        return tracks * video.new_tensor([(W - 1) / (w - 1), (H - 1) / (h - 1)]), visible

    def _run_model(self, video: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with self._precision(video.device):
            tracks, vis, conf = self.model(video, queries, iters=ITERS)
        return tracks.float(), vis.float(), conf.float()


class CoTracker3PointTracker:
    """The pipeline's CoTracker3 tracker: a grid on frame 0 of every window, one forward per batch.

    The model is loaded once. ``precision="bf16"`` runs under bfloat16 autocast. A CUDA
    out-of-memory error propagates: the caller halves the batch and retries.
    """

    name = "cotracker3"

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        variant: str = "offline",
        grid_size: int = 15,
        device: str | None = None,
        precision: str = "fp32",
    ):
        dtypes = {"fp32": None, "bf16": torch.bfloat16}
        if precision not in dtypes:
            raise ValueError(f"unknown precision {precision!r}; use 'fp32' or 'bf16'")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.grid_size = grid_size
        self.predictor = load_cotracker3(checkpoint, variant, device=self.device, dtype=dtypes[precision])
        self._batch_sizes: dict[tuple[int, int, int], int] = {}

    def batch_size(self, frames: int, height: int, width: int) -> int:
        """On a GPU, the most windows of this shape its free memory holds (``batch_size_for_memory``,
        measured per shape once, after the model is loaded); elsewhere ``DEFAULT_BATCH_SIZE``."""
        if self.device.type != "cuda":
            return DEFAULT_BATCH_SIZE
        shape = (frames, height, width)
        if shape not in self._batch_sizes:
            free, _ = torch.cuda.mem_get_info(self.device)
            self._batch_sizes[shape] = batch_size_for_memory(
                free, frames, self.grid_size**2, max_batch=MAX_WINDOWS_PER_CALL,
                resolution=tuple(self.predictor.interp_shape), input_size=(height, width),
            )
        return self._batch_sizes[shape]

    def track(self, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """video uint8 [B, T, 3, H, W] RGB -> tracks float32 [B, T, N, 2] (x, y) input pixels, visibility bool [B, T, N]."""
        frames = torch.from_numpy(np.ascontiguousarray(video)).to(self.device).float()
        tracks, visible = self.predictor(frames, grid_size=self.grid_size, grid_query_frame=0)
        return tracks.cpu().numpy().astype(np.float32), visible.cpu().numpy()

