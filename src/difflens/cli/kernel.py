"""Commands that run the kernel directly: ``optimal-loss`` and ``denoise``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from difflens.analysis.optimal_loss_run import run_denoise, run_optimal_loss
from difflens.cli.common import (
    Bars,
    ChunkOpt,
    DaskOpt,
    DataOpt,
    DeviceOpt,
    EstimatorName,
    FastTolOpt,
    PrecisionName,
    PrecisionOpt,
    ProcessName,
    ScaleName,
    ScaleOpt,
    SeedOpt,
    TargetName,
    WorkersOpt,
    check_device,
    console,
    out_opt,
    queries_opt,
    value,
)


def optimal_loss_cmd(
    data: str = DataOpt,
    process: ProcessName = typer.Option(ProcessName.edm, help="Forward process (sets t and the target units)."),
    target: TargetName = typer.Option(TargetName.x0, help="Prediction target whose loss units to report."),
    estimator: EstimatorName = typer.Option(EstimatorName.full, help="full: exact posterior; snis/dol/cdol: subsets."),
    subset: int = typer.Option(None, "--subset", "-L", help="Subset size L for snis/dol/cdol [default: min(N,256)]."),
    c: float = typer.Option(None, "--C", help="cdol: source weight divisor C [default: 4N/L]."),
    queries_per_level: int = queries_opt(256, "Noisy queries per noise level (at most, with --target-se)."),
    target_se: float = typer.Option(
        None, "--target-se", help="Draw queries per level until its s.e. ≤ this fraction of its value (e.g. 1e-3)."
    ),
    sigmas: str = typer.Option("0.002:80:64", help="Noise levels (VE-equivalent s): LO:HI:N log grid or a comma list."),
    recipe: str = typer.Option(
        None,
        help="Training recipe for the weighted total (in the table's units): edm, uniform-t, or a CSV "
        "sigma,p[,weight]. Default: the process's own (uniform t for vp, vp-cosine and fm; edm for edm and ve).",
    ),
    sum_dims: bool = typer.Option(False, "--sum", help="Report losses summed over dimensions (default: per dim)."),
    holdout: float = typer.Option(None, help="Hold out this fraction (seeded) and use the rest as training set."),
    scale: ScaleName = ScaleOpt,
    seed: int = SeedOpt,
    chunk_size: int = ChunkOpt,
    out: Path = out_opt("runs/optimal-loss"),
    resume: bool = typer.Option(False, help="Continue an interrupted run in --out with the same settings."),
    workers: int = WorkersOpt,
    dask_scheduler: str = DaskOpt,
    precision: PrecisionName = PrecisionOpt,
    fast_tol: float = FastTolOpt,
    device: str = DeviceOpt,
) -> None:
    """Optimal (lowest achievable) loss at every noise level: writes optimal_loss.{json,csv,png}."""
    opts = {k: value(v) for k, v in locals().items() if k not in ("data", "out", "c", "device")}
    dev = check_device(device)
    with Bars() as bars:
        result = run_optimal_loss(data, out, C=c, device=dev, progress=bars, say=console.print, **opts)
    print_curve(result)
    console.print(f"wrote {out}/optimal_loss.json, .csv, .png")


def print_curve(result: dict) -> None:
    table = Table(title=f"optimal loss ({result['target']} units, {result['reduction']} over dims)")
    for col in ("σ", "t", "J*", "± s.e.", "J*_x0", "queries", "max w", "eff. count"):
        table.add_column(col, justify="right")
    for lv in result["levels"]:
        table.add_row(
            f"{lv['sigma']:.4g}",
            f"{lv['t']:.4g}",
            f"{lv['optimal_loss']:.4g}",
            f"{lv['stderr']:.2g}",
            f"{lv['optimal_loss_x0']:.4g}",
            str(lv["samples"]),
            f"{lv['mean_max_weight']:.3f}",
            f"{lv['mean_eff_count']:.3g}",
        )
    Console().print(table)
    crit = result["critical_sigma"]
    for name, tot in result["total"].items():
        Console().print(
            f"total under recipe {name} ({tot.get('units', result['target'] + ' units')}): "
            f"{tot['value']:.5g} ± {tot['stderr']:.2g} "
            f"(recipe mass inside the grid: {tot['coverage']:.1%})"
        )
    Console().print(
        f"data variance per dim {result['data_variance']:.4g}; critical σ (J* reaches 1% of it): "
        + (f"{crit:.4g}" if crit else "not reached")
    )


def denoise_cmd(
    queries: Path = typer.Option(..., help="Noisy queries x̃ = x0 + σ·ε (VE form), .npy of shape (B, ...)"),
    sigma: float = typer.Option(..., help="Noise level σ of the queries (VE-equivalent)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npy for E[x0 | x̃], same shape as the queries."),
    data: str = DataOpt,
    temperature: float = typer.Option(1.0, help="Softmax temperature T (T > 1 smooths the posterior)."),
    scale: ScaleName = ScaleOpt,
    chunk_size: int = ChunkOpt,
    workers: int = WorkersOpt,
    dask_scheduler: str = DaskOpt,
    precision: PrecisionName = PrecisionOpt,
    fast_tol: float = FastTolOpt,
    device: str = DeviceOpt,
) -> None:
    """The exact empirical optimal denoiser E[x0 | x̃] applied to given noisy queries."""
    opts = {k: value(v) for k, v in locals().items() if k not in ("queries", "sigma", "out", "device")}
    n, ds = run_denoise(queries, sigma, out, device=check_device(device), **opts)
    console.print(f"denoised {n} queries at σ={sigma:g} against {ds.spec} (N={ds.n}); wrote {out}")
