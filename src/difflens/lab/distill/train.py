"""Denoising score matching (DSM) for conditional denoisers, one loss per task, scalarized.

The per-sample loss is EDM's: λ(σ)·‖D(x0 + σε; σ, c, k) − x0‖²/D with λ(σ) = (σ² + σ_d²)/(σ·σ_d)² and
ln σ ~ N(P_mean, P_std²). Each step draws a batch from every task, computes the task losses L_k and
combines them with a ``Scalarization``: linear Σ_k λ_k·L_k, or Tchebycheff max_k λ_k·(L_k − z_k).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from difflens.errors import DifflensError
from difflens.lab.distill.models import CondDenoiser, ConditionalDenoiser


def derive_seed(seed: int, purpose: str) -> int:
    """An independent seed per purpose, so streams seeded alike (e.g. data and sampler noise) never coincide."""
    return int(np.random.SeedSequence([seed, *purpose.encode()]).generate_state(1)[0])


@dataclass
class Pairs:
    """Paired data of one task: conditions (n, *cond_shape) and samples (n, *x_shape)."""

    cond: torch.Tensor
    x: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.cond) != len(self.x):
            raise DifflensError(f"pairs need one condition per sample, got {len(self.cond)} and {len(self.x)}")

    def __len__(self) -> int:
        return len(self.x)

    def __add__(self, other: Pairs) -> Pairs:
        return Pairs(torch.cat([self.cond, other.cond]), torch.cat([self.x, other.x]))

    def take(self, idx: slice | torch.Tensor | np.ndarray) -> Pairs:
        return Pairs(self.cond[idx], self.x[idx])


@dataclass(frozen=True)
class Scalarization:
    """How task losses L_k combine into one objective: a frozen setting, shared freely between fits.

    kind 'linear': Σ λ_k·L_k. kind 'tchebycheff': max_k λ_k·(L_k − z_k) (z = ``ideal``, default 0).
    Tchebycheff sets the weights from a running average of the (noisy) minibatch losses; that average
    is per-fit state, held by the ``Objective`` that ``start()`` returns (one per training run, so no
    fit sees another's losses; docs/method.md, "Distillation"). ``smooth`` > 0 gives the smooth max
    μ·logsumexp(λ(L − z)/μ) with μ = smooth × mean|λ(L − z)| (scale-free), whose gradient weights are
    λ_k·softmax_k; ``smooth`` = 0 is the subgradient (all weight λ_k on the current worst task).
    """

    kind: str = "linear"
    lam: tuple[float, ...] | None = None
    smooth: float = 0.1
    ideal: tuple[float, ...] | None = None
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "tchebycheff"):
            raise DifflensError(f"unknown scalarization {self.kind!r}; choose linear or tchebycheff")
        if self.smooth < 0 or not 0 <= self.momentum < 1:
            raise DifflensError(f"need smooth ≥ 0 and 0 ≤ momentum < 1, got {self.smooth}, {self.momentum}")
        for name in ("lam", "ideal"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, tuple(float(t) for t in torch.as_tensor(v).reshape(-1).tolist()))
        lam = self.lam
        if lam is not None and (not lam or min(lam) < 0 or sum(lam) <= 0):
            raise DifflensError(f"task weights must be non-negative with a positive sum, got {lam}")

    def _lam(self, k: int) -> torch.Tensor:
        if self.lam is None:
            return torch.full((k,), 1.0 / k, dtype=torch.float64)
        if len(self.lam) != k:
            raise DifflensError(f"{len(self.lam)} task weights given for {k} tasks")
        lam = torch.tensor(self.lam, dtype=torch.float64)
        return lam / lam.sum()

    def _gap(self, losses: torch.Tensor) -> torch.Tensor:
        if self.ideal is not None and len(self.ideal) != len(losses):
            raise DifflensError(f"{len(self.ideal)} ideal-point values given for {len(losses)} tasks")
        z = torch.zeros_like(losses) if self.ideal is None else torch.tensor(self.ideal).to(losses)
        return self._lam(len(losses)) * (losses - z)

    def weights(self, losses: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """Gradient weight of each task at the given loss values (float64, length K)."""
        losses = torch.as_tensor(losses, dtype=torch.float64).detach()
        lam = self._lam(len(losses))
        if self.kind == "linear":
            return lam
        gap = self._gap(losses)
        if self.smooth == 0:
            return lam * torch.nn.functional.one_hot(gap.argmax(), len(gap)).to(lam)
        mu = self.smooth * gap.abs().mean().clamp_min(1e-12)
        return lam * torch.softmax(gap / mu, dim=0)

    def value(self, losses: Sequence[float] | torch.Tensor) -> float:
        """The scalarized objective at the given task losses (for reports and Pareto fronts)."""
        losses = torch.as_tensor(losses, dtype=torch.float64)
        if self.kind == "linear":
            return float((self._lam(len(losses)) * losses).sum())
        return float(self._gap(losses).max())

    def start(self) -> Objective:
        """A fresh training objective (its own running loss average) for one fit."""
        return Objective(self)


class Objective:
    """One fit's scalarized objective: ``scalarization`` plus the running average of its task losses."""

    def __init__(self, scalarization: Scalarization):
        self.scalarization = scalarization
        self.running: torch.Tensor | None = None

    def __call__(self, losses: torch.Tensor) -> torch.Tensor:
        """The training objective for one step's task losses: Σ w_k L_k with w from ``weights``."""
        s = self.scalarization
        if s.kind == "linear":
            return (s._lam(len(losses)).to(losses) * losses).sum()
        det = losses.detach().to(torch.float64)
        self.running = det if self.running is None else s.momentum * self.running + (1 - s.momentum) * det
        return (s.weights(self.running).to(losses) * losses).sum()

    def current_weights(self, losses: torch.Tensor) -> torch.Tensor:
        """The task weights in force: at the running average once there is one, else at ``losses``."""
        return self.scalarization.weights(self.running if self.running is not None else losses.detach())


@dataclass
class DSMConfig:
    """DSM training settings. p_mean defaults to ln(σ_data) − 0.5 (EDM's −1.2 at σ_data = 0.5)."""

    steps: int = 2000
    batch: int = 128
    lr: float = 5e-3
    weight_decay: float = 0.0
    p_mean: float | None = None
    p_std: float = 1.2
    grad_clip: float = 1.0
    seed: int = 0

    def check(self) -> None:
        if self.steps < 1 or self.batch < 1 or not self.lr > 0 or self.p_std <= 0:
            raise DifflensError(f"bad training settings: {self}")


@dataclass
class TrainLog:
    """Per-task minibatch losses and gradient weights, every ``every`` steps."""

    every: int
    losses: list[list[float]] = field(default_factory=list)
    weights: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"every": self.every, "losses": self.losses, "weights": self.weights}


