"""TAPNext (Zholus et al., 2025), the network of TAPNext++ (Jung et al., 2026): tracking as next-token prediction.

Our own implementation, weight-compatible with the released TAPNext++ checkpoints
(``tapnextpp_ckpt.pt``, ``tapnextpp_512.ckpt``: their state_dicts load with ``strict=True``) and
numerically the official PyTorch code (google-deepmind/tapnet, ``tapnet/tapnext/tapnext_torch.py``).
Each frame is cut into 8x8 patches; each query point is one more token on every frame (its point
query token with the sin/cos embedding of its position on its query frame, a mask token after
it, an "unknown" token before it). Twelve TRecViT blocks mix each token with its own past
(a recurrent block along time) and each frame's tokens with each other (a ViT block); the point
tokens' outputs give a position (a windowed soft-argmax over 256 bins per axis) and a
visibility logit per frame. Being recurrent, it tracks online: a frame's result depends only
on the frames before it, carried in a :class:`TrackingState`.

Conventions are the official ones: video ``[B, T, H, W, 3]`` in [-1, 1]; queries ``[B, Q, 3]`` as
(t, y, x) and tracks ``[B, T, Q, 2]`` as (y, x), in pixels of the ``image_size`` square (256 for
the released networks, whatever the input resolution), 0 at the top-left corner of the first
pixel. The input may be any multiple of the patch size: the learned position embedding is then
resized bicubically (how the 512 checkpoint runs). docs/tapnextpp.md has the facts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from magma_data.models.tapnext_blocks import RecurrentState, TRecViTBlock

#: the square the released networks were built for; queries and tracks are in its pixels
IMAGE_SIZE = 256
PATCH_SIZE = 8
#: the coordinate head's bins per axis (one per pixel of the 256 square, whatever ``image_size``)
COORDINATE_BINS = 256
#: the coordinate head's soft-argmax: bins within this many of the argmax, logits scaled by the temperature
SOFT_ARGMAX_RADIUS = 20
SOFT_ARGMAX_TEMPERATURE = 0.5


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10_000.0) -> torch.Tensor:
    """MoCo v3's 2-D sin/cos embedding [1, height * width, dim], row-major: [sin x, cos x, sin y, cos y]
    (float64 math, stored as float32, as the official ``posemb_sincos_2d``)."""
    if dim % 4:
        raise ValueError(f"the sin/cos embedding needs a width divisible by 4, not {dim}")
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4 - 1))
    x, y = x.flatten()[:, None] * omega, y.flatten()[:, None] * omega
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)[None].float()


def prediction_head(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, 256), nn.LayerNorm(256), nn.GELU(), nn.Linear(256, 256), nn.LayerNorm(256),
                         nn.GELU(), nn.Linear(256, out))


@dataclass
class TrackingState:
    """Where online tracking stands: frames seen, the queries (t, y, x) and each block's recurrent state."""

    step: int
    queries: torch.Tensor  # B Q 3
    blocks: list[RecurrentState]


