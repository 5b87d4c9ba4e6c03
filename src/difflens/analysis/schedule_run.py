"""The ``schedule`` and ``scaling`` runs: Xu et al.'s optimal-loss schedule fitted to a model's (or a log's)
per-level loss, and power-law fits of loss against compute or parameters (docs/method.md)."""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from difflens import report
from difflens.analysis import diagnose as dg
from difflens.analysis import scaling as sc
from difflens.analysis.model_error import split_errors
from difflens.analysis.run_support import Progress, no_progress, open_data
from difflens.diffusion import schedules as sched
from difflens.diffusion.processes import parse_sigmas
from difflens.errors import DifflensError
from difflens.models import Parametrization, load_denoiser


def last_loss_per_level(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(levels, loss at the last step that logged each level) of a loss log, levels ascending."""
    last: dict[float, tuple[int, float]] = {}
    for r in rows:
        if r["sigma"] not in last or r["step"] >= last[r["sigma"]][0]:
            last[r["sigma"]] = (r["step"], r["loss"])
    s_log = np.array(sorted(last))
    return s_log, np.array([last[s][1] for s in s_log])


def run_schedule(
    out: Path,
    schedule_options: dict,
    *,
    data: str = "digits",
    scale: str = "auto",
    holdout: float | None = None,
    model: str | None = None,
    from_log: Path | None = None,
    process: str = "edm",
    target: str = "edm",
    queries_per_level: int = 512,
    images: int = 512,
    seed: int = 0,
    device: torch.device | None = None,
) -> dict:
    """Fit the schedule (``schedule_options``: bins, sigma_min, sigma_max, units, a, w_max, bump, bump_mu,
    bump_std, mix) and write schedule.json (the recipe ``train --schedule`` reads), schedule.csv, recipe.csv
    (x0-unit weights, usable as ``--recipe``) and schedule.png to ``out``. With a pilot run's per-level loss
    (``model`` measured here, or ``from_log``) the schedule is fixed, else adaptive (docs/method.md,
    "Training schedules"); ``process``/``target`` are the training target's (and a log's loss units).
    The model and the kernel run on ``device`` (default cpu)."""
    if model is not None and from_log is not None:
        raise DifflensError("give at most one of --model or --from-log")
    ds = open_data(data, scale, holdout, seed=0)
    param = Parametrization.of(process, target)
    schedule = sched.OptimalLossSchedule.from_data(
        ds, param, samples=queries_per_level, seed=seed, device=device, **schedule_options
    )
    centers = schedule.centers
    if model is not None:
        m = load_denoiser(model, data=ds, device=device or "cpu")
        err = split_errors(m.denoiser, ds, centers, images=images, seed=seed, device=device or "cpu")
        schedule.set_model_loss(err.mean(1))
    elif from_log is not None:  # a log's losses are in the training target's units: J_x0 = J/r
        s_log, loss = last_loss_per_level(dg.read_loss_log(from_log, param.process))
        loss_x0 = np.maximum(loss / param.factor(s_log), 1e-300)
        schedule.set_model_loss(np.exp(np.interp(np.log(centers), np.log(s_log), np.log(loss_x0))))
    table = schedule.table()
    report.write_csv(out / "schedule.csv", table)
    report.write_csv(  # x0-unit weights: usable as --recipe by optimal-loss and diagnose
        out / "recipe.csv", [{"sigma": r["sigma"], "p": r["density"], "weight": r["weight_x0"]} for r in table]
    )
    title = f"{schedule.params()['mode']} optimal-loss schedule on {ds.spec} ({schedule.units} units)"
    report.plot_schedule(table, out / "schedule.png", title, schedule.critical_sigma)
    result = {**schedule.recipe(), "units": param.describe(), "data": ds.summary()}
    report.write_json(out / "schedule.json", result)
    return result


def run_scaling(
    out: Path,
    *,
    table: Path | None = None,
    runs: str | None = None,
    x: str = "params",
    sigmas: str = "0.05,0.2,0.5,1,2,5,20",
    images: int = 1024,
    data: str | None = None,
    scale: str = "auto",
    holdout: float | None = None,
    process: str = "edm",
    target: str = "x0",
    optimal: float | None = None,
    queries_per_level: int = 1024,
    seed: int = 0,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> tuple[list[dict], list[dict]]:
    """Power-law fits per level (and of totals); writes scaling.{json,csv,png} (and table.csv for ``runs``).
    Returns (groups, flat rows of the fits). Run folders' models and the kernel run on ``device`` (default cpu)."""
    if (table is None) == (runs is None):
        raise DifflensError("give exactly one of a TABLE or --runs")
    param = Parametrization.of(process, target)
    if runs is not None:
        paths = sorted(glob.glob(runs))
        if not paths:
            raise DifflensError(f"--runs {runs}: no run folders found")
        advance = progress("runs", len(paths))
        xcol, rows = sc.table_from_runs(
            paths,
            parse_sigmas(sigmas),
            x=x,
            images=images,
            samples=queries_per_level,
            seed=seed,
            on_run=lambda: advance(1),
            device=device,
        )
        report.write_csv(out / "table.csv", [{xcol: r["x"], **{k: v for k, v in r.items() if k != "x"}} for r in rows])
    else:
        xcol, rows = sc.read_table(table)
    j_star = _optimal_of(rows, data, scale, holdout, param, optimal, queries_per_level, seed, device)
    groups = sc.fit_groups(rows, j_star)
    report.write_json(out / "scaling.json", {"x": xcol, "units": param.describe(), "groups": groups})
    flat = [
        {"sigma": g["sigma"], "fit": k, **{f: v for f, v in fit.items() if f not in ("kind",)}}
        for g in groups
        for k, fit in g["fits"].items()
    ]
    report.write_csv(out / "scaling.csv", flat)
    sc.plot_fits(groups, out / "scaling.png", xcol)
    return groups, flat


def _optimal_of(rows, data, scale, holdout, param, optimal, samples, seed, device) -> Callable | None:
    """J* of a row's level (from ``data``) or the given ``optimal`` for rows without a level."""
    levels = sorted({r["sigma"] for r in rows if "sigma" in r})
    if data is not None and levels:
        ds = open_data(data, scale, holdout, seed=0)
        j, _, _ = dg.optimal_levels(ds, np.array(levels), samples, seed, device)
        by_level = dict(zip(levels, j * param.factor(np.array(levels)), strict=True))
        return lambda s: by_level[s] if s is not None else optimal
    if optimal is not None:
        return lambda s: optimal
    return None
