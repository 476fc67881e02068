"""Visual Attention Network (Guo et al. 2022, "Visual Attention Network"), own implementation.

VAN is not in timm, so the project carries this small version. Large-kernel attention (LKA)
decomposes a 21x21 convolution into a 5x5 depthwise conv, a 7x7 depthwise conv with dilation 3
and a 1x1 conv; the result gates the input multiplicatively (``u * attn``). Four stages of
overlapping patch embedding (stride 4, 2, 2, 2) + blocks (BN -> spatial attention, BN -> conv MLP,
each residual). Input ``[B, in_chans, H, W]``; :meth:`VAN.forward` returns the four stage maps.
"""

from __future__ import annotations

import torch
from torch import nn


class LKA(nn.Module):
    """Large-kernel attention: ``x * conv1x1(dwconv7x7_d3(dwconv5x5(x)))``."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv0 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv_spatial = nn.Conv2d(dim, dim, 7, padding=9, groups=dim, dilation=3)
        self.conv1 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv1(self.conv_spatial(self.conv0(x)))


class SpatialAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj_1 = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.lka = LKA(dim)
        self.proj_2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_2(self.lka(self.act(self.proj_1(x)))) + x


class ConvMlp(nn.Module):
    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dw(self.fc1(x))))


class VANBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float = 4.0, layer_scale: float = 1e-2):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.attn = SpatialAttention(dim)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, mlp_ratio)
        self.scale1 = nn.Parameter(torch.full((dim, 1, 1), layer_scale))
        self.scale2 = nn.Parameter(torch.full((dim, 1, 1), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.scale1 * self.attn(self.norm1(x))
        return x + self.scale2 * self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: strided conv (kernel stride + 3) + BN."""

    def __init__(self, in_chans: int, dim: int, stride: int):
        super().__init__()
        k = stride + 3
        self.proj = nn.Conv2d(in_chans, dim, k, stride=stride, padding=k // 2)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class VAN(nn.Module):
    """Four-stage VAN backbone.

    Args:
        in_chans: input channels (1 for radiographs).
        dims: channels of the four stages (VAN-B0: 32, 64, 160, 256).
        depths: blocks per stage (VAN-B0: 3, 3, 5, 2).
    """

    def __init__(self, in_chans: int = 1, dims: tuple[int, ...] = (32, 64, 160, 256), depths: tuple[int, ...] = (2, 2, 2, 2), mlp_ratios=(8, 8, 4, 4)):
        super().__init__()
        if len(dims) != 4 or len(depths) != 4:
            raise ValueError(f"VAN needs four stages: got dims={dims}, depths={depths}")
        self.dims = tuple(dims)
        self.embeds = nn.ModuleList(
            PatchEmbed(in_chans if i == 0 else dims[i - 1], dims[i], 4 if i == 0 else 2) for i in range(4)
        )
        self.stages = nn.ModuleList(
            nn.Sequential(*[VANBlock(dims[i], mlp_ratios[i]) for _ in range(depths[i])]) for i in range(4)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)

    def stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Run stage ``i`` (embed + blocks + norm) on ``x``."""
        x = self.stages[i](self.embeds[i](x))
        return self.norms[i](x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i in range(4):
            x = self.stage(i, x)
            outs.append(x)
        return outs