class TAPNext(nn.Module):
    """The network. ``forward(video, queries, state)`` runs the next frames of a video (one or many);
    pass the returned state to continue the same video. Defaults are the released networks'."""

    def __init__(self, image_size: int = IMAGE_SIZE, width: int = 768, patch_size: int = PATCH_SIZE,
                 num_heads: int = 12, lru_width: int | None = None, depth: int = 12):
        super().__init__()
        self.image_size = image_size
        self.patch_size = patch_size
        self.width = width
        patches = (image_size // patch_size) ** 2
        self.mask_token = nn.Parameter(torch.randn(1, 1, 1, width) * 0.02)
        self.unknown_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.point_query_token = nn.Parameter(torch.randn(1, 1, 1, width) * 0.02)
        self.image_pos_emb = nn.Parameter(torch.randn(1, patches, width) * 0.02)
        self.register_buffer("query_pos_embed", sincos_2d(image_size, image_size, width))
        self.lin_proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.blocks = nn.ModuleList(TRecViTBlock(width, num_heads, lru_width or width) for _ in range(depth))
        self.encoder_norm = nn.LayerNorm(width)
        self.visible_head = prediction_head(width, 1)
        self.coordinate_head = prediction_head(width, 2 * COORDINATE_BINS)  # logits of each bin, y then x

    def image_position_embedding(self, height: int, width: int) -> torch.Tensor:
        """The learned embedding of each patch [1, 1, height * width, C], resized bicubically from its square
        grid when the input has another number of patches."""
        native = self.image_pos_emb.shape[1]
        if height * width == native:
            return self.image_pos_emb.unsqueeze(0)
        side = math.isqrt(native)
        grid = self.image_pos_emb.reshape(1, side, side, self.width).permute(0, 3, 1, 2)
        resized = F.interpolate(grid.float(), size=(height, width), mode="bicubic", align_corners=False)
        return resized.permute(0, 2, 3, 1).reshape(1, height * width, self.width).to(self.image_pos_emb.dtype)[None]

    def point_tokens(self, queries: torch.Tensor, step: int, frames: int) -> torch.Tensor:
        """Each query's token on frames step .. step + frames - 1: [B, frames, Q, C]."""
        B, Q, _ = queries.shape
        size = self.image_size
        table = self.query_pos_embed.view(1, size, size, self.width).permute(0, 3, 2, 1)  # 1 C x y
        # grid_sample reads (x, y) = its width then height axis: here (y, x) of the query, in [-1, 1]
        where = (queries[..., 1:].reshape(1, 1, B * Q, 2) / torch.tensor([size, size], device=queries.device)) * 2 - 1
        position = F.grid_sample(table, where, align_corners=False)  # 1 C 1 (B Q)
        query_tokens = self.point_query_token + position.permute(0, 2, 3, 1).reshape(B, 1, Q, self.width)
        frame = torch.arange(step, step + frames, device=queries.device)[None, :, None, None]  # 1 T 1 1
        query_frame = queries[:, None, :, :1]  # B 1 Q 1
        tokens = torch.where(frame == query_frame, query_tokens, self.mask_token)
        return torch.where(frame < query_frame, self.unknown_token, tokens)

    def prediction_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Point tokens [..., C] -> tracks [..., 2] (y, x), coordinate logits [..., 2 * COORDINATE_BINS] and
        visibility logits [..., 1].

        A position is the softmax-weighted mean of the bins within ``SOFT_ARGMAX_RADIUS`` of the
        argmax, at the bin centres (+0.5)."""
        track_logits = self.coordinate_head(x.float())
        logits_y, logits_x = track_logits.chunk(2, dim=-1)
        index = torch.arange(logits_y.shape[-1], device=x.device).repeat(*logits_y.shape[:-1], 1)
        coordinates = []
        for logits in (logits_y, logits_x):
            window = (torch.abs(logits.argmax(dim=-1, keepdim=True) - index) <= SOFT_ARGMAX_RADIUS).float()
            probs = F.softmax(logits * SOFT_ARGMAX_TEMPERATURE, dim=-1) * window
            probs = probs / probs.sum(dim=-1, keepdim=True)
            coordinates.append(torch.sum(probs * index, dim=-1)[..., None])
        tracks = torch.cat(coordinates, dim=-1) + 0.5
        return tracks, track_logits, self.visible_head(x)

    def forward(self, video: torch.Tensor, queries: torch.Tensor | None = None, state: TrackingState | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, TrackingState]:
        """video [B, T, H, W, 3] in [-1, 1], the next T frames; queries [B, Q, 3] (t, y, x) on the first call.

        Returns tracks [B, T, Q, 2] (y, x), coordinate logits [B, T, Q, 2 * COORDINATE_BINS], visibility
        logits [B, T, Q, 1] and the state after these frames.
        """
        B, T = video.shape[:2]
        if state is None and queries is None:
            raise ValueError("the first call takes the queries; later calls take the state it returned")
        step = state.step if state is not None else 0
        queries = state.queries if state is not None else queries
        tokens = self.lin_proj(video.permute(0, 1, 4, 2, 3).flatten(0, 1))  # (B T) C h w
        _, _, h, w = tokens.shape
        tokens = tokens.flatten(2).transpose(1, 2).reshape(B, T, h * w, self.width)
        tokens = tokens + self.image_position_embedding(h, w)
        x = torch.cat([tokens, self.point_tokens(queries, step, T)], dim=2)  # B T (h w + Q) C
        states = []
        for i, block in enumerate(self.blocks):
            x, block_state = block(x, state.blocks[i] if state is not None else None)
            states.append(block_state)
        x = self.encoder_norm(x)
        return *self.prediction_heads(x[:, :, h * w :]), TrackingState(step + T, queries, states)
