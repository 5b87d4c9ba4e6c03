"""Small conditional denoisers: D(x; σ, c, k) with a condition c and a task id k as inputs.

The networks predict EDM's F; ``CondDenoiser`` wraps one in EDM preconditioning (Karras et al. 2022),
the shared ``Parametrization`` with the ``edm`` target and this data's σ_d:
D = c_skip·x + c_out·F(c_in·x, c_noise, c, k) (docs/method.md). Every denoiser in this package
(trained or analytic) has the call signature ``denoiser(x, sigma, cond, task) -> E[x0 | x, c, k]``
with x in VE form x0 + σ·ε; ``bind(cond, task)`` turns one into a plain ``Denoiser`` for the samplers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from difflens.diffusion.precond import Parametrization
from difflens.diffusion.processes import EDM
from difflens.errors import DifflensError
from difflens.models import Denoiser


class ConditionalDenoiser(Protocol):
    """``denoiser(x, sigma, cond, task) -> E[x0 | x, c, k]`` with the σ_data of its EDM loss weight: a
    ``CondDenoiser`` or a specialist (what the DSM loss evaluates)."""

    @property
    def sigma_data(self) -> float: ...

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor, task: torch.Tensor
    ) -> torch.Tensor: ...


class FourierEmbedding(nn.Module):
    """Fixed random Fourier features of a scalar (the noise level)."""

    def __init__(self, size: int = 32, scale: float = 4.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(size // 2, generator=g) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = 2 * math.pi * t[:, None] * self.freqs[None, :]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class CondMLP(nn.Module):
    """MLP on [x, c, embed(c_noise), embed(task)] for flat vectors (x: (B, dim), c: (B, cond_dim))."""

    def __init__(self, dim: int, cond_dim: int, num_tasks: int = 1, width: int = 128, depth: int = 3, emb: int = 32):
        super().__init__()
        if min(dim, width, depth, num_tasks) < 1 or cond_dim < 0:
            raise DifflensError(f"CondMLP needs positive sizes, got dim={dim} width={width} depth={depth}")
        self.noise_emb = FourierEmbedding(emb)
        self.task_emb = nn.Embedding(num_tasks, emb)
        layers: list[nn.Module] = []
        size = dim + cond_dim + 2 * emb
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.SiLU()]
            size = width
        layers.append(nn.Linear(size, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, cond.reshape(len(x), -1), self.noise_emb(c_noise), self.task_emb(task)], dim=1)
        return self.net(h)


class CondConv(nn.Module):
    """Small conv net for images: x and the condition image as channels, noise/task by FiLM per block.

    x: (B, C, H, W); cond: (B, Cc, H, W) (e.g. a degraded version of the image)."""

    def __init__(self, channels: int, cond_channels: int, num_tasks: int = 1, width: int = 32, depth: int = 3):
        super().__init__()
        if min(channels, width, depth, num_tasks) < 1:
            raise DifflensError(f"CondConv needs positive sizes, got channels={channels} width={width} depth={depth}")
        emb = 32
        self.noise_emb = FourierEmbedding(emb)
        self.task_emb = nn.Embedding(num_tasks, emb)
        self.inp = nn.Conv2d(channels + cond_channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(depth))
        self.films = nn.ModuleList(nn.Linear(2 * emb, 2 * width) for _ in range(depth))
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        e = torch.cat([self.noise_emb(c_noise), self.task_emb(task)], dim=1)
        h = self.inp(torch.cat([x, cond], dim=1))
        for conv, film in zip(self.blocks, self.films, strict=True):
            scale, shift = film(e)[:, :, None, None].chunk(2, dim=1)
            h = h + conv(nn.functional.silu(h * (1 + scale) + shift))
        return self.out(nn.functional.silu(h))


class CondDenoiser(nn.Module):
    """EDM-preconditioned wrapper: ``denoiser(x, sigma, cond, task)`` → estimate of E[x0 | x, c, k].

    ``x_shape`` is the shape of one sample; the wrapper reshapes flat inputs for image networks. The
    levels are taken in x's dtype; inputs are sent to the network's ``device`` (where it was moved) and
    the estimate comes back on x's device, so callers on the CPU need not know where the network is."""

    def __init__(
        self, net: nn.Module, x_shape: tuple[int, ...], sigma_data: float = 0.5, device: torch.device | str = "cpu"
    ):
        super().__init__()
        if not sigma_data > 0:
            raise DifflensError(f"sigma_data must be > 0, got {sigma_data}")
        self.net = net.to(device)
        self.x_shape = tuple(x_shape)
        self.param = Parametrization(EDM(), "edm", sigma_data=float(sigma_data))

    @property
    def sigma_data(self) -> float:
        return self.param.sigma_data

    @property
    def device(self) -> torch.device:
        """Where the network's parameters live."""
        return next(self.net.parameters()).device

    def forward(
        self, x: torch.Tensor, sigma: float | torch.Tensor, cond: torch.Tensor, task: int | torch.Tensor
    ) -> torch.Tensor:
        b, dev = len(x), self.device
        sigma = torch.as_tensor(sigma, dtype=x.dtype).to(dev).reshape(-1).expand(b)
        task = torch.as_tensor(task, dtype=torch.long).to(dev).reshape(-1).expand(b)
        xs = x.to(dev).reshape(b, *self.x_shape)
        net_x, c_noise = self.param.inputs(xs, sigma)
        out = self.param.to_x0(self.net(net_x, c_noise, cond.to(dev), task), xs, sigma)
        return out.reshape(x.shape).to(x.device)


def bind(
    denoiser: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    cond: torch.Tensor,
    task: int | torch.Tensor,
) -> Denoiser:
    """A conditional ``denoiser(x, sigma, cond, task)`` with its condition rows and task fixed, as a plain
    ``Denoiser`` (x, sigma) → x̂0 for the samplers: x is passed in float32, sigma as one value per row."""
    b = len(cond)
    task = torch.as_tensor(task, dtype=torch.long).reshape(-1).expand(b)

    def bound(x: torch.Tensor, sigma) -> torch.Tensor:
        return denoiser(x.float(), torch.full((b,), float(sigma), device=x.device), cond, task)

    return bound


def make_denoiser(
    x_shape: tuple[int, ...],
    cond_shape: tuple[int, ...],
    *,
    num_tasks: int = 1,
    arch: str = "mlp",
    width: int = 128,
    depth: int = 3,
    sigma_data: float = 0.5,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> CondDenoiser:
    """A fresh conditional denoiser: ``arch`` 'mlp' (flat vectors) or 'conv' (x_shape and cond_shape (C, H, W))."""
    torch.manual_seed(seed)
    if arch == "mlp":
        net = CondMLP(math.prod(x_shape), math.prod(cond_shape), num_tasks, width, depth)
    elif arch == "conv":
        if len(x_shape) != 3 or len(cond_shape) != 3 or x_shape[1:] != cond_shape[1:]:
            raise DifflensError(f"arch conv needs (C, H, W) images of equal size, got {x_shape} and {cond_shape}")
        net = CondConv(x_shape[0], cond_shape[0], num_tasks, width, depth)
    else:
        raise DifflensError(f"unknown arch {arch!r}; choose mlp or conv")
    return CondDenoiser(net, x_shape, sigma_data, device)
