"""The `difflens` command line: one sub-command per capability."""

from __future__ import annotations

import functools
import sys
from dataclasses import asdict
from enum import Enum
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from difflens import data as data_mod
from difflens.errors import DifflensError

app = typer.Typer(
    help="difflens: measure diffusion training against the empirical optimal denoiser.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console(stderr=True)

ProcessName = Enum("ProcessName", {k: k for k in ("ve", "vp", "vp-cosine", "edm", "fm")}, type=str)
TargetName = Enum("TargetName", {k: k for k in ("x0", "eps", "score", "v", "flow", "edm")}, type=str)
EstimatorName = Enum("EstimatorName", {k: k for k in ("full", "snis", "dol", "cdol")}, type=str)
ScaleName = Enum("ScaleName", {k: k for k in data_mod.SCALES}, type=str)

DATA_HELP = "Data spec: digits (default), lfw, PATH.npy, PATH.npz[:KEY], an image folder, or toy:NAME[:k=v,...]."
DataOpt = typer.Option("digits", "--data", "-d", help=DATA_HELP)
ScaleOpt = typer.Option(ScaleName.auto, help="auto: integer/image data → [−1, 1], floats as given.")
SeedOpt = typer.Option(0, help="Random seed: same seed, same results.")


def friendly_errors(fn):
    """Bad input ends the command with one clear line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DifflensError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except MemoryError:
            console.print("[bold red]error:[/] out of memory: lower --chunk-size or the number of queries")
            raise typer.Exit(2) from None

    return wrapper


def progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def load_data(spec: str, scale: ScaleName | str, holdout: float | None = None, seed: int = 0):
    """Open a data spec; with ``holdout``, the training part of a seeded split."""
    ds = data_mod.load(spec, getattr(scale, "value", scale))
    if holdout:
        ds, _ = ds.split(holdout, seed)
    return ds


@app.command("optimal-loss")
@friendly_errors
def optimal_loss_cmd(
    data: str = DataOpt,
    process: ProcessName = typer.Option(ProcessName.edm, help="Forward process (sets t and the target units)."),
    target: TargetName = typer.Option(TargetName.x0, help="Prediction target whose loss units to report."),
    estimator: EstimatorName = typer.Option(EstimatorName.full, help="full: exact posterior; snis/dol/cdol: subsets."),
    subset: int = typer.Option(None, "--subset", "-L", help="Subset size L for snis/dol/cdol [default: min(N,256)]."),
    c: float = typer.Option(None, "--C", help="cdol: source weight divisor C [default: 4N/L]."),
    samples: int = typer.Option(256, "--samples", "-M", help="Noisy queries per noise level."),
    sigmas: str = typer.Option("0.002:80:64", help="Noise levels (VE-equivalent s): LO:HI:N log grid or a comma list."),
    recipe: str = typer.Option("edm", help="Training recipe for the weighted total: edm, uniform-t, or a CSV."),
    sum_dims: bool = typer.Option(False, "--sum", help="Report losses summed over dimensions (default: per dim)."),
    holdout: float = typer.Option(None, help="Hold out this fraction (seeded) and use the rest as training set."),
    scale: ScaleName = ScaleOpt,
    seed: int = SeedOpt,
    chunk_size: int = typer.Option(None, help="Data rows per kernel chunk [default: from free memory]."),
    out: Path = typer.Option(Path("runs/optimal-loss"), "--out", "-o", help="Output directory."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in --out with the same settings."),
):
    """Optimal (lowest achievable) loss at every noise level: writes optimal_loss.{json,csv,png}."""
    from difflens import optimal_loss as ol
    from difflens import processes, report

    grid = processes.parse_sigmas(sigmas)
    ds = load_data(data, scale, holdout, seed)
    config = {
        "dataset": ds.summary(),
        "process": process.value,
        "target": target.value,
        "estimator": estimator.value,
        "subset": subset,
        "C": c,
        "samples": samples,
        "sigmas": [float(s) for s in np.sort(grid)],
        "seed": seed,
        "reduction": "sum" if sum_dims else "mean",
    }
    log = report.LevelLog(out / "levels.jsonl", config, resume)
    done = {i: ol.Level(**lv) for i, lv in log.done.items()}
    console.print(
        f"[bold]{ds.spec}[/]: N={ds.n}, D={ds.dim}, shape={ds.shape}; {len(grid)} levels × {samples} queries, "
        f"estimator {estimator.value}" + (f" (resuming, {len(done)} levels done)" if done else "")
    )
    with progress() as bar:
        task = bar.add_task("noise levels", total=len(grid), completed=len(done))

        def on_level(i, level):
            log.append(i, asdict(level))
            bar.advance(task)

        curve = ol.optimal_loss_curve(
            ds,
            grid,
            process=process.value,
            target=target.value,
            estimator=estimator.value,
            subset=subset,
            C=c,
            samples=samples,
            seed=seed,
            reduction=config["reduction"],
            recipe=recipe,
            chunk_size=chunk_size,
            done=done,
            on_level=on_level,
        )
    result = curve.to_dict()
    rows = [{k: v for k, v in lv.items()} for lv in result["levels"]]
    report.write_csv(out / "optimal_loss.csv", rows)
    report.plot_optimal_loss(result, out / "optimal_loss.png")
    report.write_json(out / "optimal_loss.json", result)  # last: its presence means the run completed
    _print_curve(result)
    console.print(f"wrote {out}/optimal_loss.json, .csv, .png")


def _print_curve(result: dict) -> None:
    table = Table(title=f"optimal loss ({result['target']} units, {result['reduction']} over dims)")
    for col in ("σ", "t", "J*", "± s.e.", "J*_x0", "max w", "eff. count"):
        table.add_column(col, justify="right")
    for lv in result["levels"]:
        table.add_row(
            f"{lv['sigma']:.4g}",
            f"{lv['t']:.4g}",
            f"{lv['optimal_loss']:.4g}",
            f"{lv['stderr']:.2g}",
            f"{lv['optimal_loss_x0']:.4g}",
            f"{lv['mean_max_weight']:.3f}",
            f"{lv['mean_eff_count']:.3g}",
        )
    Console().print(table)
    crit = result["critical_sigma"]
    for name, tot in result["total"].items():
        Console().print(
            f"total under recipe {name}: {tot['value']:.5g} ± {tot['stderr']:.2g} "
            f"(recipe mass inside the grid: {tot['coverage']:.1%})"
        )
    Console().print(
        f"data variance per dim {result['data_variance']:.4g}; critical σ (J* reaches 1% of it): "
        + (f"{crit:.4g}" if crit else "not reached")
    )


@app.command()
@friendly_errors
def denoise(
    queries: Path = typer.Option(..., help="Noisy queries x̃ = x0 + σ·ε (VE form), .npy of shape (B, ...)"),
    sigma: float = typer.Option(..., help="Noise level σ of the queries (VE-equivalent)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npy for E[x0 | x̃], same shape as the queries."),
    data: str = DataOpt,
    temperature: float = typer.Option(1.0, help="Softmax temperature T (T > 1 smooths the posterior)."),
    scale: ScaleName = ScaleOpt,
    chunk_size: int = typer.Option(None, help="Data rows per kernel chunk [default: from free memory]."),
):
    """The exact empirical optimal denoiser E[x0 | x̃] applied to given noisy queries."""
    from difflens import oracle, report

    if not temperature > 0:
        raise DifflensError(f"--temperature must be > 0, got {temperature}")
    try:
        q = np.load(queries, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DifflensError(f"cannot read queries {queries} ({exc})") from None
    ds = load_data(data, scale)
    if q.ndim == 1 or q.size == 0 or q[0].size != ds.dim:
        raise DifflensError(f"queries {queries} have shape {q.shape}; need (B, ...) with {ds.dim} values per query")
    result = oracle.denoise(q.reshape(len(q), -1), ds, sigma, temperature, chunk_size=chunk_size)
    buf = __import__("io").BytesIO()
    np.save(buf, result.numpy().reshape(q.shape))
    report._atomic_write(out, buf.getvalue())
    console.print(f"denoised {len(q)} queries at σ={sigma:g} against {ds.spec} (N={ds.n}); wrote {out}")


@app.command("data")
@friendly_errors
def data_cmd(data: str = DataOpt, scale: ScaleName = ScaleOpt):
    """Describe a data spec: size, shape, content hash, value range, variance per dimension."""
    ds = load_data(data, scale)
    st = ds.stats
    Console().print_json(data={**ds.summary(), "min": st.minimum, "max": st.maximum, "variance_per_dim": st.variance})


def main() -> None:
    app(prog_name="difflens")


if __name__ == "__main__":
    sys.exit(main())
