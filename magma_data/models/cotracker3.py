"""CoTracker3 (Karaev et al., 2024): joint point tracking by iterated 4D-correlation updates.

Our own implementation, weight-compatible with the released ``scaled_offline.pth`` and
``scaled_online.pth`` (their state_dicts load with ``strict=True``) and numerically equal to the
reference code in fp32. Unlike the reference, every tensor op here is batched, so many windows
go through one forward (the reference fails for batch > 1).

Positions inside the model are in feature pixels (model-resolution pixels / ``stride``), with
0 at the centre of the first pixel (``align_corners=True``); queries are ``(t, x, y)`` in
model-resolution pixels. Shape letters: B batch, T frames, N tracks, C channels, K = 49 samples
of a 7x7 neighbourhood. Upstream's network and conventions: docs/cotracker3.md (§Network,
§Coordinates, §Offline forward, §Online forward).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from magma_data.models.cotracker3_blocks import EfficientUpdateFormer, FeatureEncoder, Mlp


#: (H, W) the released models were trained at and the predictors resize video to
MODEL_RESOLUTION = (384, 512)
#: frames the encoder takes at once (the reference's ``fmaps_chunk_size``); bounds its memory
ENCODER_CHUNK_FRAMES = 200


def sincos_time_embedding(dim: int, length: int) -> torch.Tensor:
    """The fixed sin|cos table [1, length, dim] of the ``time_emb`` buffer (float64 math, as trained)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)[None].float()


def motion_encoding(coords: torch.Tensor, scale: torch.Tensor, num_octaves: int = 10) -> torch.Tensor:
    """Fourier features of each point's displacement to the next and from the previous frame.

    coords [..., T, 2] -> [..., T, 4 + 2 * 4 * num_octaves]: the displacements (divided by the
    feature-map size ``scale``) followed by their sines and cosines at scales 2^0 .. 2^(octaves-1),
    scale-major.
    """
    forward = F.pad(coords[..., :-1, :] - coords[..., 1:, :], (0, 0, 0, 1))  # zero on the last frame
    backward = F.pad(coords[..., 1:, :] - coords[..., :-1, :], (0, 0, 1, 0))  # zero on the first frame
    motion = torch.cat([forward / scale, backward / scale], dim=-1)  # ... T 4
    scales = 2.0 ** torch.arange(num_octaves, dtype=motion.dtype, device=motion.device)
    phases = (motion[..., None, :] * scales[:, None]).flatten(-2)  # ... T (octaves 4)
    return torch.cat([motion, torch.sin(torch.cat([phases, phases + 0.5 * math.pi], dim=-1))], dim=-1)


