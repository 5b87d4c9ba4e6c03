"""Samplers for any ``Denoiser`` D(x (B, D), sigma) → x0_hat (B, D) in VE form (x = x0 + s·ε).

The score is (D(x, s) − x)/s². ODE: EDM's probability-flow sampler dx/ds = (x − D(x, s))/s on the
ρ = 7 noise discretization, Euler or Heun (second order, Karras et al. 2022), optionally with EDM's
stochastic churn (Algorithm 2). SDE: the reverse VE SDE
by ancestral steps, optionally with Langevin corrector steps (predictor–corrector, Song et al. 2021).
The last step always goes to s = 0 with x ← D(x, s_last).

The samplers of Zhou, Zhang & Wright (docs/method.md, "Smoothing"): ``pc-song`` is Song et al.'s
predictor–corrector as they run it — a Langevin corrector at s *before* the reverse-diffusion predictor
s → s' (noise √(s² − s'²)), corrector steps set from batch-averaged norms, on ``geometric_sigmas``
(1000 levels 50 → 0.01); ``sigma-star`` is the σ*-adaptive step x ← x + α·σ*(x)²·score(x) for
noise-unconditioned models, whose score does not depend on s. ``record=True`` keeps every state, so
trajectories can be plotted and analysed (trajectory overlap, expansion factors). States live on
the chosen device; random draws come from a CPU generator, so a seed gives the same samples on any device.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from difflens.diffusion.denoiser import Denoiser, wide_dtype
from difflens.errors import DifflensError

METHODS = ("euler", "heun", "sde", "pc", "pc-song", "sigma-star")


def edm_sigmas(steps: int = 32, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """EDM noise levels s_0 = sigma_max > … > s_{steps−1} = sigma_min, then a final 0 (float64)."""
    if steps < 1 or not 0 < sigma_min < sigma_max or rho <= 0:
        raise DifflensError(f"bad sampler grid: steps={steps}, sigma_min={sigma_min}, sigma_max={sigma_max}, rho={rho}")
    if steps == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    i = torch.arange(steps, dtype=torch.float64) / (steps - 1)
    s = (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


def geometric_sigmas(steps: int = 1000, sigma_min: float = 0.01, sigma_max: float = 50.0) -> torch.Tensor:
    """``steps`` geometric levels sigma_max > … > sigma_min, then a final 0 (float64): the VE SDE grid of
    Song et al. 2021 that Zhou et al. sample on (defaults 1000 levels, 50 → 0.01)."""
    if steps < 1 or not 0 < sigma_min < sigma_max:
        raise DifflensError(f"bad sampler grid: steps={steps}, sigma_min={sigma_min}, sigma_max={sigma_max}")
    if steps == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    s = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64))
    s[0], s[-1] = sigma_max, sigma_min  # exact ends (exp∘log rounds)
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


@dataclass
class Trajectory:
    """Final samples and, when recorded, the state at each noise level (states[k] is at sigmas[k])."""

    samples: torch.Tensor
    sigmas: torch.Tensor
    states: list[torch.Tensor] = field(default_factory=list)

    def cpu(self) -> Trajectory:
        """The same trajectory with its samples and states on the CPU (for analyses and writing)."""
        return Trajectory(self.samples.cpu(), self.sigmas.cpu(), [s.cpu() for s in self.states])


def _d(denoiser: Denoiser, x: torch.Tensor, s: float) -> torch.Tensor:
    out = torch.as_tensor(denoiser(x, s)).to(x.dtype)
    if out.shape != x.shape:
        raise DifflensError(f"the denoiser returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
    return out


def ode_step(denoiser: Denoiser, x: torch.Tensor, s: float, s_next: float, method: str = "heun") -> torch.Tensor:
    """One probability-flow step from s to s_next (Heun's correction unless s_next = 0)."""
    x0 = _d(denoiser, x, s)
    if s_next == 0:
        return x0  # the Euler step to 0 is x0 itself; return it without rounding
    d = (x - x0) / s
    x_next = x + (s_next - s) * d
    if method == "heun" and s_next > 0:
        d2 = (x_next - _d(denoiser, x_next, s_next)) / s_next
        x_next = x + (s_next - s) * 0.5 * (d + d2)
    return x_next


def sde_step(
    denoiser: Denoiser,
    x: torch.Tensor,
    s: float,
    s_next: float,
    generator: torch.Generator,
    corrector_steps: int = 0,
    snr: float = 0.16,
) -> torch.Tensor:
    """Reverse VE SDE step from s to s_next, then Langevin corrector steps at s_next.

    The predictor is the ancestral step x' = x + (s² − s'²)·score + s'·√(1 − s'²/s²)·z: the same drift
    as Euler–Maruyama but the noise of the exact Gaussian posterior p(x_s' | x_s, x0 = D(x_s)), so
    large steps keep the state at the noise level it claims (Euler–Maruyama's noise √(s² − s'²)
    leaves it too noisy by s/s')."""
    if s_next == 0:
        return _d(denoiser, x, s)
    var = s * s - s_next * s_next
    score = (_d(denoiser, x, s) - x) / (s * s)
    noise = s_next * math.sqrt(var) / s
    x = x + var * score + noise * _randn(x, generator)
    for _ in range(corrector_steps):
        score = (_d(denoiser, x, s_next) - x) / (s_next * s_next)
        z = _randn(x, generator)
        ratio = torch.linalg.vector_norm(z, dim=1) / torch.linalg.vector_norm(score, dim=1).clamp_min(1e-30)
        eps = (2.0 * (snr * ratio) ** 2)[:, None]
        x = x + eps * score + torch.sqrt(2.0 * eps) * z
    return x


def song_pc_step(
    denoiser: Denoiser,
    x: torch.Tensor,
    s: float,
    s_next: float,
    generator: torch.Generator,
    corrector_steps: int = 1,
    snr: float = 0.16,
) -> torch.Tensor:
    """Song et al.'s PC step as Zhou et al. use it: first ``corrector_steps`` Langevin steps at s,

        ε = 2·(snr·mean_b‖z_b‖ / mean_b‖score_b‖)²,   x ← x + ε·score + √(2ε)·z

    (one ε for the whole batch), then the reverse-diffusion predictor s → s',
    x ← x + (s² − s'²)·score + √(s² − s'²)·z, whose noise-free mean is returned at s' = 0."""
    for _ in range(corrector_steps):
        score = (_d(denoiser, x, s) - x) / (s * s)
        z = _randn(x, generator)
        g = torch.linalg.vector_norm(score, dim=1).mean().clamp_min(1e-30)
        eps = 2.0 * (snr * torch.linalg.vector_norm(z, dim=1).mean() / g) ** 2
        x = x + eps * score + torch.sqrt(2.0 * eps) * z
    var = s * s - s_next * s_next
    x_mean = x + var * (_d(denoiser, x, s) - x) / (s * s)
    if s_next == 0:
        return x_mean
    return x_mean + math.sqrt(var) * _randn(x, generator)


def sigma_star_step(denoiser: Denoiser, x: torch.Tensor, s: float, alpha: float = 0.1) -> torch.Tensor:
    """σ*-adaptive step for a noise-unconditioned score: x ← x + α·σ*²·score(x) with σ*(x)² = D/‖score(x)‖²,
    the level at whose typical shell a Gaussian score has this norm (‖x − μ‖² = D·σ², ‖score‖ = √D/σ), so
    near one training point μ the step moves a fraction α of the way to μ. s only reads the score out of D."""
    score = (_d(denoiser, x, s) - x) / (s * s)
    shell2 = x.shape[1] / (score * score).sum(1).clamp_min(1e-300)
    return x + alpha * shell2[:, None] * score


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    x_init: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    method: str = "heun",
    seed: int = 0,
    generator: torch.Generator | None = None,
    churn: float = 0.0,
    corrector_steps: int = 1,
    snr: float = 0.16,
    alpha: float = 0.1,
    record: bool = False,
    on_step: Callable[[int], None] | None = None,
    device: torch.device | str = "cpu",
) -> Trajectory:
    """Run a sampler from x_init (already at noise level sigmas[0]) down the grid ``sigmas`` (ending in 0).

    method: euler / heun (probability-flow ODE), sde (reverse SDE), pc (SDE + ``corrector_steps``
    Langevin steps per level with signal-to-noise ``snr``, per sample, after the predictor), pc-song
    (Zhou et al.'s: corrector first, batch-averaged, reverse-diffusion predictor; ``song_pc_step``),
    sigma-star (``sigma_star_step`` with step fraction ``alpha`` at every level; no final jump).
    ``churn`` > 0 (ODE methods) raises each
    level s to s·(1 + γ), γ = min(churn/steps, √2 − 1), by fresh noise before the step (EDM's
    S_churn, spread over all steps). Deterministic given ``seed`` (or a CPU ``generator``, which then
    supplies the noise). States are float64 (float32 on a device without float64) on ``device``."""
    if method not in METHODS:
        raise DifflensError(f"unknown sampler {method!r}; choose one of {', '.join(METHODS)}")
    sig = [float(v) for v in torch.as_tensor(sigmas, dtype=torch.float64)]
    if len(sig) < 2 or sig[-1] != 0 or any(a <= b for a, b in itertools.pairwise(sig)):
        raise DifflensError("sampler noise levels must decrease strictly and end in 0")
    if churn < 0 or (churn > 0 and method not in ("euler", "heun")):
        raise DifflensError(
            f"churn must be ≥ 0 and applies to the ODE samplers (euler, heun), got {churn} for {method}"
        )
    if corrector_steps < 0 or not snr > 0 or not 0 < alpha <= 1:
        raise DifflensError(
            f"need corrector_steps ≥ 0, snr > 0 and 0 < alpha ≤ 1, got {corrector_steps}, {snr}, {alpha}"
        )
    device = torch.device(device)
    x = torch.as_tensor(x_init).to(device=device, dtype=wide_dtype(device)).reshape(len(x_init), -1).clone()
    # seed: a stream apart from initial_noise's, or the noise would repeat x_T
    gen = generator if generator is not None else seeded_generator(seed, 1)
    gamma = min(churn / (len(sig) - 1), math.sqrt(2) - 1) if churn > 0 else 0.0
    states = []
    for k, (s, s_next) in enumerate(itertools.pairwise(sig)):
        if record:
            states.append(x.clone())
        if gamma > 0:
            s_hat = s * (1 + gamma)
            x = x + math.sqrt(s_hat**2 - s**2) * _randn(x, gen)
            s = s_hat
        if method in ("euler", "heun"):
            x = ode_step(denoiser, x, s, s_next, method)
        elif method == "pc-song":
            x = song_pc_step(denoiser, x, s, s_next, gen, corrector_steps, snr)
        elif method == "sigma-star":
            x = sigma_star_step(denoiser, x, s, alpha)
        else:
            x = sde_step(denoiser, x, s, s_next, gen, corrector_steps if method == "pc" else 0, snr)
        if on_step is not None:
            on_step(k)
    return Trajectory(x, torch.tensor(sig, dtype=torch.float64), states)


def initial_noise(
    n: int, dim: int, sigma_max: float, seed: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """x_T = sigma_max · ε, seeded (float64, float32 on a device without it), on ``device``."""
    eps = torch.randn(n, dim, generator=seeded_generator(seed, 0), dtype=torch.float64)
    device = torch.device(device)
    return (sigma_max * eps).to(device=device, dtype=wide_dtype(device))


def _randn(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, drawn on the CPU generator (float64) and moved to like's device."""
    return torch.randn(like.shape, generator=generator, dtype=torch.float64).to(device=like.device, dtype=like.dtype)


def seeded_generator(seed: int, stream: int) -> torch.Generator:
    """Independent CPU torch streams from one user seed (stream 0: initial noise, 1: sampler noise)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stream]).generate_state(1)[0]))
