"""Conditional sampling for any ``denoiser(x, sigma, cond, task)``: the condition is bound into a plain
``Denoiser`` (``models.bind``) and difflens' EDM Heun sampler runs it, with optional stochastic churn
(Karras et al. 2022, Alg. 2)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from difflens.diffusion import samplers
from difflens.lab.distill.models import bind


@torch.no_grad()
def sample(
    denoiser: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    cond: torch.Tensor,
    task: int | torch.Tensor,
    x_shape: tuple[int, ...],
    *,
    steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    churn: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """One sample x ~ p(x | c, k) per condition row: shape (len(cond), *x_shape), on ``device`` (default:
    the denoiser's ``device`` attribute, else the CPU).

    ``churn`` > 0 adds EDM's stochastic noise injection (S_churn, spread over the steps); 0 is the
    deterministic probability-flow ODE solved by Heun's method. The noise comes from ``generator``
    (a CPU generator), so a seed gives the same samples on any device."""
    b = len(cond)
    device = getattr(denoiser, "device", "cpu") if device is None else device
    sig = samplers.edm_sigmas(steps, sigma_min, sigma_max, rho)
    x = torch.randn((b, *x_shape), generator=generator, dtype=torch.float64) * sig[0]
    gen = generator if generator is not None else torch.default_generator
    bound = bind(denoiser, cond.to(device), task)
    out = samplers.sample(bound, x, sig, method="heun", churn=churn, generator=gen, device=device).samples
    return out.float().reshape(b, *x_shape)
