"""The ``Denoiser`` protocol and adapters that turn any network into one.

A denoiser maps VE-form noisy samples x̃ = x0 + s·ε, shape (B, D) or (B, …), and levels s (scalar
or (B,)) to x0 estimates of the same shape. Whatever a network predicts and however it was
trained, its ``NetDenoiser`` answers in these units, so models, the oracle and the optimal loss
meet in one place.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from difflens.data import as_dataset
from difflens.diffusion.precond import Parametrization
from difflens.errors import DifflensError
from difflens.kernel import oracle
from difflens.kernel.oracle import as_sigma


@runtime_checkable
class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """E[x0 | x̃] estimate for VE-form x̃ at levels sigma."""


class NetDenoiser(nn.Module):
    """A network ``net(x_in, t_in) → y`` in its own parametrization, seen as a VE-form denoiser.

    ``shape`` is the network's per-sample input shape (e.g. (1, 8, 8)); flat inputs are reshaped
    to it and answers reshaped back. Outputs with a ``.sample`` field (diffusers) are unwrapped."""

    def __init__(self, net, param: Parametrization, shape: tuple[int, ...] | None = None):
        super().__init__()
        self.net = net
        self.param = param
        self.shape = tuple(shape) if shape else None

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = as_sigma(sigma, len(x))
        xin = (x.reshape(len(x), *self.shape) if self.shape else x).float()
        net_x, net_t = self.param.inputs(xin, s)
        try:
            y = self.net(net_x, net_t)
        except TypeError as exc:
            raise DifflensError(f"the network cannot be called as net(x, t): {exc}") from None
        y = getattr(y, "sample", y)
        if not torch.is_tensor(y) or y.shape != xin.shape:
            got = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
            raise DifflensError(
                f"the network returned {got} for inputs of shape {tuple(xin.shape)}; need the same shape"
            )
        return self.param.to_x0(y, xin, s).reshape(x.shape).to(x.dtype)


class DenoiserAsNet(nn.Module):
    """The inverse adapter: a denoiser presented as a raw network in a given parametrization,
    ``net(x_in, t_in) → target`` (e.g. the oracle as an ε-prediction DDPM network)."""

    def __init__(self, denoiser, param: Parametrization):
        super().__init__()
        self.denoiser = denoiser
        self.param = param

    def forward(self, x_in: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
        s = self.param.sigma_of_time(torch.as_tensor(t_in).reshape(-1).expand(len(x_in)))
        x = self.param.ve_input(x_in, s)
        return self.param.target_of(self.denoiser(x, s), x, s)


class OracleDenoiser(nn.Module):
    """The empirical optimal denoiser of a training set (difflens.oracle), as a Denoiser."""

    def __init__(self, data, temperature: float = 1.0, chunk_size: int | None = None):
        super().__init__()
        self.data = as_dataset(data)
        self.temperature = temperature
        self.chunk_size = chunk_size

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = as_sigma(sigma, len(x))
        flat = x.reshape(len(x), -1)
        out = oracle.denoise(flat, self.data, s, self.temperature, chunk_size=self.chunk_size)
        return out.to(x.dtype).reshape(x.shape)


@torch.no_grad()
def denoise_batched(denoiser, x: torch.Tensor, sigma, batch_size: int = 512) -> torch.Tensor:
    """Apply a denoiser in batches without gradients (float32 in, float32 out)."""
    s = as_sigma(sigma, len(x))
    parts = [denoiser(x[i : i + batch_size], s[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(parts).float() if parts else x.clone()
