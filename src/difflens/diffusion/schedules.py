"""Noise-level schedules for training: where to sample s and how to weight each level's loss.

Every schedule has one interface, usable in any torch training loop::

    s = schedule.sample(batch, generator)        # (B,) float64 noise levels (VE-equivalent)
    loss = (schedule.weight(s) * per_sample_loss).mean()
    schedule.update(s, per_sample_loss)          # running per-level loss (adaptive schedules)

``LogNormal`` is EDM's ln s ~ N(−1.2, 1.2²); ``UniformT`` draws t ~ U(0, 1] of a process;
``OptimalLossSchedule`` is Xu et al.'s schedule from the optimal loss J*(s) (docs/method.md, "Training schedules"):
weight w(s) = a·min(1/J*(s), w_max) + 𝒩(ln s; μ, ς²)·𝟙[s < s*] (s* the critical level), and density over
ln s proportional to w(s)·max(J_θ(s) − J*(s), 0), with J_θ a running (adaptive) or frozen (fixed) per-bin
loss, mixed with a uniform floor so no level is starved. It is stated in x0 units by default (as the
paper); ``units="target"`` computes it in the training target's units instead (an earlier difflens
variant, kept for comparison). Either way ``weight`` is the effective weight on the x0 loss,
``loss_weight`` the multiplier of a loss in the network's target units, and ``update`` takes x0 losses.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from difflens.data import Dataset, as_dataset
from difflens.diffusion.estimators import critical_sigma, estimate_level, level_rng, make_estimator
from difflens.diffusion.precond import Parametrization
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

    def loss_weight(self, s: torch.Tensor) -> torch.Tensor:
        """Multiplier of a per-sample loss in the network's target units: 1 (EDM weights its own loss)."""
        return self.weight(s)

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

    def loss_weight(self, s: torch.Tensor) -> torch.Tensor:
        """Multiplier of a per-sample loss in the network's target units: 1."""
        return self.weight(s)

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


UNITS = ("x0", "target")
RECIPE_FORMAT = "difflens-schedule/1"


