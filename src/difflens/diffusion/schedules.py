"""Noise-level schedules for training: where to sample s and how to weight each level's loss.

Every schedule has one interface, usable in any torch training loop::

    s = schedule.sample(batch, generator)        # (B,) float64 noise levels (VE-equivalent)
    loss = (schedule.weight(s) * per_sample_loss).mean()
    schedule.update(s, per_sample_loss)          # running per-level loss (adaptive schedules)

``LogNormal`` is EDM's ln s ~ N(−1.2, 1.2²); ``UniformT`` draws t ~ U(0, 1] of a process;
``OptimalLossSchedule`` is Xu et al.'s schedule from the optimal loss J*(s) (docs/method.md, "Training schedules"):
weight w(s) = a·min(1/J*(s), w_max) (+ an optional Gaussian bump in ln s), and density over
ln s proportional to w(s)·(J_θ(s) − J*(s)), with J_θ a running per-bin average of the model's loss,
mixed with a uniform floor so no level is starved. Losses and J* are in the training target's units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from difflens.data import as_dataset
from difflens.diffusion.estimators import estimate_level, level_rng, make_estimator
from difflens.diffusion.processes import Process
from difflens.errors import DifflensError


def _uniform(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


@dataclass
class LogNormal:
    """EDM's training distribution: ln s ~ N(mean, std²), unit weight."""

    mean: float = -1.2
    std: float = 1.2
    name = "edm"

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.exp(self.mean + self.std * torch.randn(n, generator=generator, dtype=torch.float64))

    def weight(self, s: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(torch.as_tensor(s, dtype=torch.float64))

    def update(self, s: torch.Tensor, losses: torch.Tensor) -> None:
        """Fixed schedule: nothing to learn."""

    def quadrature(self, n: int = 4001) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(s, mass, weight) for weighted totals (see optimal_loss.weighted_total)."""
        u = np.linspace(self.mean - 6 * self.std, self.mean + 6 * self.std, n)
        mass = np.exp(-0.5 * ((u - self.mean) / self.std) ** 2) / (self.std * math.sqrt(2 * math.pi)) * (u[1] - u[0])
        return np.exp(u), mass, np.ones_like(u)

    def describe(self) -> dict:
        return {"name": self.name, "mean": self.mean, "std": self.std}


@dataclass
class UniformT:
    """t ~ U(t_min, 1] of a forward process (DDPM-style training), unit weight."""

    process: Process
    t_min: float = 1e-3
    name = "uniform-t"

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        t = self.t_min + (1.0 - self.t_min) * _uniform(n, generator)
        return torch.as_tensor(self.process.s_of_t(t.numpy()), dtype=torch.float64)

    def weight(self, s: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(torch.as_tensor(s, dtype=torch.float64))

    def update(self, s: torch.Tensor, losses: torch.Tensor) -> None:
        """Fixed schedule: nothing to learn."""

    def quadrature(self, n: int = 4001) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(s, mass, weight) for weighted totals (see optimal_loss.weighted_total)."""
        edges = np.linspace(self.t_min, 1.0, n)
        t = 0.5 * (edges[1:] + edges[:-1])
        s = self.process.s_of_t(t)
        ok = np.isfinite(s) & (s > 0)
        return s[ok], (np.diff(edges) / (1.0 - self.t_min))[ok], np.ones(int(ok.sum()))

    def describe(self) -> dict:
        return {"name": self.name, "process": self.process.name, "t_min": self.t_min}


class OptimalLossSchedule:
    """Xu et al.'s schedule on K equal bins in ln s between sigma_min and sigma_max.

    ``optimal`` holds J*(s) (target units) at the bin centres. The density over ln s is piecewise
    constant: bin k gets mass ∝ w_k·max(J_θ,k − J*_k, 0), mixed as (1 − mix)·that + mix·uniform; until
    every bin has ``warmup`` loss samples the density is uniform."""

    name = "optimal-loss"

    def __init__(
        self,
        optimal,
        *,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        a: float = 1.0,
        w_max: float = 1e3,
        bump: float = 0.0,
        bump_center: float | None = None,
        bump_width: float = 0.5,
        mix: float = 0.1,
        decay: float = 0.99,
        warmup: int = 8,
    ):
        optimal = np.asarray(optimal, dtype=np.float64)
        if optimal.ndim != 1 or len(optimal) < 2:
            raise DifflensError("the optimal-loss schedule needs J* on at least 2 bins")
        if not (0 < sigma_min < sigma_max):
            raise DifflensError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if not (a > 0 and w_max > 0 and 0 <= mix <= 1 and 0 < decay < 1 and bump >= 0 and bump_width > 0):
            raise DifflensError("schedule: need a > 0, w_max > 0, 0 ≤ mix ≤ 1, 0 < decay < 1, bump ≥ 0, bump_width > 0")
        if bump > 0 and bump_center is None:
            raise DifflensError("schedule: a bump needs its centre (bump_center, a noise level)")
        self.edges = np.linspace(math.log(sigma_min), math.log(sigma_max), len(optimal) + 1)
        self.optimal = np.maximum(optimal, 0.0)
        self.a, self.w_max, self.mix, self.decay, self.warmup = a, w_max, mix, decay, warmup
        self.bump, self.bump_center, self.bump_width = bump, bump_center, bump_width
        self.model_loss = np.full(len(optimal), np.nan)
        self.counts = np.zeros(len(optimal), dtype=np.int64)
        self._fixed: np.ndarray | None = None

    @property
    def bins(self) -> int:
        return len(self.optimal)

    @property
    def centers(self) -> np.ndarray:
        return np.exp(0.5 * (self.edges[1:] + self.edges[:-1]))

    def bin_of(self, s) -> np.ndarray:
        u = np.log(np.asarray(s, dtype=np.float64))
        return np.clip(np.searchsorted(self.edges, u, side="right") - 1, 0, self.bins - 1)

    def _weight_np(self, s) -> np.ndarray:
        u = np.log(np.asarray(s, dtype=np.float64))
        centers = np.log(self.centers)
        j_star = np.exp(np.interp(u, centers, np.log(np.maximum(self.optimal, 1e-300))))
        w = self.a * np.minimum(1.0 / np.maximum(j_star, 1e-300), self.w_max)
        if self.bump > 0:
            w = w + self.a * self.bump * np.exp(-0.5 * ((u - math.log(self.bump_center)) / self.bump_width) ** 2)
        return w

    def weight(self, s) -> torch.Tensor:
        """w(s) = a·min(1/J*(s), w_max) (+ a·bump·Gaussian in ln s); J* log-interpolated between bins."""
        return torch.as_tensor(self._weight_np(torch.as_tensor(s).double().cpu().numpy()), dtype=torch.float64)

    def update(self, s, losses) -> None:
        """Fold per-sample losses (target units, unweighted) into the running per-bin averages."""
        k = self.bin_of(torch.as_tensor(s).double().cpu().numpy())
        v = torch.as_tensor(losses).detach().double().cpu().numpy().reshape(-1)
        for b in np.unique(k):
            mean = float(v[k == b].mean())
            n = int((k == b).sum())
            old = self.model_loss[b]
            keep = self.decay**n
            self.model_loss[b] = mean if not np.isfinite(old) else keep * old + (1 - keep) * mean
            self.counts[b] += n

    def set_model_loss(self, values) -> None:
        """Use a given per-bin model loss J_θ (e.g. measured by diagnose) and freeze it."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != self.optimal.shape or not np.all(np.isfinite(values)):
            raise DifflensError(f"need {self.bins} finite per-bin model losses, got shape {values.shape}")
        self.model_loss = values
        self.counts[:] = max(self.warmup, 1)

    def probabilities(self) -> np.ndarray:
        """Mass of each bin."""
        uniform = np.full(self.bins, 1.0 / self.bins)
        if self.counts.min() < self.warmup:
            return uniform
        w = self._weight_np(self.centers)
        excess = np.maximum(self.model_loss - self.optimal, 0.0)
        raw = w * excess
        if not np.isfinite(raw).all() or raw.sum() <= 0:
            return uniform
        return (1 - self.mix) * raw / raw.sum() + self.mix * uniform

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        p = torch.as_tensor(self.probabilities(), dtype=torch.float64)
        k = torch.multinomial(p, n, replacement=True, generator=generator).numpy()
        lo, width = self.edges[k], self.edges[1] - self.edges[0]
        return torch.exp(torch.as_tensor(lo) + width * _uniform(n, generator))

    def cdf(self, s) -> np.ndarray:
        """CDF of the current sampling distribution at s (piecewise linear in ln s)."""
        u = np.log(np.asarray(s, dtype=np.float64))
        cum = np.concatenate([[0.0], np.cumsum(self.probabilities())])
        return np.interp(u, self.edges, cum)

    def quadrature(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(s, mass, weight) of the current recipe, 16 points per bin (midpoint rule in ln s)."""
        sub = (np.arange(16) + 0.5) / 16
        width = self.edges[1] - self.edges[0]
        u = (self.edges[:-1, None] + width * sub[None]).reshape(-1)
        mass = np.repeat(self.probabilities() / 16, 16)
        s = np.exp(u)
        return s, mass, self._weight_np(s)

    def table(self) -> list[dict]:
        """One row per bin: range, J*, running J_θ, weight and sampling probability."""
        p, w = self.probabilities(), self._weight_np(self.centers)
        return [
            {
                "sigma": float(c),
                "sigma_lo": float(math.exp(self.edges[k])),
                "sigma_hi": float(math.exp(self.edges[k + 1])),
                "optimal_loss": float(self.optimal[k]),
                "model_loss": float(self.model_loss[k]),
                "excess": float(self.model_loss[k] - self.optimal[k]),
                "weight": float(w[k]),
                "p": float(p[k]),
                "count": int(self.counts[k]),
            }
            for k, c in enumerate(self.centers)
        ]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "sigma_min": float(math.exp(self.edges[0])),
            "sigma_max": float(math.exp(self.edges[-1])),
            "a": self.a,
            "w_max": self.w_max,
            "bump": self.bump,
            "bump_center": self.bump_center,
            "bump_width": self.bump_width,
            "mix": self.mix,
            "decay": self.decay,
            "warmup": self.warmup,
            "optimal": self.optimal.tolist(),
        }

    def state_dict(self) -> dict:
        return {"model_loss": self.model_loss.tolist(), "counts": self.counts.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.model_loss = np.asarray(state["model_loss"], dtype=np.float64)
        self.counts = np.asarray(state["counts"], dtype=np.int64)

    @classmethod
    def from_data(
        cls,
        data,
        weight_factor,
        *,
        bins: int = 32,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        samples: int = 256,
        seed: int = 0,
        device: torch.device | str | None = None,
        **kwargs,
    ) -> OptimalLossSchedule:
        """J* at the bin centres of ``data`` (full estimator, the kernel on ``device``), converted to target
        units by ``weight_factor(s)`` (the target's r(s)), then the schedule."""
        edges = np.linspace(math.log(sigma_min), math.log(sigma_max), bins + 1)
        centers = np.exp(0.5 * (edges[1:] + edges[:-1]))
        data = as_dataset(data)
        full = make_estimator("full", data.n)
        j_x0 = np.array(
            [
                estimate_level(data, s, full, samples, level_rng(seed, i), data.dim, device=device)[0]
                for i, s in enumerate(centers)
            ]
        )
        return cls(j_x0 * weight_factor(centers), sigma_min=sigma_min, sigma_max=sigma_max, **kwargs)


def from_description(desc: dict, process: Process):
    """Rebuild a schedule from ``describe()`` (as stored in checkpoints)."""
    name = desc.get("name")
    if name == "edm":
        return LogNormal(desc["mean"], desc["std"])
    if name == "uniform-t":
        return UniformT(process, desc["t_min"])
    if name == "optimal-loss":
        opts = {k: desc[k] for k in ("a", "w_max", "bump", "bump_center", "bump_width", "mix", "decay", "warmup")}
        return OptimalLossSchedule(desc["optimal"], sigma_min=desc["sigma_min"], sigma_max=desc["sigma_max"], **opts)
    raise DifflensError(f"unknown schedule {name!r}; choose edm, uniform-t or optimal-loss")
