"""Magma's image tower: open_clip's ConvNeXt (timm block design) in our own code.

Parameter names are the checkpoint's (``clip_vision_model.trunk.stages.{s}.blocks.{b}.gamma``,
docs/magma-model.md §Checkpoint keys), so Magma-8B's weights load as stored; depths and widths come from
``VisionSpec``, not from the backbone's name. No timm or open_clip import: neither imports with
the CPU torch wheel (docs/environment.md §torchvision, timm, open_clip).

The forward returns the last stage's map, ``[n, C, H/32, W/32]`` (``clip_vis_dense`` in the
official code). ``trunk.head.norm`` and ``head.proj`` are stored in Magma's checkpoints but never
used; they are kept so that every stored tensor has a home and saving writes them back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .config import STEM_PATCH, VisionSpec

#: timm's ``ls_init_value``: the layer scales' start in a model built from scratch.
LAYER_SCALE_INIT = 1e-6


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (timm ``LayerNorm2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # N H W C
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class DropPath(nn.Module):
    """Stochastic depth per sample, as timm draws it (one Bernoulli per sample, scaled by keep).

    Official oddity kept: open_clip's convnext_xxlarge sets drop_path 0.1, so the tower drops
    blocks whenever the model is in ``train()``, even when the tower itself is frozen
    (docs/magma-model.md §Official behaviours). ``vision_config["drop_path_rate"] = 0`` turns it off.
    """

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4f}"


class Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 -> LayerNorm -> MLP (channels last) -> layer scale ``gamma`` -> residual."""

    def __init__(self, dim: int, eps: float, drop_path: float):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim)
        self.gamma = nn.Parameter(torch.full((dim,), LAYER_SCALE_INIT))  # the checkpoint's name
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)  # N H W C
        x = self.mlp(self.norm(x)).permute(0, 3, 1, 2)  # N C H W
        x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        return self.drop_path(x) + shortcut


class ConvNeXtStage(GradientCheckpointingLayer):
    """Optional 2x downsample (LayerNorm2d + 2x2 conv), then the stage's blocks.

    A ``GradientCheckpointingLayer``: ``gradient_checkpointing_enable()`` recomputes each stage
    in backward. (The official tower runs all stages under one reentrant checkpoint, always;
    the numbers are the same.)
    """

    def __init__(self, in_dim: int, dim: int, depth: int, eps: float, drop_paths: list[float]):
        super().__init__()
        if in_dim == dim:
            self.downsample = nn.Identity()
        else:
            self.downsample = nn.Sequential(LayerNorm2d(in_dim, eps=eps), nn.Conv2d(in_dim, dim, 2, stride=2))
        self.blocks = nn.Sequential(*(ConvNeXtBlock(dim, eps, drop_paths[b]) for b in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXtTrunk(nn.Module):
    def __init__(self, spec: VisionSpec):
        super().__init__()
        dims, eps = spec.dims, spec.layer_norm_eps
        self.stem = nn.Sequential(
            nn.Conv2d(3, dims[0], kernel_size=STEM_PATCH, stride=STEM_PATCH), LayerNorm2d(dims[0], eps=eps)
        )
        # timm spreads the drop-path rate linearly over all blocks, in float32 (on the CPU even when
        # the model is built on the meta device)
        rates = torch.linspace(0, spec.drop_path_rate, sum(spec.depths), device="cpu").split(list(spec.depths))
        in_dims = (dims[0],) + dims[:-1]
        self.stages = nn.Sequential(
            *(
                ConvNeXtStage(in_dims[s], dims[s], spec.depths[s], eps, rates[s].tolist())
                for s in range(len(dims))
            )
        )
        self.head = nn.Module()
        self.head.norm = LayerNorm2d(dims[-1], eps=eps)


class ClipVisionModel(nn.Module):
    """open_clip's ``TimmModel``: the trunk plus its (unused) CLIP projection."""

    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.trunk = ConvNeXtTrunk(spec)
        self.head = nn.Module()
        self.head.proj = nn.Linear(spec.dims[-1], spec.clip_embed_dim, bias=False)


class MagmaVisionTower(nn.Module):
    """``vision_tower`` of MagmaForCausalLM: pixels [n, 3, H, W] -> features [n, C, H/32, W/32]."""

    def __init__(self, spec: VisionSpec):
        super().__init__()
        self.clip_vision_model = ClipVisionModel(spec)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        trunk = self.clip_vision_model.trunk
        return trunk.stages(trunk.stem(pixel_values))
