"""The blocks of TAPNext's TRecViT backbone: a Griffin/Hawk recurrent block along time, a ViT block across space.

Our own code with the official parameter names and shapes (google-deepmind/tapnet,
``tapnet/tapnext/tapnext_lru_modules.py`` and torchvision's ``vision_transformer.EncoderBlock``),
so the released TAPNext++ checkpoints load unchanged; no einops, recurrentgemma or torchvision.
Every op is the official one in the official order, so results are the official ones and
autocast picks the same precision for each. docs/tapnextpp.md §Network has the facts.

The official recurrent block runs a frame at a time with a cache in online tracking; these take
``t >= 1`` frames at once with the same cache and give what ``t`` single steps give: the
temporal convolution is summed tap by tap as the official single step sums it, and the RG-LRU
recurrence runs as its linear scan. Shape letters: B batch (tracks of all windows), T frames, C width.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """x / rms(x) * (1 + scale)."""

    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = torch.mean(torch.square(x), dim=-1, keepdim=True)
        return x * torch.rsqrt(var + self.eps) * (self.scale + 1)


class BlockDiagonalLinear(nn.Module):
    """A linear layer per head: the width split into ``num_blocks`` independent blocks."""

    def __init__(self, width: int, num_blocks: int):
        super().__init__()
        self.num_blocks = num_blocks
        block = width // num_blocks
        self.w = nn.Parameter(torch.randn(num_blocks, block, block) / block**0.5)
        self.b = nn.Parameter(torch.zeros(num_blocks, block))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unflatten(-1, (self.num_blocks, -1))  # ... h i
        return (torch.einsum("... h i, h i j -> ... h j", x, self.w) + self.b).flatten(-2)


class RGLRU(nn.Module):
    """Real-Gated Linear Recurrent Unit: h_t = a_t * h_(t-1) + sqrt(1 - a_t^2) * (i_t * x_t), the state in fp32.

    ``a_t = exp(-8 * r_t * softplus(a_param))``; the first step of a sequence (no state yet) takes
    the gated input as it is.
    """

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.a_param = nn.Parameter(torch.zeros(width))
        self.input_gate = BlockDiagonalLinear(width, num_heads)
        self.a_gate = BlockDiagonalLinear(width, num_heads)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, C], state [B, C] fp32 or None -> y [B, T, C], the last state [B, C] fp32."""
        gate_x = torch.sigmoid(self.input_gate(x))
        gate_a = torch.sigmoid(self.a_gate(x))
        log_a = -8.0 * gate_a * F.softplus(self.a_param)
        a = torch.exp(log_a)
        multiplier = torch.sqrt(1 - torch.exp(2 * log_a))
        if state is None:  # the sequence starts here: no decay to normalise against
            multiplier[:, 0] = 1
        normalized_x = (x * gate_x) * multiplier.type(x.dtype)

        h = state if state is not None else torch.zeros(x[:, 0].shape, dtype=torch.float32, device=x.device)
        y = torch.empty_like(normalized_x)
        for t in range(x.shape[1]):
            h = a[:, t].float() * h + normalized_x[:, t].float()
            y[:, t] = h.type(x.dtype)
        return y, h


