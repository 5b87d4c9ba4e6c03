"""The optimal-loss curve J*(s) of Xu et al. (ICLR 2026): the lowest loss any model can reach at each
noise level, in any process's target units, with recipe totals and the critical noise level.

The per-level estimators are in ``difflens.diffusion.estimators``; docs/method.md gives the math.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch

from difflens.data import as_dataset
from difflens.diffusion.estimators import critical_sigma, estimate_level, level_rng, make_estimator
from difflens.diffusion.processes import Process, conversion_factor, get_process, sigma_grid
from difflens.diffusion.schedules import LogNormal
from difflens.errors import DifflensError
from difflens.kernel import Fast
from difflens.kernel.engines import Engine
from difflens.kernel.source import Data

# VE-equivalent noise levels s, increasing
Levels: TypeAlias = Sequence[float] | np.ndarray
# A recipe as a quadrature: (s, mass, λ), its total = Σ mass·λ·J*_x0(s) (see ``recipe_quadrature``)
Quadrature: TypeAlias = tuple[np.ndarray, np.ndarray, np.ndarray]


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
    samples: int  # queries used at this level (fewer than the curve's ``samples`` with a ``target_se``)
    mean_max_weight: float
    mean_eff_count: float
    max_dropped_mass: float = 0.0  # precision="fast": bound on the posterior mass skipped for any query


# ---------------------------------------------------------------- recipes (weighted totals)

# The recipe a total uses when none is given: the one each process is usually trained with.
#
#   process            recipe      noise levels                      weight on the target's loss
#   vp, vp-cosine      uniform-t   t ~ U(0, 1] (DDPM-style)          1
#   ddpm-discrete      uniform-t   t ~ U(0, 1] of the schedule       1
#   fm                 uniform-t   t ~ U(0, 1] (rectified flow)      1
#   edm, ve            edm         ln s ~ N(P_mean, P_std²) (EDM)    1
DEFAULT_RECIPES = {
    "vp": "uniform-t",
    "vp-cosine": "uniform-t",
    "ddpm-discrete": "uniform-t",
    "fm": "uniform-t",
    "edm": "edm",
    "ve": "edm",
}


def default_recipe(process: Process | str) -> str:
    """The recipe of ``DEFAULT_RECIPES`` for a process (or its name); uniform t for any other process."""
    return DEFAULT_RECIPES.get(getattr(process, "name", process), "uniform-t")


def recipe_quadrature(recipe: str, process: Process, target: str) -> Quadrature:
    """(s, mass, λ) so that a recipe's total loss in ``target`` units of ``process`` is Σ mass·λ·J*_x0(s).

    A recipe is a distribution of noise levels and a weight w on the loss *in the target's units*:
    λ = w·r(s), r the target's conversion factor, so a total is always in the units of its per-level
    table. ``edm``: ln s ~ N(−1.2, 1.2²) (EDM's sampling, ``schedules.LogNormal``; with the ``edm``
    target, r = 1/c_out² makes it EDM's F loss), w = 1; ``uniform-t``: t ~ U(0, 1] for the chosen
    process, w = 1 (e.g. DDPM's ε loss); or a CSV with columns ``sigma,p[,weight]`` (p normalised to
    sum 1; w defaults to 1)."""
    if recipe == "edm":
        s, mass, weight = LogNormal().quadrature()
        return s, mass, weight * _factor(process, target, s)
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
    return s, p / p.sum(), lam * _factor(process, target, s)


def _factor(process, target: str, s: np.ndarray) -> np.ndarray:
    """r(s): the target's loss over the x0 loss at VE level s."""
    return conversion_factor(process, target, process.t_of_s(s))


def weighted_total(
    sigmas: Levels, values: Sequence[float] | np.ndarray, stderrs: Sequence[float] | np.ndarray, quad: Quadrature
) -> dict:
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
    total: dict = field(default_factory=dict)  # {recipe: {value, stderr, coverage, units}}
    recipe: str = ""  # the recipe of ``total`` (given, or the process's default, see DEFAULT_RECIPES)
    target_se: float | None = None  # relative standard error each level aimed at (None: ``samples`` per level)

    def to_dict(self) -> dict:
        return asdict(self)


def curve_config(**kw: Any) -> dict:
    """The settings that determine the results level by level (for resume checks)."""
    return {k: (list(map(float, v)) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}


def optimal_loss_curve(
    data: Data,
    sigmas: Levels | None = None,
    *,
    process: str = "edm",
    target: str = "x0",
    estimator: str = "full",
    subset: int | None = None,
    C: float | None = None,
    samples: int = 256,
    seed: int = 0,
    reduction: str = "mean",
    recipe: str | None = None,
    chunk_size: int | None = None,
    done: dict[int, Level] | None = None,
    on_level: Callable[[int, Level], None] | None = None,
    engine: Engine | None = None,
    precision: str | Fast = "exact",
    device: str | torch.device | None = None,
    target_se: float | None = None,
) -> Curve:
    """J*(s) on a grid of VE-equivalent noise levels, in ``target`` units of ``process``.

    ``done`` maps level positions to results already computed (resume); ``on_level`` is called
    as each new level finishes, so callers can persist results as they go. ``engine`` (where the
    kernel runs, see ``difflens.engines``) and ``precision`` ("exact" or "fast") go to the kernel.
    The total is in the table's (``target``) units, under ``recipe`` or else the process's default
    (``DEFAULT_RECIPES``: uniform t for vp, vp-cosine and fm, EDM's log-normal for edm and ve).
    ``target_se`` REL: draw each level's queries in batches until its standard error is at most REL
    times its value, ``samples`` at most (docs/method.md, "Adaptive queries per level"); None: exactly
    ``samples`` queries per level. ``Level.samples`` is the count each level used."""
    data = as_dataset(data)
    sigmas = sigma_grid() if sigmas is None else np.sort(np.asarray(sigmas, dtype=np.float64))
    if sigmas.size == 0 or np.any(~np.isfinite(sigmas)) or np.any(sigmas <= 0):
        raise DifflensError("noise levels must be finite and > 0")
    if samples < 2:
        raise DifflensError(f"--samples must be ≥ 2 (for a standard error), got {samples}")
    if target_se is not None and not (math.isfinite(target_se) and target_se > 0):
        raise DifflensError(f"--target-se must be a finite relative standard error > 0, got {target_se}")
    if reduction not in ("mean", "sum"):
        raise DifflensError(f"reduction must be 'mean' (per dimension) or 'sum', got {reduction!r}")
    proc = get_process(process)
    est = make_estimator(estimator, data.n, subset, C)
    conversion_factor(proc, target, 0.5)  # validates the target name early
    recipe = recipe or default_recipe(proc)
    quad = recipe_quadrature(recipe, proc, target)  # validates the recipe before any level is computed
    reduce_dims = data.dim if reduction == "mean" else 1
    ts = proc.t_of_s(sigmas)
    factors = conversion_factor(proc, target, ts)
    levels: list[Level] = []
    for i, s in enumerate(sigmas):
        if done and i in done:
            levels.append(done[i])
            continue
        j, se, paired, conc = estimate_level(
            data,
            s,
            est,
            samples,
            level_rng(seed, i),
            reduce_dims,
            chunk_size,
            target_se,
            engine=engine,
            precision=precision,
            device=device,
        )
        r = float(factors[i])
        level = Level(float(s), float(ts[i]), j * r, se * r, j, se, paired, **conc)
        levels.append(level)
        if on_level is not None:
            on_level(i, level)
    plateau = data.stats.variance * (data.dim if reduction == "sum" else 1)
    values = np.array([lv.optimal_loss_x0 for lv in levels])
    errs = np.array([lv.stderr_x0 for lv in levels])
    units = f"{target} units of {proc.name}" + (", summed over dimensions" if reduction == "sum" else ", per dimension")
    totals = {recipe: {**weighted_total(sigmas, values, errs, quad), "units": units}}
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
        recipe=recipe,
        target_se=target_se,
    )
