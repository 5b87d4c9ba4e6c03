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
            console.print(f"[bold red]error:[/] {exc}", highlight=False)
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


# ---- memorization, generalization gap, toy lab and score smoothing commands (issue 5)

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
    from difflens import memorization as mm
    from difflens import report

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
    from difflens import gap as gap_mod
    from difflens import memorization as mm
    from difflens import report

    ds = load_data(data, scale)
    gen = load_data(samples, scale)
    if gen.dim != ds.dim:
        raise DifflensError(f"samples have {gen.dim} values each but the training data has {ds.dim}")
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
    data: str = DataOpt,
    holdout: float = typer.Option(0.2, help="Fraction held out (seeded) as the validation split."),
    val: str = typer.Option(None, help="Validation data spec instead of a held-out fraction of --data."),
    denoiser: list[str] = typer.Option(
        ["oracle"],
        help="Denoiser(s), in training order for checkpoints: oracle[:T=…,sc=…,k=…] (empirical optimal "
        "denoiser of the training split, optionally smoothed) or py:MODULE:NAME (a callable (x, sigma) → x0_hat).",
    ),
    sigmas: str = typer.Option("0.002:80:24", help="Noise levels: LO:HI:N log grid or a comma list."),
    draws: int = typer.Option(1, help="Noise draws per image (fixed across levels and denoisers)."),
    error: ErrorName = typer.Option(ErrorName.mse, help="mse: squared error per dim; l2: unsquared L2 norm."),
    images: int = typer.Option(256, help="Images per split (seeded subsample; 0 = all)."),
    scale: ScaleName = ScaleOpt,
    seed: int = SeedOpt,
    out: Path = typer.Option(Path("runs/gap"), "--out", "-o", help="Output directory."),
):
    """Generalization gap per noise level G(s) = (E_val − E_train)/E_train, for one denoiser or checkpoints."""
    from difflens import gap as gap_mod
    from difflens import processes, report

    grid = np.sort(processes.parse_sigmas(sigmas))
    full = load_data(data, scale)
    if val:
        train, held = full, load_data(val, scale)
    else:
        train, held = full.split(holdout, seed)
    dens = {spec: gap_mod.resolve_denoiser(spec, train) for spec in denoiser}
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
    from difflens import processes, report, toy

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
    from difflens.gap import plot_gap

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
    from difflens import memorization as mm
    from difflens import report, samplers, toy, trajectories

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
        None, help="Sample a trained model instead: py:MODULE:NAME, a callable (x, sigma) → x0_hat (VE form)."
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
    from difflens import gap as gap_mod
    from difflens import memorization as mm
    from difflens import processes, report, samplers, smoothing, trajectories

    ds = _subset(load_data(data, scale), subset, seed)
    if model:
        den = gap_mod.load_callable(model)
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


def main() -> None:
    app(prog_name="difflens")


if __name__ == "__main__":
    sys.exit(main())
