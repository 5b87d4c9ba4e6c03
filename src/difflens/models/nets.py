"""Tiny reference networks for CPU training: an MLP on flat samples and a small U-Net on images.

Both take (x_in, t_in) with a scalar time input per sample (t, or EDM's c_noise) embedded by fixed
random Fourier features, and return a prediction of x_in's shape. ``build_net`` rebuilds one
from the ``arch`` dict stored in difflens checkpoints.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from difflens.errors import DifflensError


class FourierTime(nn.Module):
    """Random Fourier features of a scalar time input (fixed, seeded; Tancik et al. style)."""

    def __init__(self, dim: int, scale: float = 4.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=g) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = 2 * math.pi * t.reshape(-1, 1).float() * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class TinyMLP(nn.Module):
    """Residual MLP on flattened samples; the time embedding is added in every block."""

    def __init__(self, dim: int, width: int = 256, depth: int = 3, emb: int = 64):
        super().__init__()
        self.time = nn.Sequential(FourierTime(emb), nn.Linear(emb, width), nn.SiLU())
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.temb = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.out = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        emb = self.time(t.expand(len(x)) if t.numel() == 1 else t)
        h = self.inp(x.reshape(len(x), -1))
        for lin, te, norm in zip(self.blocks, self.temb, self.norms, strict=True):
            h = h + lin(nn.functional.silu(norm(h) + te(emb)))
        return self.out(nn.functional.silu(h)).reshape(shape)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(math.gcd(8, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(emb, cout)
        self.norm2 = nn.GroupNorm(math.gcd(8, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.temb(emb)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


class SmallUNet(nn.Module):
    """Two-resolution U-Net (one down/up step) for small images of shape (C, H, W), H and W even."""

    def __init__(self, channels: int = 1, width: int = 32, emb: int = 64):
        super().__init__()
        self.time = nn.Sequential(FourierTime(emb), nn.Linear(emb, emb), nn.SiLU())
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.enc1 = _ResBlock(width, width, emb)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.enc2 = _ResBlock(2 * width, 2 * width, emb)
        self.mid = _ResBlock(2 * width, 2 * width, emb)
        self.up = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)
        self.dec1 = _ResBlock(2 * width, width, emb)
        self.out = nn.Sequential(
            nn.GroupNorm(math.gcd(8, width), width), nn.SiLU(), nn.Conv2d(width, channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time(t.expand(len(x)) if t.numel() == 1 else t)
        h1 = self.enc1(self.inp(x), emb)
        h2 = self.mid(self.enc2(self.down(h1), emb), emb)
        return self.out(self.dec1(torch.cat([self.up(h2), h1], dim=1), emb))


ARCHS = ("mlp", "unet")


def image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) for a dataset sample shape: (H, W) → (1, H, W); (C, H, W) as given."""
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 3:
        return tuple(shape)
    raise DifflensError(f"the U-Net needs image data of shape (H, W) or (C, H, W), got samples of shape {shape}")


def build_net(arch: dict) -> nn.Module:
    """A fresh network from its description: {'name': 'mlp', 'dim', 'width', 'depth'} or
    {'name': 'unet', 'shape': [C, H, W], 'width'}."""
    name = arch.get("name")
    if name == "mlp":
        return TinyMLP(int(arch["dim"]), int(arch.get("width", 256)), int(arch.get("depth", 3)))
    if name == "unet":
        c, h, w = arch["shape"]
        if h % 2 or w % 2:
            raise DifflensError(f"the U-Net needs even image height and width, got {h}×{w}")
        return SmallUNet(int(c), int(arch.get("width", 32)))
    raise DifflensError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHS)}")


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