class CausalConv1D(nn.Module):
    """A depthwise convolution over the last ``temporal_width`` frames; the cache holds the frames before."""

    def __init__(self, width: int, temporal_width: int = 4):
        super().__init__()
        self.temporal_width = temporal_width
        self.w = nn.Parameter(torch.randn(temporal_width, width) * 0.1)
        self.b = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, C], cache [B, width - 1, C] or None (zeros) -> y [B, T, C], the new cache."""
        frames, history = x.shape[1], self.temporal_width - 1
        if cache is None:
            cache = x.new_zeros(x.shape[0], history, x.shape[2])
        x = torch.cat([cache, x], dim=1)  # B (history + T) C
        # Every output frame sums its taps in one reduction, as the official single step does.
        taps = torch.stack([x[:, k : k + frames] for k in range(self.temporal_width)], dim=2)  # B T width C
        y = (taps * self.w).sum(2) + self.b
        return y, x[:, -history:]


class RecurrentState(NamedTuple):
    """What a recurrent block carries from one frame to the next (the official ``RecurrentBlockCache``)."""

    rg_lru_state: torch.Tensor  # B C, fp32
    conv1d_state: torch.Tensor  # B (temporal_width - 1) C


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


class RecurrentBlock(nn.Module):
    """gelu(W_y x) * RG-LRU(conv(W_x x)), projected back to the width."""

    def __init__(self, width: int, num_heads: int, lru_width: int, conv1d_temporal_width: int = 4):
        super().__init__()
        self.linear_y = nn.Linear(width, lru_width)
        self.linear_x = nn.Linear(width, lru_width)
        self.linear_out = nn.Linear(lru_width, width)
        self.conv_1d = CausalConv1D(lru_width, conv1d_temporal_width)
        self.rg_lru = RGLRU(lru_width, num_heads)

    def forward(self, x: torch.Tensor, state: RecurrentState | None) -> tuple[torch.Tensor, RecurrentState]:
        y = gelu_tanh(self.linear_y(x))
        x = self.linear_x(x)
        x, conv1d_state = self.conv_1d(x, None if state is None else state.conv1d_state)
        x, rg_lru_state = self.rg_lru(x, None if state is None else state.rg_lru_state)
        return self.linear_out(x * y), RecurrentState(rg_lru_state, conv1d_state)


class GatedMLP(nn.Module):
    """gelu(x W_0 + b_0) * (x W_1 + b_1), projected down: ``ffw_up`` holds both up-projections."""

    def __init__(self, width: int, expanded_width: int):
        super().__init__()
        self.ffw_up = nn.Module()
        self.ffw_up.w = nn.Parameter(torch.randn(2, width, expanded_width) / width**0.5)
        self.ffw_up.b = nn.Parameter(torch.zeros(2, 1, 1, expanded_width))
        self.ffw_down = nn.Linear(expanded_width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, C]."""
        out = torch.einsum("...td,cdD->c...tD", x, self.ffw_up.w) + self.ffw_up.b
        return self.ffw_down(gelu_tanh(out[0]) * out[1])


class TemporalBlock(nn.Module):
    """The recurrent residual block along time (Griffin's; the official ``ssm_block``)."""

    def __init__(self, width: int, num_heads: int, lru_width: int, mlp_width: int):
        super().__init__()
        self.temporal_pre_norm = RMSNorm(width)
        self.recurrent_block = RecurrentBlock(width, num_heads, lru_width)
        self.channel_pre_norm = RMSNorm(width)
        self.mlp_block = GatedMLP(width, mlp_width)

    def forward(self, x: torch.Tensor, state: RecurrentState | None) -> tuple[torch.Tensor, RecurrentState]:
        """x [B, T, C]: one sequence per track (and per image patch)."""
        recurrent, state = self.recurrent_block(self.temporal_pre_norm(x), state)
        residual = recurrent + x
        return self.mlp_block(self.channel_pre_norm(residual)) + residual, state


class SpatialBlock(nn.Module):
    """The ViT encoder block across a frame's tokens, with torchvision's ``EncoderBlock`` names."""

    def __init__(self, width: int, num_heads: int, mlp_width: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width, eps=1e-6)
        # torchvision's MLP is Linear, GELU, Dropout, Linear, Dropout: the linears are entries 0 and 3
        self.mlp = nn.Sequential(nn.Linear(width, mlp_width), nn.GELU(), nn.Identity(), nn.Linear(mlp_width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [frames, tokens, C]."""
        y = self.ln_1(x)
        x = self.self_attention(y, y, y, need_weights=False)[0] + x
        return x + self.mlp(self.ln_2(x))


class TRecViTBlock(nn.Module):
    """Time, then space (arXiv:2412.14294): each token's sequence through the recurrent block, then
    each frame's tokens through the ViT block."""

    def __init__(self, width: int, num_heads: int, lru_width: int):
        super().__init__()
        self.ssm_block = TemporalBlock(width, num_heads, lru_width, mlp_width=4 * width)
        self.vit_block = SpatialBlock(width, num_heads, mlp_width=4 * width)

    def forward(self, x: torch.Tensor, state: RecurrentState | None) -> tuple[torch.Tensor, RecurrentState]:
        """x [B, T, N, C] (N: image patches and tracks) -> the same shape, and the block's new state."""
        B, T, N, C = x.shape
        x, state = self.ssm_block(x.permute(0, 2, 1, 3).reshape(B * N, T, C), state)
        x = self.vit_block(x.reshape(B, N, T, C).permute(0, 2, 1, 3).reshape(B * T, N, C))
        return x.reshape(B, T, N, C), state
