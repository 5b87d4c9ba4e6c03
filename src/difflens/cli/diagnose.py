"""Commands that measure a model against the optimal loss: ``diagnose``, ``schedule``, ``scaling``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from difflens.analysis.diagnose_run import run_diagnose
from difflens.analysis.schedule_run import run_scaling, run_schedule
from difflens.cli.common import (
    DATA_HELP,
    Bars,
    DataOpt,
    DeviceOpt,
    ModelOpt,
    PredictionType,
    ProcessName,
    ScaleName,
    ScaleOpt,
    ScheduleUnits,
    SeedOpt,
    SigmasOpt,
    TargetName,
    ThreadsOpt,
    check_device,
    config_options,
    console,
    out_opt,
    queries_opt,
    set_threads,
    value,
)
from difflens.cli.train import SCHEDULE_HELP
from difflens.models.train import TrainConfig

UNITS_HELP = "Callables and logs: the model's {0}. Runs/diffusers: report in these units. [default: {1}]"
SCHEDULER_HELP = "diffusers scheduler config: a folder or its .json [default: beside the model]."
PREDICTION_HELP = "diffusers model's prediction type [default: from its scheduler config]."


def diagnose_cmd(
    model: str = ModelOpt,
    from_log: Path = typer.Option(None, help="Instead of a model: a CSV (sigma or t, loss[, step]) or metrics.jsonl."),
    checkpoints: str = typer.Option(None, help="Run folder or glob of checkpoints: excess over training (heat map)."),
    checkpoint: Path = typer.Option(None, help="Weights (.pt/.safetensors) for a module:Class model."),
    data: str = typer.Option(None, "--data", "-d", help=DATA_HELP + " [default: the run's data, else digits]"),
    scale: ScaleName = ScaleOpt,
    holdout: float = typer.Option(None, help="Held-out fraction [default: the run's; none for other models]."),
    split_seed: int = typer.Option(None, help="Seed of the split [default: the run's, else 0]."),
    process: ProcessName = typer.Option(None, help=UNITS_HELP.format("process", "edm")),
    target: TargetName = typer.Option(None, help=UNITS_HELP.format("target", "x0")),
    time_scale: float = typer.Option(None, help="Multiplier of a callable's time input."),
    shape: str = typer.Option(None, help="Network input shape per sample, e.g. 1,8,8 [default: from the data]."),
    scheduler: Path = typer.Option(None, help=SCHEDULER_HELP),
    prediction_type: PredictionType = typer.Option(None, help=PREDICTION_HELP),
    trust_pickle: bool = typer.Option(False, help="Allow .pt files holding pickled Python objects."),
    recipe: str = typer.Option(None, help="Recipe for totals: edm, uniform-t or CSV [default: the run's schedule]."),
    sigmas: str = SigmasOpt,
    images: int = typer.Option(1024, help="Images per split for the model's loss (fixed noise per image)."),
    queries_per_level: int = queries_opt(1024),
    batch_size: int = typer.Option(512, help="Model batch size."),
    seed: int = SeedOpt,
    sample_quality: bool = typer.Option(False, help="With --checkpoints: r(excess at σ, samples' Fréchet distance)."),
    feature: str = typer.Option("pca", help="--sample-quality features: pca[:K], pixels or module:attr."),
    quality_samples: int = typer.Option(512, help="--sample-quality: samples per checkpoint (EDM Heun, 18 steps)."),
    threads: int = ThreadsOpt,
    device: str = DeviceOpt,
    out: Path = out_opt("runs/diagnose"),
) -> None:
    """Model loss vs the optimal loss per level: excess, ratios, totals, heat map, HTML report."""
    opts = {k: value(v) for k, v in locals().items() if k not in ("out", "threads", "device")}
    dev = check_device(device)
    set_threads(threads)
    with Bars() as bars:
        result, written = run_diagnose(out, device=dev, progress=bars, say=console.print, **opts)
    print_diagnosis(result)
    console.print("wrote " + ", ".join(str(p) for p in written))


def print_diagnosis(result: dict) -> None:
    table = Table(title=f"model vs optimal loss ({result['units']['target']} units, per dim)")
    for col in ("σ", "J*", "train", "held-out", "excess", "± s.e.", "excess ratio"):
        table.add_column(col, justify="right")
    fmt = lambda v: "–" if v is None else f"{v:.4g}"  # noqa: E731
    for lv in result["levels"]:
        table.add_row(
            *(fmt(lv[k]) for k in ("sigma", "optimal", "train", "held", "excess", "excess_stderr", "excess_ratio"))
        )
    Console().print(table)
    Console().print(result["verdict"])
    if "sample_quality" in result:
        q = result["sample_quality"]
        pairs = zip(q["sigmas"], q["correlation"], strict=True)
        console.print("r(excess, FD) per σ: " + ", ".join(f"{s:.3g}: {r:+.2f}" for s, r in pairs if r is not None))


@config_options(
    TrainConfig,
    {k: v.removeprefix("optimal-loss schedule: ") for k, v in SCHEDULE_HELP.items()},
    into="schedule_options",
    choices={"units": ScheduleUnits},
    build=dict,
)
def schedule_cmd(
    schedule_options: dict,
    data: str = DataOpt,
    scale: ScaleName = ScaleOpt,
    holdout: float = typer.Option(None, help="Use the training part of a seeded split (as the run did)."),
    model: str = ModelOpt,
    from_log: Path = typer.Option(None, help="Model losses per level: CSV (sigma or t, loss) or metrics.jsonl."),
    process: ProcessName = typer.Option(ProcessName.edm, help="Process of the training target (loss units)."),
    target: TargetName = typer.Option(TargetName.edm, help="Training target (loss units)."),
    queries_per_level: int = queries_opt(512, "Queries per bin for the optimal loss."),
    images: int = typer.Option(512, help="Training images for the model's per-bin loss (--model)."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    out: Path = out_opt("runs/schedule"),
) -> None:
    """Xu et al.'s optimal-loss schedule: w(σ) and p(σ) as a recipe for `train --schedule`: adaptive, or
    fixed from a pilot run's per-level loss (--model / --from-log)."""
    opts = {k: value(v) for k, v in locals().items() if k not in ("out", "schedule_options", "device")}
    result = run_schedule(out, schedule_options, device=check_device(device), **opts)
    if model is None and from_log is None:
        console.print("no --model or --from-log: adaptive; p(σ) uniform until a model loss is known (as at start)")
    params, crit = result["params"], result["params"]["critical_sigma"]
    console.print(f"{params['mode']} schedule in {params['units']} units; critical σ* = {crit if crit else 'none'}")
    console.print(f"wrote {out}/schedule.json (train --schedule), schedule.csv, recipe.csv (--recipe), schedule.png")