class OptimalLossSchedule:
    """Xu et al.'s schedule on K equal bins in ln s between sigma_min and sigma_max (docs/method.md,
    "Training schedules").

    ``optimal_x0`` holds J*_x0(s) at the bin centres; ``param`` is the training parametrization (its
    conversion factor r(s) turns x0 losses into the network's target units; default: x0 training).
    In the schedule's units (u(s) = 1 for ``units="x0"``, r(s) for ``units="target"``)

        w(s) = a·min(1/(u·J*_x0)(s), w_max) + 𝒩(ln s; μ, ς²)·𝟙[s < s*],

    the second term (``bump``, on by default) a normalised density in ln s, not scaled by a, with s* the
    critical level and μ = ln s* − ς unless given. Bin k gets mass ∝ w_k·max(J_θ,k − J*_k, 0) in the same
    units, mixed as (1 − mix)·that + mix·uniform; until every bin has ``warmup`` loss samples the density
    is uniform. ``fixed`` freezes J_θ (a pilot run's per-level loss, ``set_model_loss``)."""

    name = "optimal-loss"

    def __init__(
        self,
        optimal_x0,
        *,
        param: Parametrization | None = None,
        units: str = "x0",
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        a: float = 1.0,
        w_max: float = 1e3,
        bump: bool = True,
        critical_sigma: float | None = None,
        bump_mu: float | None = None,
        bump_std: float = 0.5,
        mix: float = 0.1,
        decay: float = 0.99,
        warmup: int = 8,
        fixed: bool = False,
    ):
        optimal = np.asarray(optimal_x0, dtype=np.float64)
        if optimal.ndim != 1 or len(optimal) < 2 or not np.all(np.isfinite(optimal)):
            raise DifflensError("the optimal-loss schedule needs finite J* on at least 2 bins")
        if not (0 < sigma_min < sigma_max):
            raise DifflensError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if units not in UNITS:
            raise DifflensError(f"schedule units {units!r}: choose x0 or target")
        if not (a > 0 and w_max > 0 and 0 <= mix <= 1 and 0 < decay < 1 and bump_std > 0):
            raise DifflensError("schedule: need a > 0, w_max > 0, 0 ≤ mix ≤ 1, 0 < decay < 1, bump_std > 0")
        if critical_sigma is not None and not (math.isfinite(critical_sigma) and critical_sigma > 0):
            raise DifflensError(f"schedule: the critical σ must be a finite level > 0, got {critical_sigma}")
        if bump and critical_sigma is None:
            raise DifflensError("schedule: the critical-σ term needs the critical σ s* (or turn it off: --no-bump)")
        if bump_mu is not None and not math.isfinite(bump_mu):
            raise DifflensError(f"schedule: bump_mu (a value of ln σ) must be finite, got {bump_mu}")
        self.edges = np.linspace(math.log(sigma_min), math.log(sigma_max), len(optimal) + 1)
        self.optimal = np.maximum(optimal, 0.0)
        self.param = param if param is not None else Parametrization()
        self.units, self.a, self.w_max = units, float(a), float(w_max)
        self.mix, self.decay, self.warmup, self.fixed = float(mix), float(decay), int(warmup), bool(fixed)
        self.bump, self.critical_sigma, self.bump_std = bool(bump), critical_sigma, float(bump_std)
        if bump_mu is None and critical_sigma is not None:
            bump_mu = math.log(critical_sigma) - bump_std
        self.bump_mu = bump_mu
        self.model_loss = np.full(len(optimal), np.nan)  # running J_θ per bin, in the schedule's units
        self.counts = np.zeros(len(optimal), dtype=np.int64)

    @property
    def bins(self) -> int:
        return len(self.optimal)

    @property
    def centers(self) -> np.ndarray:
        return np.exp(0.5 * (self.edges[1:] + self.edges[:-1]))

    def bin_of(self, s: npt.ArrayLike) -> np.ndarray:
        u = np.log(np.asarray(s, dtype=np.float64))
        return np.clip(np.searchsorted(self.edges, u, side="right") - 1, 0, self.bins - 1)

    def units_factor(self, s: npt.ArrayLike) -> np.ndarray:
        """u(s), the schedule's loss units per x0 unit: 1 in x0 units, the target's r(s) in target units."""
        s = np.asarray(s, dtype=np.float64)
        return np.asarray(self.param.factor(s), dtype=np.float64) if self.units == "target" else np.ones_like(s)

    def optimal_at(self, s: npt.ArrayLike) -> np.ndarray:
        """J*_x0(s), log-interpolated in ln s between bin centres (exact at the centres)."""
        u = np.log(np.asarray(s, dtype=np.float64))
        return np.exp(np.interp(u, np.log(self.centers), np.log(np.maximum(self.optimal, 1e-300))))

    def bump_term(self, s: npt.ArrayLike) -> np.ndarray:
        """f(s)·𝟙[s < s*] with f = 𝒩(ln s; μ, ς²), a normalised density in ln s (zero when off)."""
        s = np.asarray(s, dtype=np.float64)
        if not self.bump:
            return np.zeros_like(s)
        z = (np.log(s) - self.bump_mu) / self.bump_std
        return np.exp(-0.5 * z**2) / (self.bump_std * math.sqrt(2 * math.pi)) * (s < self.critical_sigma)

    def weight_units(self, s: npt.ArrayLike) -> np.ndarray:
        """w(s) in the schedule's own units: a·min(1/J*(s), w_max) + f(s)·𝟙[s < s*]."""
        j = self.optimal_at(s) * self.units_factor(s)
        return self.a * np.minimum(1.0 / np.maximum(j, 1e-300), self.w_max) + self.bump_term(s)

    def weight(self, s: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Effective weight on the per-sample x0 loss: w(s)·u(s) (= w(s) in x0 units)."""
        s = torch.as_tensor(s).double().cpu().numpy()
        return torch.as_tensor(self.weight_units(s) * self.units_factor(s), dtype=torch.float64)

    def loss_weight(self, s: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Multiplier of a per-sample loss in the network's target units: weight(s)/r(s), so that the
        effective weight on the x0 loss is weight(s) whatever the target (docs/method.md, "Training schedules")."""
        s_np = torch.as_tensor(s).double().cpu().numpy()
        return self.weight(s_np) / torch.as_tensor(self.param.factor(s_np), dtype=torch.float64)

    def update(self, s: torch.Tensor | np.ndarray, losses_x0: torch.Tensor | np.ndarray) -> None:
        """Fold per-sample x0-unit losses (unweighted) into the running per-bin averages (adaptive only)."""
        if self.fixed:
            return
        s = torch.as_tensor(s).double().cpu().numpy().reshape(-1)
        k = self.bin_of(s)
        v = torch.as_tensor(losses_x0).detach().double().cpu().numpy().reshape(-1) * self.units_factor(s)
        for b in np.unique(k):
            mean = float(v[k == b].mean())
            n = int((k == b).sum())
            old = self.model_loss[b]
            keep = self.decay**n
            self.model_loss[b] = mean if not np.isfinite(old) else keep * old + (1 - keep) * mean
            self.counts[b] += n

    def set_model_loss(self, values_x0: npt.ArrayLike, fixed: bool = True) -> None:
        """Use a given per-bin model loss J_θ in x0 units (e.g. measured by diagnose); ``fixed`` freezes it."""
        values = np.asarray(values_x0, dtype=np.float64)
        if values.shape != self.optimal.shape or not np.all(np.isfinite(values)):
            raise DifflensError(f"need {self.bins} finite per-bin model losses, got shape {values.shape}")
        self.model_loss = values * self.units_factor(self.centers)
        self.counts[:] = max(self.warmup, 1)
        self.fixed = bool(fixed)

    def probabilities(self) -> np.ndarray:
        """Mass of each bin: (1 − mix)·w·max(J_θ − J*, 0)/Σ + mix/K (uniform before warm-up)."""
        uniform = np.full(self.bins, 1.0 / self.bins)
        if self.counts.min() < self.warmup:
            return uniform
        c = self.centers
        excess = np.maximum(self.model_loss - self.optimal * self.units_factor(c), 0.0)
        raw = self.weight_units(c) * excess
        if not np.isfinite(raw).all() or raw.sum() <= 0:
            return uniform
        return (1 - self.mix) * raw / raw.sum() + self.mix * uniform

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        p = torch.as_tensor(self.probabilities(), dtype=torch.float64)
        k = torch.multinomial(p, n, replacement=True, generator=generator).numpy()
        lo, width = self.edges[k], self.edges[1] - self.edges[0]
        return torch.exp(torch.as_tensor(lo) + width * _uniform(n, generator))

    def cdf(self, s: npt.ArrayLike) -> np.ndarray:
        """CDF of the current sampling distribution at s (piecewise linear in ln s)."""
        u = np.log(np.asarray(s, dtype=np.float64))
        cum = np.concatenate([[0.0], np.cumsum(self.probabilities())])
        return np.interp(u, self.edges, cum)

    def quadrature(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(s, mass, weight on the target-unit loss) of the current recipe, 16 points per bin (midpoint
        rule in ln s), like the other schedules' unit weights."""
        sub = (np.arange(16) + 0.5) / 16
        width = self.edges[1] - self.edges[0]
        u = (self.edges[:-1, None] + width * sub[None]).reshape(-1)
        mass = np.repeat(self.probabilities() / 16, 16)
        s = np.exp(u)
        return s, mass, self.loss_weight(s).numpy()

    def table(self) -> list[dict]:
        """One row per bin: range, J*_x0, J_θ (x0 units), w in the schedule's units, the effective x0
        weight, the sampling density (probability of the bin) and the samples seen."""
        c = self.centers
        p, w, u = self.probabilities(), self.weight_units(c), self.units_factor(c)
        model_x0 = self.model_loss / u
        return [
            {
                "sigma": float(c[k]),
                "sigma_lo": float(math.exp(self.edges[k])),
                "sigma_hi": float(math.exp(self.edges[k + 1])),
                "optimal_loss_x0": float(self.optimal[k]),
                "model_loss_x0": float(model_x0[k]),
                "excess_x0": float(model_x0[k] - self.optimal[k]),
                "weight": float(w[k]),
                "weight_x0": float(w[k] * u[k]),
                "density": float(p[k]),
                "count": int(self.counts[k]),
            }
            for k in range(self.bins)
        ]

    def params(self) -> dict:
        """The schedule's parameters as ``difflens schedule`` reports them."""
        return {
            "units": self.units,
            "a": self.a,
            "w_max": self.w_max,
            "bump": self.bump,
            "bump_mu": self.bump_mu,
            "bump_std": self.bump_std,
            "critical_sigma": self.critical_sigma,
            "mix": self.mix,
            "mode": "fixed" if self.fixed else "adaptive",
        }

    def describe(self) -> dict:
        return {
            "name": self.name,
            **self.params(),
            "process": self.param.process.name,
            "target": self.param.target,
            "sigma_min": float(math.exp(self.edges[0])),
            "sigma_max": float(math.exp(self.edges[-1])),
            "decay": self.decay,
            "warmup": self.warmup,
            "fixed": self.fixed,
            "optimal_x0": self.optimal.tolist(),
        }

    def state_dict(self) -> dict:
        return {"model_loss": self.model_loss.tolist(), "counts": self.counts.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.model_loss = np.asarray(state["model_loss"], dtype=np.float64)
        self.counts = np.asarray(state["counts"], dtype=np.int64)

    def recipe(self) -> dict:
        """The recipe file's content (``difflens schedule`` writes it as schedule.json; ``load_recipe``
        reads it): params, one entry per level, and what rebuilds the schedule."""
        levels = [
            {k: r[k] for k in ("sigma", "optimal_loss_x0", "weight", "density", "weight_x0", "model_loss_x0")}
            for r in self.table()
        ]
        return {
            "format": RECIPE_FORMAT,
            "params": self.params(),
            "levels": levels,
            "schedule": self.describe(),
            "state": self.state_dict(),
        }

    @classmethod
    def from_data(
        cls,
        data: Dataset | np.ndarray | torch.Tensor,
        param: Parametrization | None = None,
        *,
        bins: int = 32,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        samples: int = 256,
        seed: int = 0,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> OptimalLossSchedule:
        """J*_x0 at the bin centres of ``data`` (full estimator, the kernel on ``device``), its critical
        level (unless given) and the schedule."""
        if bins < 2:
            raise DifflensError(f"the optimal-loss schedule needs at least 2 bins, got {bins}")
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
        if kwargs.get("critical_sigma") is None:
            kwargs["critical_sigma"] = critical_sigma(centers, j_x0, data.stats.variance)
            if kwargs["critical_sigma"] is None and kwargs.get("bump", True):
                raise DifflensError(
                    f"J*_x0 stays below 1 % of the data variance up to σ = {sigma_max:g}: no critical σ for the "
                    "critical-σ term; raise --sigma-max or pass --no-bump"
                )
        return cls(j_x0, param=param, sigma_min=sigma_min, sigma_max=sigma_max, **kwargs)


def from_description(
    desc: dict, process: Process, target: str | None = None
) -> LogNormal | UniformT | OptimalLossSchedule:
    """Rebuild a schedule from ``describe()`` (as stored in checkpoints and recipes). ``target``: the
    training target whose loss it weights [default: the one it was described with]."""
    name = desc.get("name")
    if name == "edm":
        return LogNormal(desc["mean"], desc["std"])
    if name == "uniform-t":
        return UniformT(process, desc["t_min"])
    if name == "optimal-loss":
        if "units" not in desc or "optimal_x0" not in desc:
            raise DifflensError("this optimal-loss schedule was saved by an older difflens (no units): refit it")
        keys = ("units", "a", "w_max", "bump", "critical_sigma", "bump_mu", "bump_std", "mix", "decay", "warmup")
        return OptimalLossSchedule(
            desc["optimal_x0"],
            param=Parametrization(process, target or desc["target"]),
            sigma_min=desc["sigma_min"],
            sigma_max=desc["sigma_max"],
            fixed=desc["fixed"],
            **{k: desc[k] for k in keys},
        )
    raise DifflensError(f"unknown schedule {name!r}; choose edm, uniform-t or optimal-loss")


def load_recipe(path: str | Path, param: Parametrization, data: Dataset | None = None) -> OptimalLossSchedule:
    """The schedule of a recipe file (schedule.json of ``difflens schedule``), weighting the loss of
    ``param``'s target. An x0-unit recipe serves any target; a target-unit one only its own. ``data``:
    the training set, which must be the one the recipe's J* was computed on."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DifflensError(f"schedule recipe {path}: cannot read it ({e})") from None
    if not isinstance(rec, dict) or rec.get("format") != RECIPE_FORMAT:
        raise DifflensError(f"{path} is not a schedule recipe (write one with `difflens schedule`)")
    desc = rec["schedule"]
    own = (desc["process"], desc["target"])
    if desc["units"] == "target" and own != (param.process.name, param.target):
        raise DifflensError(
            f"{path}: a schedule in {own[1]} units of {own[0]} cannot weight a {param.target} loss of "
            f"{param.process.name}; use an x0-unit recipe (--units x0)"
        )
    want = rec.get("data", {}).get("hash")
    if data is not None and want is not None and data.summary()["hash"] != want:
        raise DifflensError(
            f"{path}: its J* was computed on other data ({rec['data'].get('spec')}, n={rec['data'].get('n')}) than "
            f"the training set ({data.spec}, n={data.n}); match --data/--holdout"
        )
    schedule = from_description(desc, param.process, param.target)
    if not isinstance(schedule, OptimalLossSchedule):
        raise DifflensError(f"{path}: the recipe's schedule is {desc.get('name')!r}, not an optimal-loss schedule")
    schedule.load_state_dict(rec["state"])
    return schedule
