"""Optimal loss J*(s) of Xu et al. (ICLR 2026): the lowest loss any model can reach at each noise level.

J*_x0(s) = E_{x0, ε} tr Cov[x0 | x0 + s·ε] / D. Every estimator is a tiny class with one call
signature returning the posterior (over all data or a subset) for a batch of noisy queries; all of
them estimate B(s) = E‖E[x0|x̃]‖², and J* = Â − B̂ per query as ‖x_n‖² − ‖μ̂‖², with n the query's
source sample (sources are drawn without replacement, cycling through the data, so the Â part is
exact whenever M is a multiple of N). For ``full`` the reported value is its Rao–Blackwellised form
E[‖x0‖² − ‖μ‖² | x̃] = tr Cov[x0|x̃], lower variance with the same expectation; both are kept.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from difflens import oracle
from difflens.data import Dataset, as_dataset
from difflens.errors import DifflensError
from difflens.processes import conversion_factor, edm_c_out, get_process, sigma_grid

# ---------------------------------------------------------------- estimators


@dataclass
class Full:
    """Posterior over all N points: exact up to Monte Carlo over (source, ε)."""

    rao_blackwell = True

    def __call__(self, data: Dataset, queries, sources, sigma, rng, **kernel) -> oracle.Posterior:
        return oracle.posterior(queries, data, sigma, hint=sources, **kernel)


@dataclass
class SNIS:
    """Posterior over L random points (fresh per group of queries). High variance at small s."""

    subset: int
    group: int = 32
    rao_blackwell = False

    def __call__(self, data, queries, sources, sigma, rng, **kernel):
        parts = []
        for i in range(0, len(queries), self.group):
            idx = np.sort(rng.choice(data.n, size=min(self.subset, data.n), replace=False))
            q, src = queries[i : i + self.group], sources[i : i + self.group]
            parts.append(oracle.posterior(q, data, sigma, include=idx, hint=src, **kernel))
        return _cat(parts)


@dataclass
class CDOL:
    """Source + L−1 random points, the source's kernel weight divided by C (C = 1: DOL; C → ∞: SNIS)."""

    subset: int
    C: float = 1.0
    group: int = 32
    rao_blackwell = False

    def __call__(self, data, queries, sources, sigma, rng, **kernel):
        scale = 1.0 / sigma**2
        parts = []
        for i in range(0, len(queries), self.group):
            q, src = queries[i : i + self.group], sources[i : i + self.group]
            drawn, leave_out = _others_per_query(rng, data.n, self.subset, src)
            xs = data.take(src)
            logit = ((q.double() * xs.double()).sum(1) - 0.5 * (xs.double() ** 2).sum(1)) * scale
            extra = oracle.PosteriorState.of_points(logit - math.log(self.C), xs, torch.from_numpy(src))
            post = oracle.posterior(q, data, sigma, include=drawn, exclude=leave_out, extra=extra, **kernel)
            parts.append(post)
        return _cat(parts)


