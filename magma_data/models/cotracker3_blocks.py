"""Building blocks of CoTracker3: the frame encoder and the track transformer.

Attribute names follow the released checkpoints (``scaled_offline.pth`` / ``scaled_online.pth``)
so that their state_dicts load unchanged, including the misspelled ``virual_tracks``. Norm layers
without affine parameters carry no state and so add no keys (docs/cotracker3.md §Network).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
    """Two linear layers with a GELU between them (``approximate="tanh"`` in the transformer)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int, approximate: str = "none"):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def instance_norm(channels: int) -> nn.GroupNorm:
    """Per-frame, per-channel normalisation without affine parameters (so no checkpoint keys).

    GroupNorm with one group per channel is instance norm; unlike ``nn.InstanceNorm2d`` it keeps a
    channels-last tensor channels-last, and on CPU it runs 2-3x faster.
    """
    return nn.GroupNorm(channels, channels, eps=1e-5, affine=False)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with instance norm; a strided 1x1 shortcut when the size changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        self.norm1 = instance_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = instance_norm(out_channels)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride),
                instance_norm(out_channels),
            )
            if stride != 1
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)), inplace=True)
        y = F.relu(self.norm2(self.conv2(y)), inplace=True)
        return F.relu(self.downsample(x) + y, inplace=True)


class FeatureEncoder(nn.Module):
    """Per-frame CNN: four residual stages fused at 1/4 resolution into 128-d features.

    Every stage output (1/2, 1/4, 1/8, 1/16) is resized to 1/4 with bilinear ``align_corners=True``
    and the concatenation is mixed by a 3x3 and a 1x1 convolution, so the features see both fine
    detail and wide context.
    """

    def __init__(self, output_dim: int = 128, stride: int = 4):
        super().__init__()
        self.stride = stride
        widths = (output_dim // 2, output_dim // 4 * 3, output_dim, output_dim)  # 64, 96, 128, 128
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3)
        self.norm1 = instance_norm(widths[0])
        self.layer1 = self._stage(widths[0], widths[0], stride=1)
        self.layer2 = self._stage(widths[0], widths[1], stride=2)
        self.layer3 = self._stage(widths[1], widths[2], stride=2)
        self.layer4 = self._stage(widths[2], widths[3], stride=2)
        self.conv2 = nn.Conv2d(sum(widths), output_dim * 2, kernel_size=3, padding=1)
        self.norm2 = instance_norm(output_dim * 2)
        self.conv3 = nn.Conv2d(output_dim * 2, output_dim, kernel_size=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            ResidualBlock(in_channels, out_channels, stride), ResidualBlock(out_channels, out_channels)
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [F, 3, H, W] in [-1, 1] -> features [F, C, H/4, W/4], channels-last in memory.

        Channels-last lets the convolution libraries (oneDNN, cuDNN) skip converting every
        activation to their preferred layout and back.
        """
        size = (frames.shape[-2] // self.stride, frames.shape[-1] // self.stride)
        frames = frames.contiguous(memory_format=torch.channels_last)
        x = F.relu(self.norm1(self.conv1(frames)), inplace=True)
        a = self.layer1(x)
        b = self.layer2(a)
        c = self.layer3(b)
        d = self.layer4(c)
        fused = torch.cat(
            [F.interpolate(s, size, mode="bilinear", align_corners=True) for s in (a, b, c, d)], dim=1
        )
        return self.conv3(F.relu(self.norm2(self.conv2(fused)), inplace=True))


class Attention(nn.Module):
    """Multi-head attention with a fused key|value projection (keys first), as in the checkpoints."""

    def __init__(self, dim: int, num_heads: int = 8, context_dim: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # B L C -> B h L C/h

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        k, v = self.to_kv(context).chunk(2, dim=-1)
        q, k, v = (self._split_heads(t) for t in (self.to_q(x), k, v))
        out = F.scaled_dot_product_attention(q, k, v)  # B h L C/h
        return self.to_out(out.transpose(1, 2).flatten(2))


class AttnBlock(nn.Module):
    """Pre-norm transformer block: self-attention then MLP, both residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim, approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrossAttnBlock(nn.Module):
    """Pre-norm block whose attention reads another token set; the context gets its own affine norm."""

    def __init__(self, dim: int, context_dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm_context = nn.LayerNorm(context_dim)
        self.cross_attn = Attention(dim, num_heads, context_dim=context_dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dim, approximate="tanh")

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.cross_attn(self.norm1(x), self.norm_context(context))
        return x + self.mlp(self.norm2(x))


class EfficientUpdateFormer(nn.Module):
    """Transformer over track tokens that predicts per-frame updates (dx, dy, dvis, dconf).

    Attention alternates between time (each track along its frames) and space (across tracks
    within a frame). Space attention goes through a small set of learned virtual tracks, so its
    cost is linear in the number of points: virtual <- points, virtual <-> virtual, points <- virtual.
    """

    def __init__(
        self,
        input_dim: int = 1110,
        hidden_size: int = 384,
        num_heads: int = 8,
        output_dim: int = 4,
        depth: int = 3,
        mlp_ratio: float = 4.0,
        num_virtual_tracks: int = 64,
    ):
        super().__init__()
        self.num_virtual_tracks = num_virtual_tracks
        self.virual_tracks = nn.Parameter(torch.randn(1, num_virtual_tracks, 1, hidden_size))
        self.input_transform = nn.Linear(input_dim, hidden_size)
        self.flow_head = nn.Linear(hidden_size, output_dim - 2)
        self.vis_conf_head = nn.Linear(hidden_size, 2)
        self.time_blocks = nn.ModuleList(AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.space_virtual_blocks = nn.ModuleList(
            AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.space_point2virtual_blocks = nn.ModuleList(
            CrossAttnBlock(hidden_size, hidden_size, num_heads, mlp_ratio) for _ in range(depth)
        )
        self.space_virtual2point_blocks = nn.ModuleList(
            CrossAttnBlock(hidden_size, hidden_size, num_heads, mlp_ratio) for _ in range(depth)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier linears and near-zero heads, so an untrained model starts by barely moving points."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.flow_head.weight, std=0.001)
        nn.init.trunc_normal_(self.vis_conf_head.weight, std=0.001)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, T, input_dim] -> updates [B, N, T, 4]."""
        x = self.input_transform(tokens)  # B N T C
        B, N, T, C = x.shape
        virtual = self.virual_tracks.expand(B, -1, T, -1)  # B V T C
        x = torch.cat([x, virtual], dim=1)  # B (N+V) T C
        for time_block, v2p, virtual_block, p2v in zip(
            self.time_blocks,
            self.space_virtual2point_blocks,
            self.space_virtual_blocks,
            self.space_point2virtual_blocks,
        ):
            x = time_block(x.reshape(B * (N + self.num_virtual_tracks), T, C)).reshape(B, -1, T, C)
            x = x.transpose(1, 2).reshape(B * T, -1, C)  # (B T) (N+V) C
            points, virtual = x[:, :N], x[:, N:]
            virtual = virtual_block(v2p(virtual, points))
            points = p2v(points, virtual)
            x = torch.cat([points, virtual], dim=1).reshape(B, T, -1, C).transpose(1, 2)  # B (N+V) T C
        x = x[:, :N]
        return torch.cat([self.flow_head(x), self.vis_conf_head(x)], dim=-1)