def log_sigma_mean(config: DSMConfig, sigma_data: float) -> float:
    return config.p_mean if config.p_mean is not None else math.log(sigma_data) - 0.5


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def dsm_loss(
    denoiser: ConditionalDenoiser,
    x: torch.Tensor,
    cond: torch.Tensor,
    task: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Per-sample EDM-weighted DSM loss, mean over dimensions: shape (B,)."""
    b = len(x)
    s = sigma.reshape(b, *([1] * (x.ndim - 1)))
    d = denoiser(x + s * noise, sigma, cond, task)
    return edm_weight(sigma, denoiser.sigma_data) * (d - x).reshape(b, -1).pow(2).mean(dim=1)


def train_dsm(
    denoiser: CondDenoiser,
    data: list[Pairs],
    *,
    config: DSMConfig | None = None,
    scalarization: Scalarization | None = None,
    progress: Callable[[int], None] | None = None,
    log_every: int = 50,
    device: torch.device | str | None = None,
) -> TrainLog:
    """Train ``denoiser`` in place on K tasks (task id k = position in ``data``) by DSM, on ``device``
    (default: where the denoiser lives).

    Each step draws ``batch`` pairs per task (with replacement), one σ and one ε per pair (from a CPU
    generator, so a seed gives the same run on any device); Adam with cosine learning-rate decay to
    10 %. ``progress(n)`` is called with the steps done since its last call."""
    config = config or DSMConfig()
    config.check()
    objective = (scalarization or Scalarization()).start()
    if not data or any(len(p) == 0 for p in data):
        raise DifflensError("every task needs at least one training pair")
    g = torch.Generator().manual_seed(derive_seed(config.seed, "train"))
    device = denoiser.device if device is None else torch.device(device)
    denoiser.to(device)
    opt = torch.optim.Adam(denoiser.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / config.steps))
    )
    k = len(data)
    task = torch.arange(k).repeat_interleave(config.batch).to(device)
    p_mean = log_sigma_mean(config, denoiser.sigma_data)
    log = TrainLog(log_every)
    denoiser.train()
    pending = 0
    for step in range(config.steps):
        idx = [torch.randint(len(p), (config.batch,), generator=g) for p in data]
        x = torch.cat([p.x[i] for p, i in zip(data, idx, strict=True)])
        cond = torch.cat([p.cond[i] for p, i in zip(data, idx, strict=True)]).to(device)
        sigma = (p_mean + config.p_std * torch.randn(len(x), generator=g)).exp().to(device)
        noise = torch.randn(x.shape, generator=g).to(device)
        x = x.to(device)
        per = dsm_loss(denoiser, x, cond, task, sigma, noise)
        losses = per.reshape(k, config.batch).mean(dim=1)
        loss = objective(losses)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(denoiser.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == config.steps - 1:
            log.losses.append(losses.detach().tolist())
            log.weights.append(objective.current_weights(losses).tolist())
        pending += 1
        if progress and (pending == 100 or step == config.steps - 1):
            progress(pending)
            pending = 0
    denoiser.eval()
    return log


@torch.no_grad()
def eval_dsm(
    denoiser: ConditionalDenoiser,
    data: list[Pairs],
    *,
    config: DSMConfig | None = None,
    draws: int = 4,
    seed: int = 1234,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Mean DSM loss per task on fixed noise draws (``draws`` (σ, ε) per pair), as a float64 CPU tensor
    (K,); the denoiser runs on ``device`` (default: where it lives)."""
    config = config or DSMConfig()
    device = getattr(denoiser, "device", "cpu") if device is None else device
    g = torch.Generator().manual_seed(derive_seed(seed, "eval"))
    p_mean = log_sigma_mean(config, denoiser.sigma_data)
    out = []
    for k, p in enumerate(data):
        total = 0.0
        for _ in range(draws):
            sigma = (p_mean + config.p_std * torch.randn(len(p), generator=g)).exp().to(device)
            noise = torch.randn(p.x.shape, generator=g).to(device)
            task = torch.full((len(p),), k, device=device)
            per = dsm_loss(denoiser, p.x.to(device), p.cond.to(device), task, sigma, noise)
            total += float(per.double().mean())
        out.append(total / draws)
    return torch.tensor(out, dtype=torch.float64)
