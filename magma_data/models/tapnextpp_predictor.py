"""TAPNext++ point tracking: checkpoint finding and checking, the predictor, and the pipeline's tracker.

The ``tapnextpp`` entry of the tracker registry (``magma_data.stages.track.TAPNextPP``) finds,
checks and loads the weights with the functions here and runs :class:`TAPNextPPPointTracker`.

``load_tapnextpp`` builds our own TAPNext network (``magma_data.models.tapnext``) from a released
checkpoint, unchanged, and wraps it in :class:`TAPNextPPPredictor`, which gives what the official
``TAPNextPP.track_frame`` loop gives frame by frame (google-deepmind/tapnet,
``tapnet/tapnextpp/votsp2026/model.py``): frames resized to the model resolution (bilinear, no
antialias) and scaled to [-1, 1], query points scaled to the network's 256 square, positions
scaled back, visible where the visibility logit is above 0. Unlike the loop, a batch of videos
and all the frames of a window go through one forward.

Checkpoints (Apache-2.0, as the code): ``tapnextpp_ckpt.pt`` for 256x256 input and
``tapnextpp_512.ckpt`` for 512x512 (docs/tapnextpp.md §Checkpoints).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from magma_data.models.point_tracking import DEFAULT_BATCH_SIZE, MAX_WINDOWS_PER_CALL, grid_points
from magma_data.models.tapnext import IMAGE_SIZE, PATCH_SIZE, TAPNext

CHECKPOINT_ENV = "MAGMA_TAPNEXTPP_CHECKPOINT"
#: the released checkpoint for each input resolution, and where the official code downloads it from
CHECKPOINTS = {
    256: ("tapnextpp_ckpt.pt", "https://storage.googleapis.com/dm-tapnet/tapnextpp/tapnextpp_ckpt.pt"),
    512: ("tapnextpp_512.ckpt", "https://storage.googleapis.com/gresearch/tapnextpp/tapnextpp_512.ckpt"),
}
DEFAULT_RESOLUTION = 256
#: prefix of the keys in a training (Lightning) checkpoint's state_dict, which the official loader strips
STATE_PREFIX = "tapnext."


def check_resolution(resolution: int) -> None:
    """The input resolution must be a positive multiple of the patch size (the checkpoints': 256 and 512)."""
    if resolution <= 0 or resolution % PATCH_SIZE:
        raise ValueError(f"TAPNext++ takes a square input whose side is a multiple of {PATCH_SIZE} (its checkpoints "
                         f"were trained at {' and '.join(map(str, CHECKPOINTS))}), not {resolution}")


def _cache_dir() -> Path:
    """Where the official tracker caches its checkpoint: ``~/.cache/tapnextpp`` (``$XDG_CACHE_HOME`` honoured)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tapnextpp"


def _where_to_get(resolution: int) -> str:
    name, url = CHECKPOINTS.get(resolution, CHECKPOINTS[DEFAULT_RESOLUTION])
    return (f"download {name} ({url}) and put it at {_cache_dir() / name}, or pass its path (--checkpoint) or set "
            f"{CHECKPOINT_ENV}")


def checkpoint_missing(resolution: int = DEFAULT_RESOLUTION) -> str:
    """What to tell the user when no checkpoint is named and the cache has none."""
    return f"no TAPNext++ checkpoint found; {_where_to_get(resolution)}"


def find_checkpoint(explicit: str | os.PathLike | None, resolution: int = DEFAULT_RESOLUTION) -> Path | None:
    """The checkpoint to load: ``explicit``, else ``$MAGMA_TAPNEXTPP_CHECKPOINT``, else the resolution's
    released file in the cache (``~/.cache/tapnextpp/``).

    A path the user named that does not exist is an error; ``None`` means nothing was named and the
    cache has no file.
    """
    for named, origin in ((explicit, "checkpoint path"), (os.environ.get(CHECKPOINT_ENV), f"${CHECKPOINT_ENV}")):
        if named:
            path = Path(named).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"TAPNext++ {origin} {path} does not exist; {_where_to_get(resolution)}")
            return path
    if resolution not in CHECKPOINTS:
        return None
    cached = _cache_dir() / CHECKPOINTS[resolution][0]
    return cached if cached.is_file() else None


class UnusableWeights(ValueError):
    """A file that is not TAPNext++ weights: damaged, not a checkpoint, or another network's."""


def _state_dict(checkpoint: object) -> object:
    """What the official loader takes from a checkpoint: its ``state_dict`` (or the whole), keys without
    ``tapnext.``."""
    if isinstance(checkpoint, dict):
        state = checkpoint.get("state_dict", checkpoint)
        if isinstance(state, dict):
            return {key.removeprefix(STATE_PREFIX) if isinstance(key, str) else key: value
                    for key, value in state.items()}
    return checkpoint


def read_weights(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, checked tensor by tensor against the network's names and shapes.

    Accepts what the official ``TAPNextPP.from_checkpoint`` accepts: a plain state_dict or a
    training checkpoint ``{"state_dict": ...}``, keys with or without the ``tapnext.`` prefix.
    ``mmap``: map the file instead of reading it (the driver's check reads only the names and shapes).
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as error:
        if mmap and "mmap" in str(error):  # an old (non-zip) file cannot be mapped: read it
            return read_weights(path, mmap=False)
        raise _unreadable(path, error) from None
    except Exception as error:
        raise _unreadable(path, error) from None
    state = _state_dict(checkpoint)
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise UnusableWeights(f"{path} holds no state dict of tensors; {_where_to_get(DEFAULT_RESOLUTION)}")
    with torch.device("meta"):  # names and shapes, no memory
        wanted = {name: tensor.shape for name, tensor in TAPNext().state_dict().items()}
    missing = sorted(wanted.keys() - state.keys())
    unexpected = sorted(state.keys() - wanted.keys())
    reshaped = sorted(name for name in wanted.keys() & state.keys() if state[name].shape != wanted[name])
    if missing or unexpected or reshaped:
        found = [f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                 for what, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
                 if names]
        hint = " (it looks like CoTracker3's: --tracker cotracker3)" if "time_emb" in state else ""
        raise UnusableWeights(f"{path} is not a TAPNext++ checkpoint{hint}: tensors {'; '.join(found)}; "
                              f"{_where_to_get(DEFAULT_RESOLUTION)}")
    return state


def _unreadable(path: Path, error: Exception) -> UnusableWeights:
    reason = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
    return UnusableWeights(f"{path} cannot be read as a PyTorch checkpoint ({type(error).__name__}: {reason}); it is "
                           f"damaged or not a checkpoint: {_where_to_get(DEFAULT_RESOLUTION)}")


def load_tapnextpp(
    path: str | os.PathLike | None,
    resolution: int = DEFAULT_RESOLUTION,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> TAPNextPPPredictor:
    """The released network from ``path`` (None: searched as :func:`find_checkpoint` does), loaded strictly,
    in a predictor that resizes frames to ``resolution`` (256 for ``tapnextpp_ckpt.pt``, 512 for
    ``tapnextpp_512.ckpt``).

    Call the result as ``tracks, visible = predictor(video, queries)``: ``video`` [B, T, 3, H, W]
    float RGB in 0..255, ``queries`` [B, N, 2] (x, y) pixels on frame 0 -> tracks [B, T, N, 2] (x, y)
    in the video's pixels and visibility [B, T, N] bool. Weights stay fp32; ``dtype`` bfloat16 (or
    float16, the official demo's) runs the network under ``torch.autocast``. ``device`` None: CUDA
    when available.
    """
    check_resolution(resolution)
    found = find_checkpoint(path, resolution)
    if found is None:
        raise FileNotFoundError(checkpoint_missing(resolution))
    with torch.device("meta"):  # no memory, no initialisation: every tensor comes from the file
        model = TAPNext()
    model.load_state_dict(read_weights(found, mmap=True), strict=True, assign=True)
    model.float()  # the official loader copies into fp32 parameters, whatever the file holds
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return TAPNextPPPredictor(model, resolution, dtype=dtype).to(device)


class TAPNextPPPredictor(nn.Module):
    """Tracks query points given on frame 0 through videos of any size; the network is ``.model``.

    The official loop's conversions: frames resized to ``resolution`` x ``resolution`` (bilinear,
    ``align_corners=False``) and mapped to [-1, 1] by /127.5 - 1; a point (x, y) in input pixels is
    (x * 256 / W, y * 256 / H) in the network's square and back; visible where the logit is > 0.
    """

    def __init__(self, model: TAPNext, resolution: int = DEFAULT_RESOLUTION, dtype: torch.dtype | None = None):
        super().__init__()
        check_resolution(resolution)
        self.model = model.eval()
        self.resolution = resolution
        self.autocast_dtype = dtype if dtype not in (None, torch.float32) else None

    def _precision(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    @torch.no_grad()
    def forward(self, video: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _, H, W = video.shape
        size = self.resolution
        frames = F.interpolate(video.flatten(0, 1).float(), size=(size, size), mode="bilinear", align_corners=False)
        frames = frames.div_(127.5).sub_(1.0).unflatten(0, (B, T)).permute(0, 1, 3, 4, 2)  # B T S S 3
        to_model = torch.tensor([IMAGE_SIZE / W, IMAGE_SIZE / H], dtype=torch.float32, device=video.device)
        xy = queries.float() * to_model
        model_queries = torch.stack([torch.zeros_like(xy[..., 0]), xy[..., 1], xy[..., 0]], dim=-1)  # B N (t y x)
        with self._precision(video.device):
            tracks, _, visible_logits, _ = self.model(frames, model_queries)
        to_input = torch.tensor([W / IMAGE_SIZE, H / IMAGE_SIZE], dtype=torch.float32, device=video.device)
        return tracks.float().flip(-1) * to_input, visible_logits[..., 0] > 0


#: Peak memory of an fp32 forward per token (a patch or a point on one frame): the released width's
#: activations inside one TRecViT block. Measured on CPU by ``benchmarks/tracker_memory.py --tracker
#: tapnextpp``: 133-136 KiB at 64 and 128 input, 174 KiB at 256 (a frame's attention scores grow with
#: its tokens squared there); the largest is kept. ``tracker_gpu.py`` checks it on a card.
BYTES_PER_TOKEN = 176 * 1024


def forward_memory_bytes(batch: int, frames: int, points: int, resolution: int = DEFAULT_RESOLUTION) -> int:
    """Peak memory of one fp32 forward over ``batch`` windows beyond its input (bf16 autocast needs less)."""
    tokens = (resolution // PATCH_SIZE) ** 2 + points
    return batch * frames * tokens * BYTES_PER_TOKEN


def batch_size_for_memory(free_bytes: int, frames: int, points: int, *, max_batch: int,
                          resolution: int = DEFAULT_RESOLUTION, input_size: tuple[int, int] | None = None,
                          headroom: float = 0.8) -> int:
    """The most windows per call whose memory fits in ``headroom`` of ``free_bytes``, at least 1 and at most
    ``max_batch``; the video as the predictor gets it (float, ``input_size``) and resized counts too."""
    height, width = input_size or (resolution, resolution)
    video = frames * 3 * 4 * (height * width + resolution**2)

    def needed(batch: int) -> int:
        return forward_memory_bytes(batch, frames, points, resolution) + batch * video

    return max((b for b in range(1, max_batch + 1) if needed(b) <= headroom * free_bytes), default=1)


class TAPNextPPPointTracker:
    """The pipeline's TAPNext++ tracker: the grid on frame 0 of every window, a batch of windows per forward.

    The model is loaded once. ``precision="bf16"`` runs under bfloat16 autocast (the official demo runs
    float16 autocast on GPU). A CUDA out-of-memory error propagates: the caller halves the batch and retries.
    """

    name = "tapnextpp"

    def __init__(self, checkpoint: str | os.PathLike, resolution: int = DEFAULT_RESOLUTION, grid_size: int = 15,
                 device: str | None = None, precision: str = "fp32"):
        dtypes = {"fp32": None, "bf16": torch.bfloat16}
        if precision not in dtypes:
            raise ValueError(f"unknown precision {precision!r}; use 'fp32' or 'bf16'")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.grid_size = grid_size
        self.predictor = load_tapnextpp(checkpoint, resolution, device=self.device, dtype=dtypes[precision])
        self._batch_sizes: dict[tuple[int, int, int], int] = {}

    def batch_size(self, frames: int, height: int, width: int) -> int:
        """On a GPU, the most windows of this shape its free memory holds (measured once per shape, after
        the model is loaded); elsewhere ``DEFAULT_BATCH_SIZE``."""
        if self.device.type != "cuda":
            return DEFAULT_BATCH_SIZE
        shape = (frames, height, width)
        if shape not in self._batch_sizes:
            free, _ = torch.cuda.mem_get_info(self.device)
            self._batch_sizes[shape] = batch_size_for_memory(
                free, frames, self.grid_size**2, max_batch=MAX_WINDOWS_PER_CALL,
                resolution=self.predictor.resolution, input_size=(height, width))
        return self._batch_sizes[shape]

    def track(self, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """video uint8 [B, T, 3, H, W] RGB -> tracks float32 [B, T, N, 2] (x, y) in input pixels and visibility
        bool [B, T, N]."""
        batch, _, _, height, width = video.shape
        frames = torch.from_numpy(np.ascontiguousarray(video)).to(self.device).float()
        grid = torch.from_numpy(grid_points(self.grid_size, height, width)).to(self.device)
        tracks, visible = self.predictor(frames, grid.expand(batch, -1, -1))
        return tracks.cpu().numpy().astype(np.float32), visible.cpu().numpy()
