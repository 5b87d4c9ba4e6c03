"""Adapters that turn any network into a ``Denoiser`` (and back).

A denoiser maps VE-form noisy samples x̃ = x0 + s·ε, shape (B, D) or (B, …), and levels s (scalar
or (B,)) to x0 estimates of the same shape. Whatever a network predicts and however it was
trained, its ``NetDenoiser`` answers in these units, so models, the oracle and the optimal loss
meet in one place. Both adapters run on the device of their inputs (the network's own device);
preconditioning is computed there (``Parametrization.coefficients``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from difflens.diffusion.denoiser import Denoiser, Sigma, wide_dtype
from difflens.diffusion.precond import Parametrization
from difflens.errors import DifflensError
from difflens.kernel.oracle import as_sigma

__all__ = ["Denoiser", "DenoiserAsNet", "NetDenoiser", "denoise_batched"]


def _levels(sigma: Sigma, x: torch.Tensor) -> torch.Tensor:
    """Checked levels s (B,) on x's device, float64 where the device has it."""
    return as_sigma(sigma, len(x)).to(device=x.device, dtype=wide_dtype(x.device))


class NetDenoiser(nn.Module):
    """A network ``net(x_in, t_in) → y`` in its own parametrization, seen as a VE-form denoiser.

    ``shape`` is the network's per-sample input shape (e.g. (1, 8, 8)); flat inputs are reshaped
    to it and answers reshaped back. Outputs with a ``.sample`` field (diffusers) are unwrapped.
    ``device``: where the network is moved; inputs must be on the same device."""

    def __init__(
        self,
        net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        param: Parametrization,
        shape: tuple[int, ...] | None = None,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        self.net = net.to(device) if isinstance(net, nn.Module) else net
        self.param = param
        self.shape = tuple(shape) if shape else None

    def forward(self, x: torch.Tensor, sigma: Sigma) -> torch.Tensor:
        s = _levels(sigma, x)
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

    def __init__(self, denoiser: Denoiser, param: Parametrization):
        super().__init__()
        self.denoiser = denoiser
        self.param = param

    def forward(self, x_in: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
        t_in = torch.as_tensor(t_in, device=x_in.device)
        s = self.param.sigma_of_time(t_in.reshape(-1).expand(len(x_in)))
        x = self.param.ve_input(x_in, s)
        return self.param.target_of(self.denoiser(x, s), x, s)


@torch.no_grad()
def denoise_batched(denoiser: Denoiser, x: torch.Tensor, sigma: Sigma, batch_size: int = 512) -> torch.Tensor:
    """Apply a denoiser in batches without gradients (float32 in, float32 out, on x's device)."""
    s = _levels(sigma, x)
    parts = [denoiser(x[i : i + batch_size], s[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(parts).float() if parts else x.clone()
