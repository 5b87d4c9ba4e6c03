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
PrecisionName = Enum("PrecisionName", {k: k for k in ("exact", "fast")}, type=str)
WorkersOpt = typer.Option(None, "--workers", help="Run the kernel on a local dask cluster of N worker processes.")
SchedulerOpt = typer.Option(None, "--scheduler", help="Run the kernel on an existing dask cluster (tcp://host:8786).")
PrecisionOpt = typer.Option(
    PrecisionName.exact,
    help="fast: an int8 screen skips training points of provably negligible weight (same answer, < 1e-16 of "
    "the mass skipped); 3-4.5x faster where the posterior sits on a few points (low noise), no faster at high noise.",
)

FastTolOpt = typer.Option(1e-16, "--fast-tol", help="With --precision fast: most posterior mass skipped per query.")


def kernel_precision(precision: PrecisionName, fast_tol: float):
    """What ``oracle.posterior`` takes as ``precision``."""
    from difflens.kernel import screening

    return screening.Fast(tol=fast_tol) if precision is PrecisionName.fast else precision.value


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
    workers: int = WorkersOpt,
    scheduler: str = SchedulerOpt,
    precision: PrecisionName = PrecisionOpt,
    fast_tol: float = FastTolOpt,
):
    """Optimal (lowest achievable) loss at every noise level: writes optimal_loss.{json,csv,png}."""
    from difflens import report
    from difflens.analysis import optimal_loss as ol
    from difflens.diffusion import processes
    from difflens.kernel.engines import open_engine

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
    with open_engine(workers, scheduler) as engine, progress() as bar:
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
            engine=engine,
            precision=kernel_precision(precision, fast_tol),
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
    workers: int = WorkersOpt,
    scheduler: str = SchedulerOpt,
    precision: PrecisionName = PrecisionOpt,
    fast_tol: float = FastTolOpt,
):
    """The exact empirical optimal denoiser E[x0 | x̃] applied to given noisy queries."""
    from difflens import report
    from difflens.kernel import oracle
    from difflens.kernel.engines import open_engine

    if not temperature > 0:
        raise DifflensError(f"--temperature must be > 0, got {temperature}")
    try:
        q = np.load(queries, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DifflensError(f"cannot read queries {queries} ({exc})") from None
    ds = load_data(data, scale)
    if q.ndim == 1 or q.size == 0 or q[0].size != ds.dim:
        raise DifflensError(f"queries {queries} have shape {q.shape}; need (B, ...) with {ds.dim} values per query")
    data_mod.check_same_layout(q.shape[1:], ds.shape, "queries", "the data")
    with open_engine(workers, scheduler) as engine:
        kernel = {"chunk_size": chunk_size, "engine": engine, "precision": kernel_precision(precision, fast_tol)}
        result = oracle.denoise(q.reshape(len(q), -1), ds, sigma, temperature, **kernel)
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


# ---- training diagnosis commands: train, diagnose, schedule, scaling

ArchName = Enum("ArchName", {k: k for k in ("mlp", "unet")}, type=str)
ScheduleName = Enum("ScheduleName", {k: k for k in ("edm", "uniform-t", "optimal-loss")}, type=str)
ModelOpt = typer.Option(
    None,
    "--model",
    "-m",
    help="oracle, a run folder, ckpt .pt/.safetensors, diffusers:DIR, module:attr or file.py:attr.",
)


def _model_options(process, target, time_scale, shape):
    return {
        "process": process,
        "target": target,
        "time_scale": time_scale,
        "shape": tuple(int(v) for v in shape.split(",")) if shape else None,
    }


@app.command("train")
@friendly_errors
def train_cmd(
    data: str = DataOpt,
    scale: ScaleName = ScaleOpt,
    holdout: float = typer.Option(0.1, help="Held-out fraction (seeded by --split-seed; 0 = none)."),
    split_seed: int = typer.Option(0, help="Seed of the train/held-out split."),
    arch: ArchName = typer.Option(ArchName.mlp, help="Tiny MLP or small U-Net (images)."),
    width: int = typer.Option(None, help="Hidden width (MLP) or base channels (U-Net) [default: 128 / 16]."),
    depth: int = typer.Option(3, help="MLP blocks."),
    process: ProcessName = typer.Option(ProcessName.edm, help="Forward process the network is trained on."),
    target: TargetName = typer.Option(TargetName.edm, help="Prediction target (edm = EDM preconditioning)."),
    time_scale: float = typer.Option(1.0, help="Multiplier of the network's time input."),
    schedule: ScheduleName = typer.Option(ScheduleName.edm, help="Noise-level schedule and weighting."),
    bins: int = typer.Option(32, help="optimal-loss schedule: bins in ln σ between --sigma-min and --sigma-max."),
    sigma_min: float = typer.Option(0.002, help="optimal-loss schedule: lowest σ."),
    sigma_max: float = typer.Option(80.0, help="optimal-loss schedule: highest σ."),
    a: float = typer.Option(1.0, help="optimal-loss schedule: weight scale a."),
    w_max: float = typer.Option(1e3, help="optimal-loss schedule: weight cap w_max."),
    bump: float = typer.Option(0.0, help="optimal-loss schedule: Gaussian bump height (× a) in ln σ."),
    bump_center: float = typer.Option(None, help="optimal-loss schedule: bump centre σ."),
    bump_width: float = typer.Option(0.5, help="optimal-loss schedule: bump width in ln σ."),
    mix: float = typer.Option(0.1, help="optimal-loss schedule: uniform floor mixed into p(σ)."),
    steps: int = typer.Option(2000, help="Optimizer steps."),
    batch: int = typer.Option(256, help="Batch size."),
    lr: float = typer.Option(2e-3, help="Adam learning rate."),
    ema: float = typer.Option(0.999, help="EMA decay of the saved weights."),
    seed: int = SeedOpt,
    log_every: int = typer.Option(100, help="Steps between metrics.jsonl lines."),
    ckpt_every: int = typer.Option(500, help="Steps between checkpoints."),
    noise_unconditioned: bool = typer.Option(
        False, help="The network gets a constant time input (blind to σ; the preconditioning still uses σ)."
    ),
    smooth_below: float = typer.Option(
        None, help="Regress samples with σ < S_C on the smoothed empirical denoiser E_T(σ)[x0|x̃] instead of x0."
    ),
    smooth_temperature: float = typer.Option(1.0, help="With --smooth-below: T in T(σ) = T·max(S_C/σ, 1)."),
    threads: int = typer.Option(0, help="Torch CPU threads (0 = torch's default)."),
    out: Path = typer.Option(Path("runs/train"), "--out", "-o", help="Output directory."),
):
    """Train a tiny reference denoiser: metrics.jsonl, ckpt_*.pt, model.safetensors, train.json."""
    from difflens.models.train import TrainConfig, train

    cfg = TrainConfig(
        data=data,
        scale=scale.value,
        holdout=holdout,
        split_seed=split_seed,
        arch=arch.value,
        width=width or (128 if arch.value == "mlp" else 16),
        depth=depth,
        process=process.value,
        target=target.value,
        time_scale=time_scale,
        schedule=schedule.value,
        bins=bins,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        a=a,
        w_max=w_max,
        bump=bump,
        bump_center=bump_center,
        bump_width=bump_width,
        mix=mix,
        steps=steps,
        batch=batch,
        lr=lr,
        ema=ema,
        seed=seed,
        log_every=log_every,
        ckpt_every=ckpt_every,
        noise_unconditioned=noise_unconditioned,
        smooth_temperature=smooth_temperature,
        smooth_below=smooth_below,
    )
    with progress() as bar:
        task = bar.add_task("training", total=steps)
        summary = train(cfg, out, on_step=lambda step, loss: bar.update(task, completed=step), threads=threads or None)
    console.print(
        f"trained {summary['arch']['name']} ({summary['parameters']:,} parameters) on {summary['data']['spec']} "
        f"for {steps} steps in {summary['seconds']:.0f} s; wrote {out}/model.safetensors, metrics.jsonl, train.json"
    )


@app.command("diagnose")
@friendly_errors
def diagnose_cmd(
    model: str = ModelOpt,
    from_log: Path = typer.Option(None, help="Instead of a model: a CSV (sigma or t, loss[, step]) or metrics.jsonl."),
    checkpoints: str = typer.Option(None, help="Run folder or glob of checkpoints: excess over training (heat map)."),
    checkpoint: Path = typer.Option(None, help="Weights (.pt/.safetensors) for a module:Class model."),
    data: str = typer.Option(None, "--data", "-d", help=DATA_HELP + " [default: the run's data, else digits]"),
    scale: ScaleName = ScaleOpt,
    holdout: float = typer.Option(None, help="Held-out fraction [default: the run's; none for other models]."),
    split_seed: int = typer.Option(None, help="Seed of the split [default: the run's, else 0]."),
    process: ProcessName = typer.Option(
        None, help="Callables and logs: the model's process. Runs/diffusers: report in these units. [default: edm]"
    ),
    target: TargetName = typer.Option(
        None, help="Callables and logs: the model's target. Runs/diffusers: report in these units. [default: x0]"
    ),
    time_scale: float = typer.Option(None, help="Multiplier of a callable's time input."),
    shape: str = typer.Option(None, help="Network input shape per sample, e.g. 1,8,8 [default: from the data]."),
    scheduler: Path = typer.Option(None, help="diffusers scheduler_config.json [default: next to the model]."),
    trust_pickle: bool = typer.Option(False, help="Allow .pt files holding pickled Python objects."),
    recipe: str = typer.Option(None, help="Recipe for totals: edm, uniform-t or CSV [default: the run's schedule]."),
    sigmas: str = typer.Option("0.002:80:24", help="Noise levels: LO:HI:N log grid or a comma list."),
    images: int = typer.Option(1024, help="Images per split for the model's loss (fixed noise per image)."),
    samples: int = typer.Option(1024, "--samples", "-M", help="Queries per level for the optimal loss."),
    batch_size: int = typer.Option(512, help="Model batch size."),
    seed: int = SeedOpt,
    threads: int = typer.Option(0, help="Torch CPU threads (0 = torch's default)."),
    out: Path = typer.Option(Path("runs/diagnose"), "--out", "-o", help="Output directory."),
):
    """Model loss vs the optimal loss per level: excess, ratios, totals, heat map, HTML report."""
    import glob

    import torch

    from difflens.analysis import diagnose as dg
    from difflens.diffusion import processes
    from difflens.models import Parametrization, load_denoiser
    from difflens.models.load import default_shape

    if threads:
        torch.set_num_threads(threads)
    if (model is None) == (from_log is None):
        raise DifflensError("give exactly one of --model or --from-log")
    grid = np.sort(processes.parse_sigmas(sigmas))
    opts = _model_options(process and process.value, target and target.value, time_scale, shape)
    loaded, cfg = None, {}
    if model is not None and model != "oracle":
        loaded = load_denoiser(model, checkpoint=checkpoint, scheduler=scheduler, trust_pickle=trust_pickle, **opts)
        cfg = loaded.info.get("config", {})
    ds = data_mod.load(data or cfg.get("data", "digits"), scale.value if data else cfg.get("scale", scale.value))
    hold = holdout if holdout is not None else cfg.get("holdout")
    split = split_seed if split_seed is not None else cfg.get("split_seed", 0)
    train_ds, held_ds = ds.split(hold, split) if hold else (ds, None)
    if model == "oracle":
        loaded = load_denoiser("oracle", data=train_ds)
    elif loaded is not None and loaded.denoiser.shape is None:
        loaded.denoiser.shape = default_shape(ds.shape)
    data_mod.check_same_layout(
        getattr(loaded and loaded.denoiser, "shape", None) or (), ds.shape, "model inputs", "data"
    )
    if loaded is not None and loaded.info.get("data") and loaded.info["data"]["hash"] != train_ds.stats.hash:
        console.print("[yellow]warning:[/] these training data differ from the run's (other data spec or split)")
    logged = dg.log_units(from_log) if from_log is not None else None
    own = loaded.param if loaded is not None and loaded.param is not None else None
    if own is None and logged and not (process or target):
        own = Parametrization.of(logged["process"], logged["target"])
    own = own or Parametrization.of(opts["process"] or "edm", opts["target"] or "x0")
    units = own
    if loaded is not None and loaded.info.get("kind") in ("difflens", "diffusers") and (process or target):
        proc = processes.get_process(process.value) if process else own.process
        units = Parametrization(proc, target.value if target else own.target)
    quad, recipe_name = dg.model_recipe(loaded.info if loaded else {}, own, recipe)
    console.print(
        f"[bold]{train_ds.spec}[/]: N={train_ds.n}, held-out {held_ds.n if held_ds else 0}; {len(grid)} levels"
    )
    if from_log is not None:
        rows = dg.read_loss_log(from_log, units.process)
        result = dg.diagnose_log(rows, train_ds, units, quad, samples, seed)
        title = f"{from_log.name} vs the optimal loss of {train_ds.spec}"
    else:
        with progress() as bar:
            task = bar.add_task("optimal loss and model", total=None)
            optimal = dg.optimal_levels(train_ds, grid, samples, seed)
            result = dg.diagnose_model(
                loaded.denoiser,
                train_ds,
                held_ds,
                grid,
                units=units,
                quad=quad,
                images=images,
                seed=seed,
                batch_size=batch_size,
                optimal=optimal,
            )
            if checkpoints:
                folder = Path(checkpoints)
                paths = (
                    sorted(folder.glob("ckpt_*.pt")) if folder.is_dir() else sorted(map(Path, glob.glob(checkpoints)))
                )
                if not paths:
                    raise DifflensError(f"--checkpoints {checkpoints}: no checkpoint files found")
                bar.update(task, total=len(paths), completed=0, description="checkpoints")
                models = []
                for p in paths:
                    m = load_denoiser(str(p), data=train_ds)
                    models.append((int(m.info.get("step", len(models))), m.denoiser))
                    bar.advance(task)
                result["history"] = dg.excess_history(
                    models, train_ds, grid, units, optimal, images=images, seed=seed, batch_size=batch_size
                )
        title = f"{model} vs the optimal loss of {train_ds.spec}"
    result.update({"model": loaded.info if loaded else None, "recipe": recipe_name, "log": from_log and str(from_log)})
    written = dg.write_outputs(result, out, title)
    _print_diagnosis(result)
    console.print("wrote " + ", ".join(str(p) for p in written))


def _print_diagnosis(result: dict) -> None:
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


@app.command("schedule")
@friendly_errors
def schedule_cmd(
    data: str = DataOpt,
    scale: ScaleName = ScaleOpt,
    holdout: float = typer.Option(None, help="Use the training part of a seeded split (as the run did)."),
    model: str = ModelOpt,
    from_log: Path = typer.Option(None, help="Model losses per level: CSV (sigma or t, loss) or metrics.jsonl."),
    process: ProcessName = typer.Option(ProcessName.edm, help="Process of the training target (loss units)."),
    target: TargetName = typer.Option(TargetName.edm, help="Training target (loss units)."),
    bins: int = typer.Option(32, help="Bins in ln σ."),
    sigma_min: float = typer.Option(0.002, help="Lowest σ."),
    sigma_max: float = typer.Option(80.0, help="Highest σ."),
    a: float = typer.Option(1.0, help="Weight scale a."),
    w_max: float = typer.Option(1e3, help="Weight cap w_max."),
    bump: float = typer.Option(0.0, help="Gaussian bump height (× a) in ln σ."),
    bump_center: float = typer.Option(None, help="Bump centre σ."),
    bump_width: float = typer.Option(0.5, help="Bump width in ln σ."),
    mix: float = typer.Option(0.1, help="Uniform floor mixed into p(σ)."),
    samples: int = typer.Option(512, "--samples", "-M", help="Queries per bin for the optimal loss."),
    images: int = typer.Option(512, help="Training images for the model's per-bin loss (--model)."),
    seed: int = SeedOpt,
    out: Path = typer.Option(Path("runs/schedule"), "--out", "-o", help="Output directory."),
):
    """Xu et al.'s optimal-loss schedule: weights w(σ) and sampling density p(σ) as a table and recipe."""
    from difflens import report
    from difflens.analysis import diagnose as dg
    from difflens.analysis.model_error import split_errors
    from difflens.diffusion import schedules as sched
    from difflens.models import Parametrization, load_denoiser

    ds = load_data(data, scale, holdout, seed=0)
    param = Parametrization.of(process.value, target.value)
    schedule = sched.OptimalLossSchedule.from_data(
        ds,
        param.factor,
        bins=bins,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        samples=samples,
        seed=seed,
        a=a,
        w_max=w_max,
        bump=bump,
        bump_center=bump_center,
        bump_width=bump_width,
        mix=mix,
    )
    centers = schedule.centers
    if model is not None and from_log is not None:
        raise DifflensError("give at most one of --model or --from-log")
    if model is not None:
        m = load_denoiser(model, data=ds)
        err = split_errors(m.denoiser, ds, centers, images=images, seed=seed).mean(1)
        schedule.set_model_loss(err * param.factor(centers))
    elif from_log is not None:
        rows = dg.read_loss_log(from_log, param.process)
        last: dict[float, tuple[int, float]] = {}
        for r in rows:
            if r["sigma"] not in last or r["step"] >= last[r["sigma"]][0]:
                last[r["sigma"]] = (r["step"], r["loss"])
        s_log = np.array(sorted(last))
        loss = np.array([last[s][1] for s in s_log])
        schedule.set_model_loss(np.exp(np.interp(np.log(centers), np.log(s_log), np.log(np.maximum(loss, 1e-300)))))
    table = schedule.table()
    report.write_csv(out / "schedule.csv", table)
    report.write_csv(  # x0-unit weights: usable as --recipe by optimal-loss and diagnose
        out / "recipe.csv",
        [{"sigma": r["sigma"], "p": r["p"], "weight": r["weight"] * param.factor(r["sigma"])} for r in table],
    )
    sched.plot_schedule(table, out / "schedule.png", f"optimal-loss schedule on {ds.spec} ({target.value} units)")
    report.write_json(
        out / "schedule.json", {"schedule": schedule.describe(), "units": param.describe(), "table": table}
    )
    if model is None and from_log is None:
        console.print("no --model or --from-log: p(σ) is uniform until a model loss is known (as at training start)")
    console.print(f"wrote {out}/schedule.json, schedule.csv, recipe.csv (for --recipe), schedule.png")


@app.command("scaling")
@friendly_errors
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
    samples: int = typer.Option(1024, "--samples", "-M", help="Queries per level for J*."),
    seed: int = SeedOpt,
    out: Path = typer.Option(Path("runs/scaling"), "--out", "-o", help="Output directory."),
):
    """Fit J = βC^α, J − J* = βC^α and J = E + βC^α, with CIs and log–log correlations; plot them."""
    from difflens import report
    from difflens.analysis import scaling as sc
    from difflens.analysis.diagnose import optimal_levels
    from difflens.models import Parametrization

    if (table is None) == (runs is None):
        raise DifflensError("give exactly one of a TABLE or --runs")
    if runs is not None:
        import glob

        from difflens.diffusion import processes

        paths = sorted(glob.glob(runs))
        if not paths:
            raise DifflensError(f"--runs {runs}: no run folders found")
        with progress() as bar:
            task = bar.add_task("runs", total=len(paths))
            xcol, rows = sc.table_from_runs(
                paths,
                processes.parse_sigmas(sigmas),
                x=x,
                images=images,
                samples=samples,
                seed=seed,
                on_run=lambda: bar.advance(task),
            )
        report.write_csv(out / "table.csv", [{xcol: r["x"], **{k: v for k, v in r.items() if k != "x"}} for r in rows])
    else:
        xcol, rows = sc.read_table(table)
    param = Parametrization.of(process.value, target.value)
    optimal_of = None
    levels = sorted({r["sigma"] for r in rows if "sigma" in r})
    if data is not None and levels:
        ds = load_data(data, scale, holdout, seed=0)
        j, _, _ = optimal_levels(ds, np.array(levels), samples, seed)
        by_level = dict(zip(levels, j * param.factor(np.array(levels)), strict=True))
        optimal_of = lambda s: by_level[s] if s is not None else optimal  # noqa: E731
    elif optimal is not None:
        optimal_of = lambda s: optimal  # noqa: E731
    groups = sc.fit_groups(rows, optimal_of)
    report.write_json(out / "scaling.json", {"x": xcol, "units": param.describe(), "groups": groups})
    flat = [
        {"sigma": g["sigma"], "fit": k, **{f: v for f, v in fit.items() if f not in ("kind",)}}
        for g in groups
        for k, fit in g["fits"].items()
    ]
    report.write_csv(out / "scaling.csv", flat)
    sc.plot_fits(groups, out / "scaling.png", xcol)
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
    console.print(f"wrote {out}/scaling.json, scaling.csv, scaling.png")


