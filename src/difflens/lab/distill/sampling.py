"""Conditional sampling for any ``denoiser(x, sigma, cond, task)``: the condition is bound into an
unconditional ``(x, sigma) -> x0_hat`` denoiser and difflens.samplers' EDM Heun step runs it, with
optional stochastic churn (Karras et al. 2022, Alg. 2)."""

from __future__ import annotations

import math

import torch

from difflens.diffusion.samplers import edm_sigmas, ode_step


@torch.no_grad()
def sample(
    denoiser,
    cond: torch.Tensor,
    task,
    x_shape: tuple[int, ...],
    *,
    steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    churn: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One sample x ~ p(x | c, k) per condition row: shape (len(cond), *x_shape).

    ``churn`` > 0 adds EDM's stochastic noise injection (S_churn, spread over the steps); 0 is the
    deterministic probability-flow ODE solved by Heun's method."""
    b = len(cond)
    task = torch.as_tensor(task, dtype=torch.long).reshape(-1).expand(b)
    sig = edm_sigmas(steps, sigma_min, sigma_max, rho)
    x = torch.randn((b, *x_shape), generator=generator, dtype=torch.float64) * sig[0]
    gamma = min(churn / steps, math.sqrt(2) - 1) if churn > 0 else 0.0

    def bound(x, s):
        return denoiser(x.float(), torch.full((b,), float(s)), cond, task)

    for i in range(steps):
        s_cur, s_next = float(sig[i]), float(sig[i + 1])
        if gamma > 0:
            s_hat = s_cur * (1 + gamma)
            x = x + math.sqrt(s_hat**2 - s_cur**2) * torch.randn(x.shape, generator=generator, dtype=torch.float64)
            s_cur = s_hat
        x = ode_step(bound, x, s_cur, s_next, "heun")
    return x.float()