def scaling_cmd(
    table: Path = typer.Argument(None, help="CSV: compute|params|C|flops|steps, loss[, sigma][, optimal]."),
    runs: str = typer.Option(None, help="Instead of a table: a glob of difflens run folders (e.g. 'runs/width*')."),
    x: str = typer.Option("params", help="With --runs: params, or compute (6 · params · steps · batch)."),
    sigmas: str = typer.Option("0.05,0.2,0.5,1,2,5,20", help="With --runs: noise levels to measure."),
    images: int = typer.Option(1024, help="With --runs: training images per level (fixed noise per image)."),
    data: str = typer.Option(None, "--data", "-d", help="Data for J* at each sigma when the table has no optimal."),
    scale: ScaleName = ScaleOpt,
    holdout: float = typer.Option(None, help="Use the training part of a seeded split for J*."),
    process: ProcessName = typer.Option(ProcessName.edm, help="Loss units of the table: process."),
    target: TargetName = typer.Option(TargetName.x0, help="Loss units of the table: target."),
    optimal: float = typer.Option(None, help="J* for rows without sigma (e.g. a recipe-weighted total)."),
    queries_per_level: int = queries_opt(1024, "Queries per level for J*."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    out: Path = out_opt("runs/scaling"),
) -> None:
    """Fit J = βC^α, J − J* = βC^α and J = E + βC^α, with CIs and log–log correlations; plot them."""
    opts = {k: value(v) for k, v in locals().items() if k not in ("out", "device")}
    dev = check_device(device)
    with Bars() as bars:
        groups, flat = run_scaling(out, device=dev, progress=bars, **opts)
    print_fits(groups, flat)
    console.print(f"wrote {out}/scaling.json, scaling.csv, scaling.png")


def print_fits(groups: list[dict], flat: list[dict]) -> None:
    t = Table(title="power-law fits (log–log R², correlation)")
    for col in ("σ", "fit", "α ± 95% CI", "β", "E / J*", "R²", "corr"):
        t.add_column(col, justify="right")
    for r in flat:
        t.add_row(
            "total" if r["sigma"] is None else f"{r['sigma']:.3g}",
            r["fit"],
            f"{r['alpha']:.3f} ± {(r['alpha_ci'][1] - r['alpha_ci'][0]) / 2:.3f}",
            f"{r['beta']:.3g}",
            f"{r['offset']:.3g}",
            f"{r['r2']:.3f}",
            f"{r['corr']:.3f}",
        )
    Console().print(t)
    for g in groups:
        for k, msg in g["errors"].items():
            console.print(f"[yellow]{k} fit skipped[/] ({'total' if g['sigma'] is None else g['sigma']}): {msg}")