# ---- memorization, generalization gap, toy lab and score smoothing commands

SamplerName = Enum("SamplerName", {k: k for k in ("euler", "heun", "sde", "pc")}, type=str)
ErrorName = Enum("ErrorName", {k: k for k in ("mse", "l2")}, type=str)
BackendName = Enum("BackendName", {k: k for k in ("auto", "torch", "faiss")}, type=str)
SweepName = Enum("SweepName", {k: k for k in ("delta", "density", "guidance")}, type=str)
ToyDenoiser = Enum("ToyDenoiser", {k: k for k in ("optimal", "blurred", "guided")}, type=str)
ScoreName = Enum("ScoreName", {k: k for k in ("empirical", "unconditioned")}, type=str)
ThresholdOpt = typer.Option(1.0 / 3.0, help="A sample is memorized when d1/d2 is below this.")


def _float_list(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DifflensError(f"cannot parse {what} {text!r}: use a comma list like 0.1,0.2") from None
    if not values:
        raise DifflensError(f"{what} is empty")
    return values


def _subset(ds, size: int | None, seed: int):
    """A seeded random subset of ``size`` training samples (all of them if size is None or ≥ N)."""
    if size is None or size >= ds.n:
        return ds
    if size < 2:
        raise DifflensError(f"--subset must be ≥ 2, got {size}")
    return ds.subset(np.sort(np.random.default_rng(seed).choice(ds.n, size, replace=False)), f"[{size}]")


def _memorization_outputs(samples, ds, mem, out: Path, top: int) -> list[str]:
    """Write memorization.npz and the NN-distance / most-memorized plots; return the file names."""
    from difflens import report
    from difflens.analysis import memorization as mm

    report._atomic_write(out / "memorization.npz", mem.npz_bytes())
    mm.plot_nn_distances(mem, out / "nn_distance.png", title=f"{ds.spec}: {len(mem.d1)} samples")
    files = ["memorization.npz", "nn_distance.png"]
    if mm.is_image_shape(ds.shape):
        mm.plot_memorized(samples, ds, mem, out / "memorized.png", top=top)
        files.append("memorized.png")
    return files


@app.command("memorization")
@friendly_errors
def memorization_cmd(
    samples: str = typer.Option(
        ..., help="Generated samples: .npy, .npz[:KEY] or an image folder (same units as --data)."
    ),
    data: str = DataOpt,
    threshold: float = ThresholdOpt,
    feature: str = typer.Option(None, help="Feature map py:MODULE:NAME, a callable (n, D) tensor → (n, F) tensor."),
    backend: BackendName = typer.Option(BackendName.auto, help="Candidate search per chunk: torch GEMM or faiss."),
    top: int = typer.Option(16, help="Most-memorized samples to draw beside their nearest training images."),
    scale: ScaleName = ScaleOpt,
    chunk_size: int = typer.Option(None, help="Training rows per chunk [default: from free memory]."),
    out: Path = typer.Option(Path("runs/memorization"), "--out", "-o", help="Output directory."),
):
    """Nearest / second-nearest training samples of generated samples and the memorization ratio (d1/d2 test)."""
    from difflens import report
    from difflens.analysis import gap as gap_mod
    from difflens.analysis import memorization as mm

    ds = load_data(data, scale)
    gen = load_data(samples, scale)
    if gen.dim != ds.dim:
        raise DifflensError(f"samples have {gen.dim} values each but the training data has {ds.dim}")
    data_mod.check_same_layout(gen.shape, ds.shape, "samples", "the training data")
    fmap = gap_mod.load_callable(feature) if feature else None
    x = gen.rows(0, gen.n)
    with progress() as bar:
        task = bar.add_task("training rows", total=ds.n)
        mem = mm.memorization(
            x,
            ds,
            threshold=threshold,
            feature=fmap,
            backend=backend.value,
            chunk_size=chunk_size,
            on_chunk=lambda rows: bar.advance(task, rows),
        )
    files = _memorization_outputs(x.numpy(), ds, mem, out, top)
    result = {"dataset": ds.summary(), "samples": gen.summary(), "feature": feature, **mem.summary()}
    report.write_json(out / "memorization.json", result)
    Console().print(
        f"memorized {mem.memorized.sum()} of {len(mem.d1)} samples ({mem.memorization_ratio:.1%}, d1/d2 < "
        f"{threshold:.3g}); median NN distance {np.median(mem.d1):.4g}; {result['distinct_nearest']} distinct "
        f"nearest training samples"
    )
    console.print(f"wrote {out}/memorization.json, " + ", ".join(files))


@app.command("gap")
@friendly_errors
def gap_cmd(
    data: str = typer.Option(None, "--data", "-d", help=DATA_HELP + " [default: the run's data, else digits]"),
    holdout: float = typer.Option(None, help="Held-out fraction for validation [default: the run's, else 0.2]."),
    split_seed: int = typer.Option(None, help="Seed of the train/held-out split [default: the run's, else --seed]."),
    val: str = typer.Option(None, help="Validation data spec instead of a held-out fraction of --data."),
    denoiser: list[str] = typer.Option(
        ["oracle"],
        help="Denoiser(s): oracle[:T=…,sc=…,k=…] (empirical optimal denoiser of the training split, optionally "
        "smoothed), py:MODULE:NAME (a callable (x, sigma) → x0_hat), or a model as for diagnose --model "
        "(run folder, .pt/.safetensors, diffusers:DIR, module:attr).",
    ),
    checkpoints: str = typer.Option(None, help="Run folder or glob of checkpoints: one curve each, in name order."),
    trust_pickle: bool = typer.Option(False, help="Allow .pt files holding pickled Python objects."),
    sigmas: str = typer.Option("0.002:80:24", help="Noise levels: LO:HI:N log grid or a comma list."),
    draws: int = typer.Option(1, help="Noise draws per image (fixed across levels and denoisers)."),
    error: ErrorName = typer.Option(ErrorName.mse, help="mse: squared error per dim; l2: unsquared L2 norm."),
    images: int = typer.Option(256, help="Images per split (seeded subsample; 0 = all)."),
    scale: ScaleName = ScaleOpt,
    seed: int = SeedOpt,
    out: Path = typer.Option(Path("runs/gap"), "--out", "-o", help="Output directory."),
):
    """Generalization gap per noise level G(s) = (E_val − E_train)/E_train, for denoisers or checkpoints."""
    import glob

    from difflens import report
    from difflens.analysis import gap as gap_mod
    from difflens.diffusion import processes
    from difflens.models import load_denoiser
    from difflens.models.load import default_shape

    grid = np.sort(processes.parse_sigmas(sigmas))
    specs = list(denoiser)
    if checkpoints:
        folder = Path(checkpoints)
        paths = sorted(folder.glob("ckpt_*.pt")) if folder.is_dir() else sorted(map(Path, glob.glob(checkpoints)))
        if not paths:
            raise DifflensError(f"--checkpoints {checkpoints}: no checkpoint files found")
        specs = [s for s in specs if s != "oracle"] + [str(p) for p in paths]
    loaded = {s: load_denoiser(s, trust_pickle=trust_pickle) for s in specs if not gap_mod.is_closed_form(s)}
    cfg = next((m.info["config"] for m in loaded.values() if m.info.get("config")), {})
    full = data_mod.load(data or cfg.get("data", "digits"), scale.value if data else cfg.get("scale", scale.value))
    if val:
        train, held = full, load_data(val, scale)
    else:
        hold = holdout if holdout is not None else (cfg.get("holdout") or 0.2)
        train, held = full.split(hold, split_seed if split_seed is not None else cfg.get("split_seed", seed))
    for m in loaded.values():
        if getattr(m.denoiser, "shape", 1) is None:
            m.denoiser.shape = default_shape(full.shape)
        data_mod.check_same_layout(getattr(m.denoiser, "shape", None) or (), full.shape, "model inputs", "data")
    dens = {
        (Path(s).name if s in loaded and Path(s).exists() else s): (
            loaded[s].denoiser if s in loaded else gap_mod.resolve_denoiser(s, train)
        )
        for s in specs
    }
    with progress() as bar:
        task = bar.add_task("denoiser × level", total=len(dens) * len(grid))
        curves = gap_mod.generalization_gap(
            dens,
            train,
            held,
            grid,
            draws=draws,
            error=error.value,
            seed=seed,
            max_images=images or None,
            on_level=lambda *_: bar.advance(task),
        )
    rows = [
        {"denoiser": c.label, "sigma": s, "e_train": a, "e_val": b, "gap": g}
        for c in curves
        for s, a, b, g in zip(c.sigmas, c.e_train, c.e_val, c.gap, strict=True)
    ]
    report.write_csv(out / "gap.csv", rows)
    gap_mod.plot_gap(curves, out / "gap.png", title=f"generalization gap on {train.spec} vs {held.spec}")
    if len(curves) > 1:
        gap_mod.plot_gap_over_time(curves, out / "gap_over_checkpoints.png")
    result = {
        "train": train.summary(),
        "val": held.summary(),
        "seed": seed,
        "images_per_split": images or None,
        "curves": [c.to_dict() for c in curves],
    }
    report.write_json(out / "gap.json", result)
    for c in curves:
        d = c.to_dict()
        Console().print(f"{c.label}: peak G = {d['peak_gap']:.4g} at s = {d['peak_sigma']:.4g}")
    console.print(f"wrote {out}/gap.json, gap.csv, gap.png")


toy_app = typer.Typer(help="2-D toy lab: optimal and error-prone (y_δ) denoisers on a circle, gap sweeps, flows.")
app.add_typer(toy_app, name="toy")


@toy_app.command("gap")
@friendly_errors
def toy_gap_cmd(
    sweep: SweepName = typer.Option(SweepName.delta, help="What to vary: δ, number of points, or guidance w."),
    values: str = typer.Option("0.02,0.05,0.1,0.2", help="Comma list of values for the swept quantity."),
    points: int = typer.Option(8, help="Training points on the circle (as many validation points between them)."),
    delta: float = typer.Option(0.1, help="Model error δ of y_δ (fixed when not swept; D₊ under guidance)."),
    delta_neg: float = typer.Option(0.3, help="δ of the worse denoiser D₋ under guidance."),
    random: bool = typer.Option(False, help="Random angles instead of equally spaced points."),
    draws: int = typer.Option(50, "--draws", "-M", help="Noise draws per point (unsquared L2 error averaged)."),
    sigmas: str = typer.Option("0.001:10:40", help="Noise levels: LO:HI:N log grid or a comma list."),
    seed: int = SeedOpt,
    out: Path = typer.Option(Path("runs/toy-gap"), "--out", "-o", help="Output directory."),
):
    """Gap G(s) of the error-prone denoiser y_δ on a circle, swept over δ, density or guidance weight."""
    from difflens import report
    from difflens.diffusion import processes
    from difflens.lab import toy

    grid = np.sort(processes.parse_sigmas(sigmas))
    vals = _float_list(values, "--values")
    with progress() as bar:
        task = bar.add_task(f"{sweep.value} sweep", total=len(vals) * len(grid))
        curves = toy.sweep(
            sweep.value,
            vals,
            grid,
            points=points,
            delta=delta,
            delta_neg=delta_neg,
            random=random,
            draws=draws,
            seed=seed,
            on_level=lambda *_: bar.advance(task),
        )
    from difflens.analysis.gap import plot_gap

    plot_gap(curves, out / "toy_gap.png", title=f"toy gap vs {sweep.value} (circle, M={draws})")
    config = {"sweep": sweep.value, "points": points, "delta": delta, "delta_neg": delta_neg, "random": random}
    report.write_json(out / "toy_gap.json", {**config, "seed": seed, "curves": [c.to_dict() for c in curves]})
    for c in curves:
        d = c.to_dict()
        Console().print(f"{c.label}: peak G = {d['peak_gap']:.4g} at s = {d['peak_sigma']:.4g}")
    console.print(f"wrote {out}/toy_gap.json, toy_gap.png")


@toy_app.command("flow")
@friendly_errors
def toy_flow_cmd(
    denoiser: ToyDenoiser = typer.Option(ToyDenoiser.blurred, help="optimal y*, blurred y_δ, or guided."),
    points: int = typer.Option(8, help="Training points on the circle."),
    data: str = typer.Option(
        None, help="Another 2-D set instead of the circle (e.g. toy:gmm:n=64), split alternately."
    ),
    delta: float = typer.Option(0.1, help="δ of y_δ (D₊ under guidance)."),
    delta_neg: float = typer.Option(0.3, help="δ of D₋ under guidance."),
    w: float = typer.Option(1.0, help="Guidance weight."),
    random: bool = typer.Option(False, help="Random angles instead of equally spaced points."),
    sampler: SamplerName = typer.Option(SamplerName.heun, help="Sampler: euler/heun ODE, sde or pc."),
    steps: int = typer.Option(40, help="Sampler steps (EDM ρ=7 grid)."),
    samples: int = typer.Option(200, help="Number of trajectories."),
    sigma_min: float = typer.Option(0.002, help="Smallest sampler noise level."),
    sigma_max: float = typer.Option(10.0, help="Largest sampler noise level."),
    levels: str = typer.Option("0.03,0.1,0.3,1", help="Noise levels at which to draw the flow field."),
    seed: int = SeedOpt,
    out: Path = typer.Option(Path("runs/toy-flow"), "--out", "-o", help="Output directory."),
):
    """Flow-field streamlines, sampler trajectories, memorization and trajectory overlap on the 2-D toy."""
    from difflens import report
    from difflens.analysis import memorization as mm
    from difflens.analysis import trajectories
    from difflens.diffusion import samplers
    from difflens.lab import toy

    if data:
        ds2 = load_data(data, "none")
        train, val = toy.alternate_split(ds2.rows(0, ds2.n))
    else:
        train, val = toy.circle(points, random=random, seed=seed)
    den = {
        "optimal": lambda: toy.Optimal(train),
        "blurred": lambda: toy.Blurred(train, delta),
        "guided": lambda: toy.Guided(toy.Blurred(train, delta), toy.Blurred(train, delta_neg), w),
    }[denoiser.value]()
    sig = samplers.edm_sigmas(steps, sigma_min, sigma_max)
    with progress() as bar:
        task = bar.add_task("sampler steps", total=steps)
        traj = samplers.sample(
            den,
            samplers.initial_noise(samples, 2, sigma_max, seed),
            sig,
            method=sampler.value,
            seed=seed,
            record=True,
            on_step=lambda _: bar.advance(task),
        )
        task2 = bar.add_task("overlap per level", total=steps)
        overlap = trajectories.trajectory_overlap(train, traj, seed=seed, on_level=lambda _: bar.advance(task2))
    mem = mm.memorization(traj.samples, train)
    states = np.stack([s.numpy() for s in traj.states] + [traj.samples.numpy()])
    toy.plot_flow(
        den,
        train,
        val,
        _float_list(levels, "--levels"),
        out / "flow.png",
        trajectories=states,
        title=f"{denoiser.value} denoiser, {len(train)} training points, {sampler.value} sampler",
    )
    trajectories.plot_overlap(overlap, out / "overlap.png")
    buf = __import__("io").BytesIO()
    np.save(buf, traj.samples.numpy())
    report._atomic_write(out / "samples.npy", buf.getvalue())
    result = {
        "denoiser": denoiser.value,
        "data": data or "circle",
        "points": len(train),
        "delta": delta,
        "delta_neg": delta_neg,
        "w": w,
        "sampler": sampler.value,
        "steps": steps,
        "seed": seed,
        "memorization": mem.summary(),
        "overlap": [asdict(lv) for lv in overlap],
    }
    report.write_json(out / "flow.json", result)
    Console().print(f"memorization ratio of the {samples} samples: {mem.memorization_ratio:.1%}")
    console.print(f"wrote {out}/flow.json, flow.png, overlap.png, samples.npy")


smooth_app = typer.Typer(help="Closed-form samplers on the empirical, temperature-smoothed or unconditioned score.")
app.add_typer(smooth_app, name="smooth")


@smooth_app.command("sample")
@friendly_errors
def smooth_sample_cmd(
    data: str = DataOpt,
    subset: int = typer.Option(None, help="Use a seeded random subset of this many training samples."),
    score: ScoreName = typer.Option(ScoreName.empirical, help="empirical (optionally smoothed) or unconditioned p_MN."),
    model: str = typer.Option(
        None,
        help="Sample a model instead: py:MODULE:NAME (a callable (x, sigma) → x0_hat, VE form) or a model as for "
        "diagnose --model (run folder, .pt/.safetensors, diffusers:DIR, module:attr).",
    ),
    temperature: float = typer.Option(1.0, "--temperature", "-T", help="Softmax temperature T."),
    collapse_sigma: float = typer.Option(None, help="Collapse level s_c: T(s) = T·max(s_c/s, 1)."),
    k: int = typer.Option(None, help="Truncate the posterior to each state's K nearest training samples."),
    train_sigmas: str = typer.Option("0.002:80:40", help="p_MN: the training noise levels σ_i (LO:HI:N or list)."),
    sampler: SamplerName = typer.Option(SamplerName.heun, help="euler/heun ODE, sde, or pc (predictor–corrector)."),
    steps: int = typer.Option(32, help="Sampler steps (EDM ρ=7 grid)."),
    corrector_steps: int = typer.Option(1, help="pc: Langevin corrector steps per level."),
    snr: float = typer.Option(0.16, help="pc: corrector signal-to-noise ratio."),
    samples: int = typer.Option(64, help="Number of samples."),
    sigma_min: float = typer.Option(0.002, help="Smallest sampler noise level."),
    sigma_max: float = typer.Option(80.0, help="Largest sampler noise level."),
    threshold: float = ThresholdOpt,
    overlap: bool = typer.Option(True, help="Measure trajectory overlap with noised training samples."),
    gamma: bool = typer.Option(True, help="Measure expansion factors γ_ex along the trajectories."),
    scale: ScaleName = ScaleOpt,
    seed: int = SeedOpt,
    out: Path = typer.Option(Path("runs/smooth"), "--out", "-o", help="Output directory."),
):
    """Sample with a closed-form score (or a trained model); report memorization, NN distances, γ_ex and
    trajectory overlap with noised training samples."""
    from difflens import report
    from difflens.analysis import gap as gap_mod
    from difflens.analysis import memorization as mm
    from difflens.analysis import smoothing, trajectories
    from difflens.diffusion import processes, samplers

    ds = _subset(load_data(data, scale), subset, seed)
    if model and model.startswith("py:"):
        den = gap_mod.load_callable(model)
    elif model:
        from difflens.models import load_denoiser
        from difflens.models.load import default_shape

        den = load_denoiser(model, data=ds).denoiser
        if getattr(den, "shape", 1) is None:
            den.shape = default_shape(ds.shape)
    elif score.value == "unconditioned":
        den = smoothing.UnconditionedMixture(ds, processes.parse_sigmas(train_sigmas))
    else:
        den = smoothing.EmpiricalDenoiser(ds, temperature, collapse_sigma, k)
    label = model or (f"{score.value} score" + (f", T={temperature:g}" if score.value == "empirical" else ""))
    sig = samplers.edm_sigmas(steps, sigma_min, sigma_max)
    with progress() as bar:
        task = bar.add_task("sampler steps", total=steps)
        traj = samplers.sample(
            den,
            samplers.initial_noise(samples, ds.dim, sigma_max, seed),
            sig,
            method=sampler.value,
            seed=seed,
            corrector_steps=corrector_steps,
            snr=snr,
            record=overlap or gamma,
            on_step=lambda _: bar.advance(task),
        )
        levels = []
        if overlap:
            task2 = bar.add_task("overlap per level", total=steps)
            levels = trajectories.trajectory_overlap(ds, traj, seed=seed, on_level=lambda _: bar.advance(task2))
    mem = mm.memorization(traj.samples, ds, threshold=threshold)
    x = traj.samples.float().numpy()
    files = _memorization_outputs(x, ds, mem, out, 16)
    if mm.is_image_shape(ds.shape):
        lo, hi = ds.stats.minimum, ds.stats.maximum
        mm.image_grid(
            x[:64],
            ds.shape,
            out / "samples.png",
            lo=lo,
            hi=hi,
            title=f"{label}, {sampler.value}",
        )
        files.append("samples.png")
    if overlap:
        trajectories.plot_overlap(levels, out / "overlap.png")
        files.append("overlap.png")
    buf = __import__("io").BytesIO()
    np.save(buf, x.reshape(len(x), *ds.shape))
    report._atomic_write(out / "samples.npy", buf.getvalue())
    result = {
        "dataset": ds.summary(),
        "model": model,
        "score": None if model else score.value,
        "temperature": temperature,
        "collapse_sigma": collapse_sigma,
        "k": k,
        "train_sigmas": train_sigmas if score.value == "unconditioned" else None,
        "sampler": sampler.value,
        "steps": steps,
        "sigma_min": sigma_min,
        "sigma_max": sigma_max,
        "seed": seed,
        "memorization": mem.summary(),
        "expansion": smoothing.summarize_expansion(smoothing.expansion_factor(den, traj), sig) if gamma else None,
        "overlap": [asdict(lv) for lv in levels] or None,
    }
    report.write_json(out / "smooth.json", result)
    Console().print(
        f"{label}: memorization ratio {mem.memorization_ratio:.1%}, median NN distance {np.median(mem.d1):.4g}"
    )
    console.print(f"wrote {out}/smooth.json, samples.npy, " + ", ".join(files))


# ---- scale commands


@app.command("convert")
@friendly_errors
def convert_cmd(
    src: str = typer.Argument(..., help="Data spec to convert: image folder, PATH.npy, PATH.npz[:KEY], digits, ..."),
    dest: Path = typer.Argument(..., help="Output zarr array, DEST.zarr (then use --data DEST.zarr)."),
    scale: ScaleName = ScaleOpt,
    chunk_rows: int = typer.Option(None, help="Samples per zarr chunk [default: ~16 MB chunks]."),
    overwrite: bool = typer.Option(False, help="Replace DEST if it exists."),
):
    """Write data as a chunked zarr array that streams from disk (raw values + their scaling)."""
    from difflens import data as data_mod

    with progress() as bar:
        task = bar.add_task(f"→ {dest.name}", total=None)

        def on_rows(k: int, total: int) -> None:
            bar.update(task, total=total, advance=k)

        info = data_mod.convert(
            src, dest, scale=scale.value, chunk_rows=chunk_rows, overwrite=overwrite, on_rows=on_rows
        )
    shape, rows = tuple(info["shape"]), info["chunk_rows"]
    console.print(f"wrote {info['dest']}: shape {shape}, dtype {info['dtype']}, {rows} rows per chunk")


# ---- distillation commands
distill_app = typer.Typer(
    help="Specialists → generalist distillation for conditional diffusion (semi-supervised, multi-task).",
    no_args_is_help=True,
)
app.add_typer(distill_app, name="distill")
ScalarizationName = Enum("ScalarizationName", {k: k for k in ("linear", "tchebycheff")}, type=str)
ThreadsOpt = typer.Option(1, help="Torch CPU threads (small models run best on one).")
ScalOpt = typer.Option(ScalarizationName.linear, help="Generalist objective: linear Σλ_k L_k or Tchebycheff max.")
ParetoOpt = typer.Option(1, help="Pareto sweep of task weights at the largest n: tilts per task (0: off).")


def _int_list(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise DifflensError(f"{name} must be a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise DifflensError(f"{name} needs positive integers, got {text!r}")
    return values


def _run_distill(name: str, cfg, runner, threads: int, seed: int) -> dict:
    """Run one experiment with a progress bar over its training steps; the JSON is written last."""
    import torch

    if threads < 1:
        raise DifflensError(f"--threads must be ≥ 1, got {threads}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    with progress() as bar:
        task = bar.add_task(f"distill {name}: training steps", total=cfg.units())
        return runner(cfg, progress=lambda n: bar.advance(task, n))


def _report_distill(out: Path, name: str, result: dict, metrics: dict[str, str], **plot_kw) -> None:
    """NAME.csv and NAME.png, then NAME.json last (its presence means the run completed), and the table."""
    from difflens import report
    from difflens.lab.distill import report as drep

    report.write_csv(out / f"{name}.csv", drep.summary_rows(result, tuple(metrics)))
    drep.plot_vs_pairs(result, metrics, out / f"{name}.png", **plot_kw)
    report.write_json(out / f"{name}.json", result)
    _print_runs(result, metrics)
    console.print(f"wrote {out}/{name}.json, .csv, .png")


def _print_runs(result: dict, metrics: dict[str, str]) -> None:
    table = Table(title=f"distill {result['experiment']}: per-task metrics (task 0 / 1 / …)")
    for col in ("method", "n", "N", "width", "params", *metrics.values()):
        table.add_column(col, justify="right")
    for run in result["runs"]:
        cells = [" / ".join(f"{t[m]:.3g}" for t in run["tasks"]) for m in metrics]
        table.add_row(
            run["method"],
            str(run.get("n") or "–"),
            str(run.get("unlabeled") or "–"),
            str(run.get("width") or "–"),
            str(run.get("params") or "–"),
            *cells,
        )
    Console().print(table)


@distill_app.command("toy")
@friendly_errors
def distill_toy_cmd(
    tasks: int = typer.Option(3, help="Number of tasks K."),
    dim: int = typer.Option(2, help="Sample dimension d."),
    cond_dim: int = typer.Option(2, help="Condition dimension."),
    pairs: str = typer.Option("8,32,128", help="Paired samples per task n (comma list: the sweep)."),
    unlabeled: str = typer.Option("2048", help="Unlabeled conditions per task N (comma list sweeps too)."),
    widths: str = typer.Option("128", help="Generalist widths (comma list: the capacity sweep)."),
    specialist_width: int = typer.Option(32, help="Specialist MLP width."),
    steps: int = typer.Option(4000, help="Generalist training steps."),
    specialist_steps: int = typer.Option(2000, help="Specialist training steps."),
    scalarization: ScalarizationName = ScalOpt,
    mix_real: bool = typer.Option(False, help="Mix the real pairs into the generalist's pseudo-labelled data."),
    pareto: int = ParetoOpt,
    oracle: bool = typer.Option(True, help="Also train a generalist on exact samples for the unlabeled conditions."),
    seed: int = SeedOpt,
    threads: int = ThreadsOpt,
    out: Path = typer.Option(Path("runs/distill-toy"), "--out", "-o", help="Output directory."),
):
    """Gaussian conditional tasks with analytic scores: exact excess DSM risk, W2 and KL per task vs n."""
    from difflens.lab.distill import report as drep
    from difflens.lab.distill.toy import ToyConfig, run_toy

    cfg = ToyConfig(
        tasks=tasks,
        dim=dim,
        cond_dim=cond_dim,
        pairs=_int_list(pairs, "--pairs"),
        unlabeled=_int_list(unlabeled, "--unlabeled"),
        widths=_int_list(widths, "--widths"),
        specialist_width=specialist_width,
        steps=steps,
        specialist_steps=specialist_steps,
        scalarization=scalarization.value,
        mix_real=mix_real,
        pareto=pareto,
        oracle=oracle,
        seed=seed,
    )
    result = _run_distill("toy", cfg, run_toy, threads, seed)
    metrics = {"excess_risk": "excess DSM risk", "w2": "W2 to truth", "kl": "KL to truth"}
    if result["pareto"]:
        drep.plot_pareto(result["pareto"], out / "toy_pareto.png", "excess DSM risk")
    floors = {m: [f[m] for f in result["floor"]] for m in ("w2", "kl")}
    _report_distill(out, "toy", result, metrics, log_y=tuple(metrics), floors=floors)


@distill_app.command("restore")
@friendly_errors
def distill_restore_cmd(
    degradations: str = typer.Option("noise,blur,mask", help="Tasks: comma list of noise, blur, mask."),
    pairs: str = typer.Option("16,64,256", help="Paired (degraded, clean) images per task n (comma list)."),
    unlabeled: int = typer.Option(1200, help="Degraded-only images per task."),
    arch: str = typer.Option("mlp", help="Denoiser architecture: mlp or conv."),
    width: int = typer.Option(256, help="Generalist width (MLP units or conv channels)."),
    specialist_width: int = typer.Option(128, help="Specialist width."),
    steps: int = typer.Option(4000, help="Generalist training steps."),
    specialist_steps: int = typer.Option(2000, help="Specialist training steps."),
    scalarization: ScalarizationName = ScalOpt,
    mix_real: bool = typer.Option(True, help="Mix the real pairs into the generalist's pseudo-labelled data."),
    oracle: bool = typer.Option(True, help="Also train a generalist on the true clean images of the unlabeled set."),
    seed: int = SeedOpt,
    threads: int = ThreadsOpt,
    out: Path = typer.Option(Path("runs/distill-restore"), "--out", "-o", help="Output directory."),
):
    """Digits restoration, one task per degradation: PSNR/SSIM of specialists, baseline and distilled generalist."""
    from difflens.lab.distill.restore import RestoreConfig, run_restore

    kinds = tuple(v.strip() for v in degradations.split(",") if v.strip())
    cfg = RestoreConfig(
        degradations=kinds,
        pairs=_int_list(pairs, "--pairs"),
        unlabeled=unlabeled,
        arch=arch,
        width=width,
        specialist_width=specialist_width,
        steps=steps,
        specialist_steps=specialist_steps,
        scalarization=scalarization.value,
        mix_real=mix_real,
        oracle=oracle,
        seed=seed,
    )
    result = _run_distill("restore", cfg, run_restore, threads, seed)
    _report_distill(out, "restore", result, {"psnr": "PSNR (dB)", "ssim": "SSIM"})


@distill_app.command("policy")
@friendly_errors
def distill_policy_cmd(
    demos: str = typer.Option("1,4,16", help="Expert demonstrations per task (comma list: the sweep)."),
    unlabeled: int = typer.Option(4096, help="Unlabeled states per task, pseudo-labelled by the specialists."),
    relabel_rounds: int = typer.Option(2, help="Rounds of on-policy relabelling of the generalist's own states."),
    eval_episodes: int = typer.Option(50, help="Evaluation episodes per task."),
    horizon: int = typer.Option(50, help="Episode length limit."),
    width: int = typer.Option(256, help="Generalist MLP width."),
    specialist_width: int = typer.Option(64, help="Specialist MLP width."),
    steps: int = typer.Option(3000, help="Generalist training steps."),
    specialist_steps: int = typer.Option(1500, help="Specialist training steps."),
    scalarization: ScalarizationName = ScalOpt,
    mix_real: bool = typer.Option(True, help="Mix the demonstrations into the generalist's pseudo-labelled data."),
    seed: int = SeedOpt,
    threads: int = ThreadsOpt,
    out: Path = typer.Option(Path("runs/distill-policy"), "--out", "-o", help="Output directory."),
):
    """Diffusion policies on 2-D point-mass reaching tasks: success rate and return vs demonstrations."""
    from difflens.lab.distill.policy import PolicyConfig, run_policy

    cfg = PolicyConfig(
        demos=_int_list(demos, "--demos"),
        unlabeled=unlabeled,
        relabel_rounds=relabel_rounds,
        eval_episodes=eval_episodes,
        horizon=horizon,
        width=width,
        specialist_width=specialist_width,
        steps=steps,
        specialist_steps=specialist_steps,
        scalarization=scalarization.value,
        mix_real=mix_real,
        seed=seed,
    )
    result = _run_distill("policy", cfg, run_policy, threads, seed)
    metrics = {"success": "success rate", "return": "mean return"}
    _report_distill(out, "policy", result, metrics, xlabel="demonstrations per task")


def main() -> None:
    app(prog_name="difflens")


if __name__ == "__main__":
    sys.exit(main())
