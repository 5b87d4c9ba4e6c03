"""The ``optimal-loss`` and ``denoise`` runs: every option checked first, then the kernel, then the files.

A run writes ``levels.jsonl`` as levels finish (so Ctrl-C keeps them for ``--resume``) and
``optimal_loss.json`` last (its presence means the run completed). See docs/architecture.md (data path).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from difflens import report
from difflens.analysis import optimal_loss as ol
from difflens.analysis.run_support import (
    Interrupted,
    Progress,
    check_engine,
    kernel_precision,
    no_progress,
    open_data,
    save_npy,
)
from difflens.data import Dataset, check_same_layout
from difflens.data import load as load_data
from difflens.diffusion.estimators import make_estimator
from difflens.diffusion.processes import conversion_factor, get_process, parse_sigmas
from difflens.errors import DifflensError
from difflens.kernel import oracle
from difflens.kernel.engines import open_engine


def run_optimal_loss(
    data: str,
    out: Path,
    *,
    process: str = "edm",
    target: str = "x0",
    estimator: str = "full",
    subset: int | None = None,
    C: float | None = None,
    queries_per_level: int = 256,
    sigmas: str = "0.002:80:64",
    recipe: str | None = None,
    sum_dims: bool = False,
    holdout: float | None = None,
    scale: str = "auto",
    seed: int = 0,
    chunk_size: int | None = None,
    resume: bool = False,
    workers: int | None = None,
    dask_scheduler: str | None = None,
    precision: str = "exact",
    fast_tol: float = 1e-16,
    device: torch.device | None = None,
    target_se: float | None = None,
    progress: Progress = no_progress,
    say: Callable[[str], None] = print,
) -> dict:
    """Optimal loss per level (``optimal_loss.{json,csv,png}`` in ``out``); returns the curve as a dict.

    Every option is checked before the first file is written. ``target_se``: adaptive queries per level
    (``optimal_loss_curve``), ``queries_per_level`` at most. ``recipe`` defaults to the process's
    (``optimal_loss.default_recipe``); ``device`` is where the kernel runs."""
    grid = parse_sigmas(sigmas)
    if queries_per_level < 2:
        raise DifflensError(f"--queries-per-level must be ≥ 2 (for a standard error), got {queries_per_level}")
    if target_se is not None and not (math.isfinite(target_se) and target_se > 0):
        raise DifflensError(f"--target-se must be a finite relative standard error > 0, got {target_se}")
    check_engine(workers, dask_scheduler)
    kernel_prec = kernel_precision(precision, fast_tol)
    proc = get_process(process)
    conversion_factor(proc, target, 0.5)  # validates the target name
    recipe = recipe or ol.default_recipe(proc)
    ol.recipe_quadrature(recipe, proc, target)  # validates the recipe (name or CSV)
    ds = open_data(data, scale, holdout, seed)
    make_estimator(estimator, ds.n, subset, C)  # validates estimator, subset and C
    config = {
        "dataset": ds.summary(),
        "process": process,
        "target": target,
        "estimator": estimator,
        "subset": subset,
        "C": C,
        "samples": queries_per_level,
        "sigmas": [float(s) for s in np.sort(grid)],
        "seed": seed,
        "reduction": "sum" if sum_dims else "mean",
    }
    if target_se is not None:  # only then, so runs logged before the option existed still resume
        config["target_se"] = target_se
    log = report.LevelLog(out / "levels.jsonl", config, resume)
    done = {i: ol.Level(**lv) for i, lv in log.done.items()}
    say(
        f"[bold]{ds.spec}[/]: N={ds.n}, D={ds.dim}, shape={ds.shape}; {len(grid)} levels × {queries_per_level} "
        f"queries, estimator {estimator}" + (f" (resuming, {len(done)} levels done)" if done else "")
    )
    advance = progress("noise levels", len(grid), len(done))

    def on_level(i: int, level: ol.Level) -> None:
        log.append(i, asdict(level))
        done[i] = level
        advance(1)

    try:
        with open_engine(workers, dask_scheduler) as engine:
            curve = ol.optimal_loss_curve(
                ds,
                grid,
                process=process,
                target=target,
                estimator=estimator,
                subset=subset,
                C=C,
                samples=queries_per_level,
                seed=seed,
                reduction=config["reduction"],
                recipe=recipe,
                chunk_size=chunk_size,
                done=dict(done),
                on_level=on_level,
                engine=engine,
                precision=kernel_prec,
                device=device,
                target_se=target_se,
            )
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted — {len(done)} levels kept; rerun with --resume") from None
    result = curve.to_dict()
    report.write_csv(out / "optimal_loss.csv", result["levels"])
    report.plot_optimal_loss(result, out / "optimal_loss.png")
    report.write_json(out / "optimal_loss.json", result)  # last: its presence means the run completed
    return result


def run_denoise(
    queries: Path,
    sigma: float,
    out: Path,
    *,
    data: str = "digits",
    temperature: float = 1.0,
    scale: str = "auto",
    chunk_size: int | None = None,
    workers: int | None = None,
    dask_scheduler: str | None = None,
    precision: str = "exact",
    fast_tol: float = 1e-16,
    device: torch.device | None = None,
) -> tuple[int, Dataset]:
    """E[x0 | x̃] of the queries in a .npy saved to ``out`` (same shape); returns (queries, dataset).

    ``device``: where the kernel runs."""
    if not temperature > 0:
        raise DifflensError(f"--temperature must be > 0, got {temperature}")
    check_engine(workers, dask_scheduler)
    kernel_prec = kernel_precision(precision, fast_tol)
    try:
        q = np.load(queries, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DifflensError(f"cannot read queries {queries} ({exc})") from None
    ds = load_data(data, scale)
    if q.ndim == 1 or q.size == 0 or q[0].size != ds.dim:
        raise DifflensError(f"queries {queries} have shape {q.shape}; need (B, ...) with {ds.dim} values per query")
    check_same_layout(q.shape[1:], ds.shape, "queries", "the data")
    with open_engine(workers, dask_scheduler) as engine:
        kernel = {"chunk_size": chunk_size, "engine": engine, "precision": kernel_prec}
        result = oracle.denoise(q.reshape(len(q), -1), ds, sigma, temperature, device=device, **kernel)
    save_npy(out, result.cpu().numpy().reshape(q.shape))
    return len(q), ds
