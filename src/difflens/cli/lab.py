"""Lab commands: ``toy gap``/``toy flow`` (2-D circle) and ``distill toy|restore|policy``. The distill
options are the fields of each experiment's config dataclass (defaults and types from there)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from difflens.cli.common import (
    Bars,
    DeviceOpt,
    SamplerName,
    SeedOpt,
    check_device,
    choice,
    config_options,
    console,
    float_list,
    out_opt,
)
from difflens.errors import DifflensError
from difflens.lab.distill.core import IDEALS
from difflens.lab.distill.policy import REACH_TASKS, PolicyConfig, reach_tasks
from difflens.lab.distill.restore import RestoreConfig
from difflens.lab.distill.run import PolicySweep, RestoreSweep, SweepGrid, run_distill, run_sweep
from difflens.lab.distill.specialists import SPECIALISTS
from difflens.lab.distill.toy import ToyConfig
from difflens.lab.toy import PAPER_DELTAS, PAPER_POINTS, SWEEPS
from difflens.lab.toy_run import DENOISERS, run_toy_flow, run_toy_gap

SweepName = choice("SweepName", SWEEPS)
ToyDenoiser = choice("ToyDenoiser", DENOISERS)
ScalarizationName = choice("ScalarizationName", ("linear", "tchebycheff"))
IdealName = choice("IdealName", IDEALS)
SpecialistName = choice("SpecialistName", SPECIALISTS)


def _print_gaps(curves) -> None:
    for c in curves:
        d = c.to_dict()
        Console().print(f"{c.label}: peak G = {d['peak_gap']:.4g} at s = {d['peak_sigma']:.4g}")


def toy_gap_cmd(
    sweep: SweepName = typer.Option(SweepName.delta, help="What to vary: δ, number of points, or guidance w."),
    values: str = typer.Option(
        ",".join(map(str, PAPER_DELTAS)), help="Comma list of values for the swept quantity (δ in radii)."
    ),
    points: int = typer.Option(
        PAPER_POINTS, help="Training points on the circle (as many validation points between them)."
    ),
    delta: float = typer.Option(
        PAPER_DELTAS[0], help="Model error δ of y_δ in radii (fixed when not swept; D₊ under guidance)."
    ),
    delta_neg: float = typer.Option(0.3, help="δ of the worse denoiser D₋ under guidance, in radii."),
    random: bool = typer.Option(False, help="Random angles (split as drawn) instead of equally spaced points."),
    radius: float = typer.Option(1.0, help="Circle radius (δ and the default levels scale with it)."),
    draws: int = typer.Option(50, "--draws", "-M", help="Noise draws per point (unsquared L2 error averaged)."),
    sigmas: str = typer.Option(
        None, help="Noise levels: LO:HI:N log grid or a comma list [default: 120 EDM levels in [2e-3, 80]·radius/10]."
    ),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    out: Path = out_opt("runs/toy-gap"),
) -> None:
    """Gap G(s) of the error-prone denoiser y_δ on a circle, swept over δ, density or guidance weight."""
    opts = {k: v for k, v in locals().items() if k not in ("out", "values", "sweep", "device")}
    opts["device"] = check_device(device)
    with Bars() as bars:
        curves = run_toy_gap(out, float_list(values, "--values"), sweep=sweep.value, progress=bars, **opts)
    _print_gaps(curves)
    console.print(f"wrote {out}/toy_gap.json, toy_gap.png")


def toy_flow_cmd(
    denoiser: ToyDenoiser = typer.Option(ToyDenoiser.blurred, help="optimal y*, blurred y_δ, or guided."),
    points: int = typer.Option(PAPER_POINTS, help="Training points on the circle."),
    data: str = typer.Option(
        None, help="Another 2-D set instead of the circle (e.g. toy:gmm:n=64), split alternately."
    ),
    delta: float = typer.Option(PAPER_DELTAS[0], help="δ of y_δ in radii (D₊ under guidance)."),
    delta_neg: float = typer.Option(0.3, help="δ of D₋ under guidance, in radii."),
    w: float = typer.Option(1.0, help="Guidance weight."),
    random: bool = typer.Option(False, help="Random angles (split as drawn) instead of equally spaced points."),
    radius: float = typer.Option(1.0, help="Circle radius (δ and the default sampler levels scale with it)."),
    sampler: SamplerName = typer.Option(SamplerName.euler, help="Sampler: euler/heun ODE, sde or pc."),
    steps: int = typer.Option(120, help="Sampler steps (EDM ρ=7 grid)."),
    num_samples: int = typer.Option(200, "--num-samples", "--samples", help="Number of trajectories."),
    sigma_min: float = typer.Option(None, help="Smallest sampler noise level [default: 2e-4 radii]."),
    sigma_max: float = typer.Option(None, help="Largest sampler noise level [default: 8 radii]."),
    levels: str = typer.Option("0.03,0.1,0.3,1", help="Noise levels at which to draw the flow field."),
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    out: Path = out_opt("runs/toy-flow"),
) -> None:
    """Flow-field streamlines, sampler trajectories, memorization and trajectory overlap on the 2-D toy."""
    opts = {k: v for k, v in locals().items() if k not in ("out", "levels", "denoiser", "sampler", "device")}
    opts["device"] = check_device(device)
    level_list = float_list(levels, "--levels")
    with Bars() as bars:
        result = run_toy_flow(out, level_list, denoiser=denoiser.value, sampler=sampler.value, progress=bars, **opts)
    Console().print(
        f"memorization ratio of the {num_samples} samples: {result['memorization']['memorization_ratio']:.1%}"
    )
    console.print(f"wrote {out}/flow.json, flow.png, overlap.png, samples.npy")


def print_runs(result: dict, metrics: dict[str, str]) -> None:
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


def print_sweep(sweep: dict) -> None:
    """The regime map as a table: distilled − baseline, mean ± sd over seeds, per (n, N/n, width)."""
    table = Table(title=f"distill {sweep['experiment']} sweep: distilled − baseline (mean ± sd over seeds)")
    for col in ("n", "N/n", "width", *sweep["metrics"].values()):
        table.add_column(col, justify="right")
    rows = {(r["n"], r["ratio"], r["width"], r["metric"]): r for r in sweep["summary"]}
    for n, ratio, width in dict.fromkeys((r["n"], r["ratio"], r["width"]) for r in sweep["summary"]):
        cells = [rows[(n, ratio, width, m)] for m in sweep["metrics"]]
        table.add_row(str(n), f"{ratio}×", str(width), *(f"{c['mean']:+.3g} ± {c['sd']:.2g}" for c in cells))
    Console().print(table)


THREADS_HELP = "Torch CPU threads (small models run best on one)."
COMMON_HELP = {
    "specialist": "Specialist class: linear-Gaussian (closed form), small MLP, or kernel (empirical conditional).",
    "specialist_width": "Specialist width (mlp).",
    "steps": "Generalist training steps.",
    "specialist_steps": "Specialist training steps (mlp).",
    "scalarization": "Generalist objective: linear Σλ_k L_k or Tchebycheff max.",
    "ideal": "Tchebycheff ideal point z_k: zero, or each specialist's own loss on its pseudo-pairs.",
    "mix_real": "Mix the real pairs into the generalist's pseudo-labelled data.",
    "pseudo_per_cond": "Pseudo-labels each specialist draws per unlabeled condition (e.g. 1, 4, 16).",
    "seed": "Random seed: same seed, same results.",
}
TOY_HELP = {
    "tasks": "Number of tasks K.",
    "dim": "Sample dimension d.",
    "cond_dim": "Condition dimension.",
    "pairs": "Paired samples per task n (comma list: the sweep).",
    "unlabeled": "Unlabeled conditions per task N (comma list sweeps too).",
    "widths": "Generalist widths (comma list: the capacity sweep).",
    **COMMON_HELP,
    "pareto": "Pareto fronts (distilled and baseline) of task weights at the largest n: tilts per task (0: off).",
    "oracle": "Also train a generalist on exact samples for the unlabeled conditions.",
    "eval_samples": "Noisy samples per task for the exact excess DSM risk.",
    "eval_conds": "Test conditions per task for W2/KL (each fitted from --per-cond draws).",
    "sampler_steps": "EDM Heun steps of the sampler (pseudo-labels and evaluation).",
}
RESTORE_HELP = {
    "degradations": "Tasks: comma list of noise, blur, mask.",
    "pairs": "Paired (degraded, clean) images per task n (comma list).",
    "unlabeled": "Degraded-only images per task.",
    "arch": "Denoiser architecture: mlp or conv.",
    "width": "Generalist width (MLP units or conv channels).",
    **COMMON_HELP,
    "pareto": "Two degradations: Pareto fronts (distilled and baseline) at the largest n; interior weights (0: off).",
    "oracle": "Also train a generalist on the true clean images of the unlabeled set.",
}
POLICY_HELP = {
    "tasks": f"Tasks, comma list of {', '.join(REACH_TASKS)} (two tasks: Pareto fronts).",
    "demos": "Expert demonstrations per task (comma list: the sweep).",
    "unlabeled": "Unlabeled states per task, pseudo-labelled by the specialists.",
    "relabel_rounds": "Rounds of on-policy relabelling of the generalist's own states.",
    "eval_episodes": "Evaluation episodes per task.",
    "horizon": "Episode length limit.",
    "width": "Generalist MLP width.",
    **COMMON_HELP,
    "mix_real": "Mix the demonstrations into the generalist's pseudo-labelled data.",
    "pareto": "With two tasks: Pareto fronts (distilled and baseline) at the most demos; interior weights (0: off).",
}
SWEEP_HELP = {
    "sweep_pairs": "With --sweep: n per task (demonstrations for policy), comma list.",
    "sweep_ratios": "With --sweep: unlabeled conditions per task as multiples of n, comma list.",
    "sweep_widths": "With --sweep: generalist widths, comma list.",
    "sweep_seeds": "With --sweep: seeds per cell (the heat map's ± is their standard deviation).",
    "sweep_steps": "With --sweep: generalist steps per cell, specialists scaled alike (0: --steps).",
}
SWEEP_OPT = typer.Option(False, "--sweep", help="Regime map: sweep.json + sweep.png of distilled − baseline.")
RESUME_OPT = typer.Option(False, "--resume", help="With --sweep: continue an interrupted sweep in --out.")
CHOICES = {"scalarization": ScalarizationName, "ideal": IdealName, "specialist": SpecialistName}


def _distill(
    name: str, config, grid: SweepGrid, sweep: bool, resume: bool, threads: int, device: str, out: Path
) -> None:
    dev = check_device(device)
    if resume and not sweep:
        raise DifflensError("--resume continues an interrupted --sweep; give --sweep too")
    if sweep:
        with Bars() as bars:
            sweep = run_sweep(name, config, grid, out, threads=threads, device=dev, progress=bars, resume=resume)
        print_sweep(sweep)
        console.print(f"wrote {out}/sweep.json, sweep.png")
        return
    with Bars() as bars:
        result, metrics = run_distill(name, config, out, threads=threads, device=dev, progress=bars)
    print_runs(result, metrics)
    console.print(f"wrote {out}/{name}.json, .csv, .png")


@config_options(ToyConfig, TOY_HELP, into="config", choices=CHOICES)
@config_options(SweepGrid, SWEEP_HELP, into="grid")
def distill_toy_cmd(
    *,
    config: ToyConfig,
    grid: SweepGrid,
    sweep: bool = SWEEP_OPT,
    resume: bool = RESUME_OPT,
    threads: int = typer.Option(1, help=THREADS_HELP),
    device: str = DeviceOpt,
    out: Path = out_opt("runs/distill-toy"),
) -> None:
    """Gaussian conditional tasks with analytic scores: exact excess DSM risk, W2 and KL per task vs n."""
    _distill("toy", config, grid, sweep, resume, threads, device, out)


@config_options(RestoreConfig, RESTORE_HELP, into="config", choices=CHOICES)
@config_options(RestoreSweep, SWEEP_HELP, into="grid")
def distill_restore_cmd(
    *,
    config: RestoreConfig,
    grid: SweepGrid,
    sweep: bool = SWEEP_OPT,
    resume: bool = RESUME_OPT,
    threads: int = typer.Option(1, help=THREADS_HELP),
    device: str = DeviceOpt,
    out: Path = out_opt("runs/distill-restore"),
) -> None:
    """Digits restoration, one task per degradation: PSNR/SSIM of specialists, baseline and distilled generalist."""
    _distill("restore", config, grid, sweep, resume, threads, device, out)


def _policy_config(fields: dict) -> PolicyConfig:
    return PolicyConfig(**{**fields, "tasks": reach_tasks(fields["tasks"])})


@config_options(PolicyConfig, POLICY_HELP, into="config", choices=CHOICES, build=_policy_config)
@config_options(PolicySweep, SWEEP_HELP, into="grid")
def distill_policy_cmd(
    *,
    config: PolicyConfig,
    grid: SweepGrid,
    sweep: bool = SWEEP_OPT,
    resume: bool = RESUME_OPT,
    threads: int = typer.Option(1, help=THREADS_HELP),
    device: str = DeviceOpt,
    out: Path = out_opt("runs/distill-policy"),
) -> None:
    """Diffusion policies on 2-D point-mass reaching tasks: success rate and return vs demonstrations."""
    _distill("policy", config, grid, sweep, resume, threads, device, out)
