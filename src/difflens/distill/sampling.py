"""Conditional samplers for any ``denoiser(x, sigma, cond, task)``: EDM's Heun ODE sampler with
optional stochastic churn (Karras et al. 2022, Alg. 2), on the σ grid σ_i = (σ_max^{1/ρ} + i/(N−1)·
(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ followed by σ = 0."""

from __future__ import annotations

import math

import torch

from difflens.errors import DifflensError


def edm_sigmas(steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """Decreasing noise levels σ_0 = σ_max … σ_{N−1} = σ_min, then 0 (length steps + 1, float64)."""
    if steps < 1 or not 0 < sigma_min < sigma_max:
        raise DifflensError(f"sampler needs steps ≥ 1 and 0 < sigma_min < sigma_max, got {steps}, {sigma_min}")
    i = torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)
    s = (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


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

    def d(x, s):
        out = denoiser(x.float(), torch.full((b,), float(s)), cond, task)
        return (x - out.double()) / s

    for i in range(steps):
        s_cur, s_next = float(sig[i]), float(sig[i + 1])
        if gamma > 0:
            s_hat = s_cur * (1 + gamma)
            x = x + math.sqrt(s_hat**2 - s_cur**2) * torch.randn(x.shape, generator=generator, dtype=torch.float64)
            s_cur = s_hat
        k1 = d(x, s_cur)
        x_next = x + (s_next - s_cur) * k1
        if s_next > 0:
            x_next = x + (s_next - s_cur) * 0.5 * (k1 + d(x_next, s_next))
        x = x_next
    return x.float()