def _others_per_query(
    rng: np.random.Generator, n: int, size: int, sources: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One shared draw of ``size`` points, and per query the one to leave out, so that each query sees
    ``size`` − 1 points drawn uniformly from the data without its own source (which is added apart)."""
    drawn = rng.choice(n, size=size, replace=False)
    leave_out = np.where(np.isin(sources, drawn), sources, drawn[-1])
    return np.sort(drawn), leave_out


def _cat(parts: list[oracle.Posterior]) -> oracle.Posterior:
    return oracle.Posterior(*(torch.cat([getattr(p, f) for p in parts]) for f in oracle.Posterior.__dataclass_fields__))


ESTIMATORS = ("full", "snis", "dol", "cdol")


def make_estimator(name: str, n: int, subset: int | None = None, C: float | None = None):
    """An estimator by name; ``subset`` L defaults to min(N, 256), cdol's C to 4N/L (Xu et al.)."""
    if name not in ESTIMATORS:
        raise DifflensError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    if name == "full":
        return Full()
    L = min(n, 256) if subset is None else subset
    if not 2 <= L <= n and not (name == "snis" and 1 <= L <= n):
        raise DifflensError(f"--subset must be between 2 and N = {n} for {name}, got {L}")
    if name == "snis":
        return SNIS(L)
    if name == "dol":
        return CDOL(L, 1.0)
    C = 4.0 * n / L if C is None else C
    if not C > 0:
        raise DifflensError(f"--C must be > 0, got {C}")
    return CDOL(L, float(C))


# ---------------------------------------------------------------- one level


@dataclass
class Level:
    """Optimal loss at one noise level: per dimension (or summed), x0 units and target units."""

    sigma: float
    t: float
    optimal_loss: float
    stderr: float
    optimal_loss_x0: float
    stderr_x0: float
    paired_x0: float  # Â − B̂ form, per query ‖x_n‖² − ‖μ̂‖² (equals optimal_loss_x0 for subset estimators)
    samples: int
    mean_max_weight: float
    mean_eff_count: float
    max_dropped_mass: float = 0.0  # precision="fast": bound on the posterior mass skipped for any query


def sources_for_level(n: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """M source indices drawn without replacement, cycling through all N (stratified Â)."""
    reps = -(-samples // n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:samples]


def level_rng(seed: int, level: int) -> np.random.Generator:
    """Each level has its own stream, so a resumed run reproduces the levels it recomputes."""
    return np.random.default_rng([seed, level])


def estimate_level(
    data: Dataset,
    sigma: float,
    estimator,
    samples: int,
    rng: np.random.Generator,
    reduce_dims: int,
    chunk_size: int | None = None,
    **kernel,
) -> tuple[float, float, float, dict]:
    """(J*_x0, stderr, paired J*_x0, concentration stats) at noise level ``sigma``.

    ``kernel`` options (engine, precision) go to ``oracle.posterior``."""
    src = sources_for_level(data.n, samples, rng)
    x0 = data.take(src)
    noise = torch.from_numpy(rng.standard_normal(x0.shape, dtype=np.float32))
    queries = x0 + float(sigma) * noise
    post = estimator(data, queries, src, float(sigma), rng, chunk_size=chunk_size, **kernel)
    paired = ((x0.double() ** 2).sum(1) - (post.mean**2).sum(1)) / reduce_dims
    values = post.trace_cov / reduce_dims if estimator.rao_blackwell else paired
    stderr = float(values.std(unbiased=True) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    conc = {
        "mean_max_weight": float(post.max_weight.mean()),
        "mean_eff_count": float(post.eff_count.mean()),
        "max_dropped_mass": float(post.dropped_mass.max()),
    }
    return float(values.mean()), stderr, float(paired.mean()), conc


# ---------------------------------------------------------------- recipes (weighted totals)


def recipe_quadrature(recipe: str, process, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s, mass, λ) so that a recipe's total loss is Σ mass·λ·J*_x0(s).

    ``edm``: ln s ~ N(−1.2, 1.2²), λ = 1/c_out² (EDM's F loss); ``uniform-t``: t ~ U(0, 1] for the
    chosen process with λ = the target's r_t (e.g. DDPM's ε loss); or a CSV with columns
    ``sigma,p[,weight]`` (p normalised to sum 1; weight λ defaults to 1)."""
    if recipe == "edm":
        u = np.linspace(-1.2 - 6 * 1.2, -1.2 + 6 * 1.2, 4001)
        mass = np.exp(-0.5 * ((u + 1.2) / 1.2) ** 2) / (1.2 * math.sqrt(2 * math.pi)) * (u[1] - u[0])
        s = np.exp(u)
        return s, mass, 1.0 / edm_c_out(s) ** 2
    if recipe == "uniform-t":
        edges = np.linspace(0.0, 1.0, 4001)
        t = 0.5 * (edges[1:] + edges[:-1])
        return process.s_of_t(t), np.diff(edges), conversion_factor(process, target, t)
    path = Path(recipe)
    if not path.is_file():
        raise DifflensError(f"unknown recipe {recipe!r}: use edm, uniform-t or a CSV file with sigma,p[,weight]")
    try:
        with path.open() as fh:
            rows = list(csv.DictReader(fh))
        s = np.array([float(r["sigma"]) for r in rows])
        p = np.array([float(r["p"]) for r in rows])
        lam = np.array([float(r.get("weight") or 1.0) for r in rows])
    except (KeyError, ValueError) as exc:
        raise DifflensError(f"recipe {recipe}: need numeric columns sigma,p[,weight] ({exc})") from None
    if len(s) == 0 or np.any(s <= 0) or np.any(p < 0) or p.sum() <= 0:
        raise DifflensError(f"recipe {recipe}: need rows with sigma > 0 and p ≥ 0 summing to > 0")
    return s, p / p.sum(), lam


def weighted_total(sigmas, values, stderrs, quad: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict:
    """Σ mass·λ·J(s) with J linear in ln s between levels; mass outside the levels is left out
    (``coverage`` is the recipe's probability mass inside them)."""
    s, mass, lam = quad
    weight = mass * lam
    log_grid = np.log(np.asarray(sigmas))
    inside = (s >= sigmas[0] * (1 - 1e-12)) & (s <= sigmas[-1] * (1 + 1e-12))
    basis = np.stack([np.interp(np.log(s[inside]), log_grid, e) for e in np.eye(len(sigmas))], axis=1)
    coeff = weight[inside] @ basis  # total = coeff · values, linear in the level values
    finite = np.isfinite(stderrs)
    return {
        "value": float(coeff @ np.asarray(values)),
        "stderr": float(np.sqrt(np.sum((coeff[finite] * np.asarray(stderrs)[finite]) ** 2))),
        "coverage": float(mass[inside].sum() / mass.sum()),
    }


def critical_sigma(sigmas, values_x0, plateau: float, fraction: float = 0.01) -> float | None:
    """Smallest s where J*_x0 reaches ``fraction`` of the plateau (log-interpolated between levels)."""
    if plateau <= 0:
        return None
    level = fraction * plateau
    for i, v in enumerate(values_x0):
        if v >= level:
            if i == 0:
                return float(sigmas[0])
            v0, v1 = values_x0[i - 1], v
            f = (level - v0) / (v1 - v0) if v1 > v0 else 0.0
            return float(math.exp(math.log(sigmas[i - 1]) + f * (math.log(sigmas[i]) - math.log(sigmas[i - 1]))))
    return None


# ---------------------------------------------------------------- the curve


@dataclass
class Curve:
    """The optimal-loss curve over noise levels, plus totals; serialises to the documented JSON."""

    dataset: dict
    process: str
    target: str
    estimator: str
    subset: int | None
    C: float | None
    samples: int
    seed: int
    reduction: str
    levels: list[Level]
    data_variance: float
    critical_sigma: float | None
    total: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def curve_config(**kw) -> dict:
    """The settings that determine the results level by level (for resume checks)."""
    return {k: (list(map(float, v)) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}


def optimal_loss_curve(
    data,
    sigmas=None,
    *,
    process: str = "edm",
    target: str = "x0",
    estimator: str = "full",
    subset: int | None = None,
    C: float | None = None,
    samples: int = 256,
    seed: int = 0,
    reduction: str = "mean",
    recipe: str = "edm",
    chunk_size: int | None = None,
    done: dict[int, Level] | None = None,
    on_level: Callable[[int, Level], None] | None = None,
    engine=None,
    precision="exact",
) -> Curve:
    """J*(s) on a grid of VE-equivalent noise levels, in ``target`` units of ``process``.

    ``done`` maps level positions to results already computed (resume); ``on_level`` is called
    as each new level finishes, so callers can persist results as they go. ``engine`` (where the
    kernel runs, see ``difflens.engines``) and ``precision`` ("exact" or "fast") go to the kernel."""
    data = as_dataset(data)
    sigmas = sigma_grid() if sigmas is None else np.sort(np.asarray(sigmas, dtype=np.float64))
    if sigmas.size == 0 or np.any(~np.isfinite(sigmas)) or np.any(sigmas <= 0):
        raise DifflensError("noise levels must be finite and > 0")
    if samples < 2:
        raise DifflensError(f"--samples must be ≥ 2 (for a standard error), got {samples}")
    if reduction not in ("mean", "sum"):
        raise DifflensError(f"reduction must be 'mean' (per dimension) or 'sum', got {reduction!r}")
    proc = get_process(process)
    est = make_estimator(estimator, data.n, subset, C)
    conversion_factor(proc, target, 0.5)  # validates the target name early
    reduce_dims = data.dim if reduction == "mean" else 1
    ts = proc.t_of_s(sigmas)
    factors = conversion_factor(proc, target, ts)
    levels: list[Level] = []
    for i, s in enumerate(sigmas):
        if done and i in done:
            levels.append(done[i])
            continue
        j, se, paired, conc = estimate_level(
            data, s, est, samples, level_rng(seed, i), reduce_dims, chunk_size, engine=engine, precision=precision
        )
        r = float(factors[i])
        level = Level(float(s), float(ts[i]), j * r, se * r, j, se, paired, samples, **conc)
        levels.append(level)
        if on_level is not None:
            on_level(i, level)
    plateau = data.stats.variance * (data.dim if reduction == "sum" else 1)
    values = np.array([lv.optimal_loss_x0 for lv in levels])
    errs = np.array([lv.stderr_x0 for lv in levels])
    totals = {recipe: weighted_total(sigmas, values, errs, recipe_quadrature(recipe, proc, target))}
    return Curve(
        dataset=data.summary(),
        process=proc.name,
        target=target,
        estimator=estimator,
        subset=getattr(est, "subset", None),
        C=getattr(est, "C", None),
        samples=samples,
        seed=seed,
        reduction=reduction,
        levels=levels,
        data_variance=plateau,
        critical_sigma=critical_sigma(sigmas, values, plateau),
        total=totals,
    )
