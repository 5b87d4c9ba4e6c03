"""The optimal-loss curve J*(s) of Xu et al. (ICLR 2026): the lowest loss any model can reach at each
noise level, in any process's target units, with recipe totals and the critical noise level.

The per-level estimators are in ``difflens.diffusion.estimators``; docs/method.md gives the math.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from difflens.data import as_dataset
from difflens.diffusion.estimators import estimate_level, level_rng, make_estimator
from difflens.diffusion.processes import conversion_factor, edm_c_out, get_process, sigma_grid
from difflens.diffusion.schedules import LogNormal
from difflens.errors import DifflensError


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


# ---------------------------------------------------------------- recipes (weighted totals)


def recipe_quadrature(recipe: str, process, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s, mass, λ) so that a recipe's total loss is Σ mass·λ·J*_x0(s).

    ``edm``: EDM's training distribution (``schedules.LogNormal``: ln s ~ N(−1.2, 1.2²)) with
    λ = 1/c_out² (EDM's F loss); ``uniform-t``: t ~ U(0, 1] for the
    chosen process with λ = the target's r_t (e.g. DDPM's ε loss); or a CSV with columns
    ``sigma,p[,weight]`` (p normalised to sum 1; weight λ defaults to 1)."""
    if recipe == "edm":
        s, mass, weight = LogNormal().quadrature()
        return s, mass, weight / edm_c_out(s) ** 2
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