class LocalCorrelation(nn.Module):
    """4D correlation between a track's query neighbourhood and its current neighbourhood.

    Both neighbourhoods are 7x7 bilinear samples (radius 3, border padding) of one pyramid level;
    every current sample is dotted with every query sample, giving 49 x 49 = 2401 values per
    (track, frame). The first neighbourhood index steps x, the second y, as in the checkpoints.

    The 49 samples sit at integer steps from one point, so they share one pair of bilinear
    weights and all come from the 8x8 pixel patch around the point. The patch is gathered once
    from the channels-last map (one contiguous C-vector per pixel), dotted with the query samples
    in one matrix product, and only then mixed bilinearly (a linear step, so the order changes
    nothing but rounding). This replaces grid_sample, whose channels-first output had to be
    transposed, and its 4 reads per sample. Clamping the patch pixels to the map is exactly
    grid_sample's border padding for integer steps.
    """

    def __init__(self, radius: int = 3):
        super().__init__()
        self.size = 2 * radius + 1
        self.register_buffer("steps", torch.arange(-radius, radius + 2), persistent=False)  # 8 pixels per axis

    def _patches(self, level: torch.Tensor, frames: torch.Tensor, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """level [F, H, W, C], frames (long, index into F) broadcastable to xy [..., 2] in level pixels
        -> the 8x8 patches [..., 8, 8, C] (x index first) and the bilinear fractions [..., 2]."""
        _, H, W, C = level.shape
        corner = xy.floor()
        fraction = xy - corner
        corner = corner.long()
        x = (corner[..., :1] + self.steps).clamp_(0, W - 1)  # ... 8
        y = (corner[..., 1:] + self.steps).clamp_(0, H - 1)
        index = (frames * (H * W))[..., None, None] + x[..., :, None] + y[..., None, :] * W  # ... 8 8
        patches = level.reshape(-1, C).index_select(0, index.flatten()).unflatten(0, index.shape)
        return patches, fraction

    def _mix(self, patches: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
        """[..., 8, 8, X] -> [..., 7, 7, X]: each sample interpolated along x, then along y."""
        s = self.size
        fx, fy = fraction.to(patches.dtype)[..., None, None, None].unbind(-4)
        along_x = torch.lerp(patches[..., :s, :, :], patches[..., 1:, :, :], fx)
        return torch.lerp(along_x[..., :s, :], along_x[..., 1:, :], fy)

    def query_features(self, level: torch.Tensor, frames: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        """level [B, T, H, W, C], frames [B, N] (long), xy [B, N, 2] in level pixels -> [B, N, K, C]."""
        B, T = level.shape[:2]
        frames = frames + torch.arange(B, device=frames.device)[:, None] * T
        patches, fraction = self._patches(level.flatten(0, 1), frames, xy)  # B N 8 8 C
        return self._mix(patches, fraction).flatten(2, 3)

    def forward(self, level: torch.Tensor, coords: torch.Tensor, query_feats: torch.Tensor) -> torch.Tensor:
        """level [B, T, H, W, C], coords [B, N, T, 2] in level pixels, query_feats [B, N, K, C] -> [B, N, T, K*K]."""
        B, T = level.shape[:2]
        N, K = query_feats.shape[1:3]
        frames = torch.arange(B * T, device=coords.device).view(B, 1, T)
        patches, fraction = self._patches(level.flatten(0, 1), frames, coords)  # B N T 8 8 C
        products = patches.flatten(2, 4) @ query_feats.transpose(-1, -2)  # B N (T 8 8) K
        corr = self._mix(products.view(B, N, T, self.size + 1, self.size + 1, K), fraction)  # B N T 7 7 K
        return corr.flatten(-3)


class CoTracker3Base(nn.Module):
    """What the offline and online models share: encoder, correlation and the iterated update.

    ``window_len`` fixes the rows of the ``time_emb`` buffer (60 offline, 16 online), so it must
    match the checkpoint. ``model_resolution`` is the (H, W) the predictors resize video to; it
    also sets the constant that scales the motion encoding.
    """

    def __init__(
        self,
        window_len: int,
        stride: int = 4,
        corr_radius: int = 3,
        corr_levels: int = 4,
        num_virtual_tracks: int = 64,
        model_resolution: tuple[int, int] = MODEL_RESOLUTION,
    ):
        super().__init__()
        self.window_len = window_len
        self.stride = stride
        self.corr_levels = corr_levels
        self.model_resolution = tuple(model_resolution)
        self.latent_dim = 128
        corr_dim = (2 * corr_radius + 1) ** 4  # 2401
        corr_emb_dim = 256
        motion_dim = 4 + 2 * 4 * 10  # 84
        input_dim = 2 + corr_levels * corr_emb_dim + motion_dim  # 1110: vis, conf, correlations, motion

        self.fnet = FeatureEncoder(output_dim=self.latent_dim, stride=stride)
        self.updateformer = EfficientUpdateFormer(
            input_dim=input_dim,
            hidden_size=384,
            num_heads=8,
            output_dim=4,
            depth=3,
            mlp_ratio=4.0,
            num_virtual_tracks=num_virtual_tracks,
        )
        self.corr_mlp = Mlp(corr_dim, 384, corr_emb_dim)
        self.correlation = LocalCorrelation(corr_radius)
        self.register_buffer("time_emb", sincos_time_embedding(input_dim, window_len))
        motion_scale = torch.tensor([model_resolution[1], model_resolution[0]]) / stride
        self.register_buffer("motion_scale", motion_scale, persistent=False)

    def encode(self, video: torch.Tensor, chunk_size: int = ENCODER_CHUNK_FRAMES) -> list[torch.Tensor]:
        """video [B, T, 3, H, W] in 0..255 -> feature pyramid, level i [B, T, H/4/2^i, W/4/2^i, C].

        Features are L2-normalised per pixel before pooling (not after); frames go through the
        encoder ``chunk_size`` at a time to bound memory. The levels are channels-last, the layout
        the encoder computes in and the correlation gathers from.
        """
        B, T = video.shape[:2]
        frames = 2 * (video.flatten(0, 1) / 255.0) - 1.0  # (B T) 3 H W
        fmaps = torch.cat([self.fnet(chunk) for chunk in frames.split(chunk_size)])  # (B T) C h w, channels-last
        fmaps = fmaps / torch.sqrt(torch.clamp(fmaps.square().sum(dim=1, keepdim=True), min=1e-12))
        fmaps = fmaps.to(video.dtype)
        pyramid = [fmaps]
        for _ in range(self.corr_levels - 1):
            pyramid.append(F.avg_pool2d(pyramid[-1], 2, stride=2))
        return [level.permute(0, 2, 3, 1).contiguous().unflatten(0, (B, T)) for level in pyramid]

    def query_features(self, pyramid: list[torch.Tensor], queries: torch.Tensor) -> list[torch.Tensor]:
        """queries [B, N, 3] (t, x, y) in model pixels -> per level, the 7x7 neighbourhood [B, N, K, C]."""
        frames = queries[..., 0].long()
        xy = queries[..., 1:] / self.stride
        return [self.correlation.query_features(level, frames, xy / 2**i) for i, level in enumerate(pyramid)]

    def time_embedding(self, num_frames: int) -> torch.Tensor:
        """``time_emb`` [1, T, D], linearly resampled (align_corners=False) when T differs from its rows."""
        if num_frames == self.time_emb.shape[1]:
            return self.time_emb
        resampled = F.interpolate(self.time_emb.float().transpose(1, 2), size=num_frames, mode="linear")
        return resampled.transpose(1, 2).to(self.time_emb.dtype)

    def refine(
        self,
        pyramid: list[torch.Tensor],
        coords: torch.Tensor,
        vis: torch.Tensor,
        conf: torch.Tensor,
        query_feats: list[torch.Tensor],
        iters: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Iterate the transformer update on one window.

        coords [B, N, T, 2] in feature pixels, vis and conf [B, N, T] logits; returns them updated.
        Track-major throughout, the transformer's layout, so no step transposes its tokens.
        Each iteration looks up correlations at the current estimate, so each step can correct the last.
        """
        T = coords.shape[2]
        time_emb = self.time_embedding(T)[:, None]  # 1 1 T D
        for _ in range(iters):
            coords = coords.detach()
            corr = torch.cat(
                [
                    self.corr_mlp(self.correlation(level, coords / 2**i, feats))
                    for i, (level, feats) in enumerate(zip(pyramid, query_feats))
                ],
                dim=-1,
            )  # B N T (levels 256)
            tokens = torch.cat(
                [vis[..., None], conf[..., None], corr, motion_encoding(coords, self.motion_scale)], dim=-1
            )  # B N T D
            delta = self.updateformer(tokens + time_emb)  # B N T 4
            coords = coords + delta[..., :2]
            vis = vis + delta[..., 2]
            conf = conf + delta[..., 3]
        return coords, vis, conf


class CoTracker3Offline(CoTracker3Base):
    """Tracks all points through the whole clip in one window (``time_emb`` resampled to T frames).

    Every frame is predicted for every query, before and after its query frame.
    """

    def __init__(self, window_len: int = 60, **kwargs):
        super().__init__(window_len=window_len, **kwargs)

    def forward(
        self, video: torch.Tensor, queries: torch.Tensor, iters: int = 4
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """video [B, T, 3, H, W] 0..255, queries [B, N, 3] (t, x, y) in video pixels.

        Returns tracks [B, T, N, 2] in video pixels, visibility and confidence [B, T, N] in (0, 1).
        """
        B, T = video.shape[:2]
        N = queries.shape[1]
        pyramid = self.encode(video)
        query_feats = self.query_features(pyramid, queries)
        coords = (queries[:, :, None, 1:] / self.stride).expand(B, N, T, 2).float()
        vis = coords.new_zeros(B, N, T)
        conf = coords.new_zeros(B, N, T)
        coords, vis, conf = self.refine(pyramid, coords, vis, conf, query_feats, iters)
        return (coords * self.stride).transpose(1, 2), vis.sigmoid().transpose(1, 2), conf.sigmoid().transpose(1, 2)


class CoTracker3Online(CoTracker3Base):
    """Tracks through sliding windows of ``window_len`` frames that advance by half a window.

    Each window starts from the previous one's predictions on the frames they share (the last
    shared frame repeated over the new half); tracks whose query frame is not reached yet keep
    their query position and contribute no correlation. The clip is padded at the end with its
    last frame to whole windows. Clips of at most half a window get no window (zeros, 0.5), as
    in the reference.
    """

    def __init__(self, window_len: int = 16, **kwargs):
        super().__init__(window_len=window_len, **kwargs)

    def forward(
        self, video: torch.Tensor, queries: torch.Tensor, iters: int = 4
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Same contract as :meth:`CoTracker3Offline.forward`."""
        B, T = video.shape[:2]
        N = queries.shape[1]
        S = self.window_len
        step = S // 2
        overlap = S - step
        pyramid = self.encode(video)
        query_feats = self.query_features(pyramid, queries)
        query_frames = queries[..., 0].long()  # B N

        coords_out = video.new_zeros(B, N, T, 2, dtype=torch.float32)
        vis_out = video.new_zeros(B, N, T, dtype=torch.float32)
        conf_out = video.new_zeros(B, N, T, dtype=torch.float32)
        coords = (queries[:, :, None, 1:] / self.stride).expand(B, N, S, 2).float()
        vis = coords.new_zeros(B, N, S)
        conf = coords.new_zeros(B, N, S)

        num_windows = (T - S + step - 1) // step + 1
        for start in range(0, num_windows * step, step):
            window = torch.arange(start, start + S, device=video.device)
            if start > 0:
                carried = (query_frames < start + overlap)[..., None]  # B N 1
                previous = window.clamp(max=start + overlap - 1)  # shared frames, last one repeated
                coords = torch.where(carried[..., None], coords_out[:, :, previous] / self.stride, coords)
                vis = torch.where(carried, vis_out[:, :, previous], vis)
                conf = torch.where(carried, conf_out[:, :, previous], conf)
            started = (query_frames < start + S)[..., None, None]  # B N 1 1
            frames = window.clamp(max=T - 1)  # end padding repeats the last frame
            w_coords, w_vis, w_conf = self.refine(
                [level[:, frames] for level in pyramid],
                coords,
                vis,
                conf,
                [feats * started for feats in query_feats],
                iters,
            )
            kept = min(T - start, S)
            coords_out[:, :, start : start + kept] = w_coords[:, :, :kept] * self.stride
            vis_out[:, :, start : start + kept] = w_vis[:, :, :kept]
            conf_out[:, :, start : start + kept] = w_conf[:, :, :kept]
        return coords_out.transpose(1, 2), vis_out.sigmoid().transpose(1, 2), conf_out.sigmoid().transpose(1, 2)


#: Peak-memory constants of an fp32 forward, measured on CPU by ``benchmarks/tracker_memory.py``:
#: the encoder's transients per frame and input pixel, and one refinement iteration's per frame
#: (the 64 virtual tracks) and per point-frame (mostly the 8x8 correlation patches of one level).
ENCODER_BYTES_PER_PIXEL = 418
REFINE_BYTES_PER_FRAME = 270 * 1024
REFINE_BYTES_PER_POINT_FRAME = 66 * 1024


def forward_memory_bytes(
    batch: int,
    frames: int,
    points: int,
    resolution: tuple[int, int] = MODEL_RESOLUTION,
    latent_dim: int = 128,
    stride: int = 4,
    levels: int = 4,
) -> int:
    """Peak memory of one fp32 forward over ``batch`` windows at the model ``resolution`` (H, W),
    beyond its input video.

    The feature pyramid and the query features live through the whole call; beside them, the peak
    is the larger of the encoder's transients (at most ``ENCODER_CHUNK_FRAMES`` frames in flight,
    whatever the batch) and the refinement's (linear in frames and point-frames). bf16 autocast
    needs less.
    """
    total_frames = batch * frames
    pixels = resolution[0] * resolution[1]
    pyramid = total_frames * latent_dim * 4 * pixels / stride**2 * sum(4.0**-i for i in range(levels))
    pyramid += batch * points * levels * 49 * latent_dim * 4  # each query's 7x7 neighbourhood per level
    encoder = min(total_frames, ENCODER_CHUNK_FRAMES) * ENCODER_BYTES_PER_PIXEL * pixels
    refine = total_frames * (REFINE_BYTES_PER_FRAME + points * REFINE_BYTES_PER_POINT_FRAME)
    return int(pyramid + max(encoder, refine))


def batch_size_for_memory(
    free_bytes: int,
    frames: int,
    points: int,
    *,
    max_batch: int,
    resolution: tuple[int, int] = MODEL_RESOLUTION,
    input_size: tuple[int, int] | None = None,
    headroom: float = 0.8,
) -> int:
    """The most windows per call whose memory fits in ``headroom`` of ``free_bytes``, at least 1 and
    at most ``max_batch`` (a bound on host memory and latency per call; the pipeline's is
    ``stages.track.MAX_WINDOWS_PER_CALL``).

    A call holds the video as the predictor gets it (float, ``input_size`` (H, W), default the model
    resolution) and its copy resized to ``resolution`` beside the forward (:func:`forward_memory_bytes`).
    Take ``free_bytes`` from ``torch.cuda.mem_get_info()`` after the model is loaded; the headroom
    covers the allocator's rounding and library workspaces. A batch that still runs out of memory
    is halved by the caller.
    """
    height, width = input_size or resolution
    video = frames * 3 * 4 * (height * width + resolution[0] * resolution[1])  # per window, float32

    def needed(batch: int) -> int:
        return forward_memory_bytes(batch, frames, points, resolution) + batch * video

    fits = [batch for batch in range(1, max_batch + 1) if needed(batch) <= headroom * free_bytes]
    return max(fits, default=1)
