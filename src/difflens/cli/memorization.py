"""Commands on generated samples and generalization: ``memorization``, ``gap``, ``smooth sample`` and
``smooth score``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.console import Console

from difflens.analysis.memorization_run import run_gap, run_memorization, run_smooth_sample
from difflens.analysis.smoothing import run_smooth_score
from difflens.cli.common import (
    DATA_HELP,
    BackendName,
    Bars,
    ChunkOpt,
    DataOpt,
    DeviceOpt,
    ErrorName,
    SamplerName,
    ScaleName,
    ScaleOpt,
    SeedOpt,
    SigmasOpt,
    check_device,
    choice,
    console,
    out_opt,
    value,
)

ScoreName = choice("ScoreName", ("empirical", "unconditioned"))
ThresholdOpt = typer.Option(1.0 / 3.0, help="A sample is memorized when d1/d2 is below this.")
MODEL_HELP = (
    "py:MODULE:NAME (a callable (x, sigma) → x0_hat, VE form) or a model as for diagnose --model (run "
    "folder, .pt/.safetensors, diffusers:DIR, module:attr)."
)


def memorization_cmd(
    samples_file: str = typer.Option(
        ...,
        "--samples-file",
        "--samples",
        help="Generated samples: .npy, .npz[:KEY] or an image folder (same units as --data).",
    ),
    data: str = DataOpt,
    threshold: float = ThresholdOpt,
    feature: str = typer.Option(None, help="Feature map py:MODULE:NAME, a callable (n, D) tensor → (n, F) tensor."),
    backend: BackendName = typer.Option(BackendName.auto, help="Candidate search per chunk: torch GEMM or faiss."),
    top: int = typer.Option(16, help="Most-memorized samples to draw beside their nearest training images."),
    scale: ScaleName = ScaleOpt,
    chunk_size: int = ChunkOpt,
    device: str = DeviceOpt,
    out: Path = out_opt("runs/memorization"),
):
    """Nearest / second-nearest training samples of generated samples and the memorization ratio (d1/d2 test)."""
    opts = {k: value(v) for k, v in locals().items() if k not in ("samples_file", "out", "device")}
    dev = check_device(device)
    with Bars() as bars:
        result, mem, files = run_memorization(samples_file, out, device=dev, progress=bars, **opts)
    Console().print(
        f"memorized {mem.memorized.sum()} of {len(mem.d1)} samples ({mem.memorization_ratio:.1%}, d1/d2 < "
        f"{threshold:.3g}); median NN distance {np.median(mem.d1):.4g}; {result['distinct_nearest']} distinct "
        f"nearest training samples"
    )
    console.print(f"wrote {out}/" + ", ".join(files))


def gap_cmd(
    data: str = typer.Option(None, "--data", "-d", help=DATA_HELP + " [default: the run's data, else digits]"),
    holdout: float = typer.Option(None, help="Held-out fraction for validation [default: the run's, else 0.2]."),
    split_seed: int = typer.Option(None, help="Seed of the train/held-out split [default: the run's, else --seed]."),
    val: str = typer.Option(None, help="Validation data spec instead of a held-out fraction of --data."),
    model: list[str] = typer.Option(
        ["oracle"],
        "--model",
        "--denoiser",
        help="Denoiser(s), repeatable: oracle[:T=…,"
        "sc=…,k=…] (empirical optimal denoiser of the training split, optionally smoothed)"
        ", " + MODEL_HELP,
    ),
    checkpoints: str = typer.Option(None, help="Run folder or glob of checkpoints: one curve each, in name order."),
    trust_pickle: bool = typer.Option(False, help="Allow .pt files holding pickled Python objects."),
    sigmas: str = SigmasOpt,
    draws: int = typer.Option(1, help="Noise draws per image (fixed across levels and denoisers)."),
    error: ErrorName = typer.Option(ErrorName.mse, help="mse: squared error per dim; l2: unsquared L2 norm."),
    images: int = typer.Option(256, help="Images per split (seeded subsample; 0 = all)."),
    scale: ScaleName = ScaleOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    out: Path = out_opt("runs/gap"),
):
    """Generalization gap per noise level G(s) = (E_val − E_train)/E_train, for denoisers or checkpoints."""
    opts = {k: value(v) for k, v in locals().items() if k not in ("out", "device")}
    dev = check_device(device)
    with Bars() as bars:
        curves = run_gap(out, device=dev, progress=bars, **opts)
    for c in curves:
        d = c.to_dict()
        Console().print(f"{c.label}: peak G = {d['peak_gap']:.4g} at s = {d['peak_sigma']:.4g}")
    console.print(f"wrote {out}/gap.json, gap.csv, gap.png")


def smooth_sample_cmd(
    data: str = DataOpt,
    subset: int = typer.Option(None, help="Use a seeded random subset of this many training samples."),
    score: ScoreName = typer.Option(ScoreName.empirical, help="empirical (optionally smoothed) or unconditioned p_MN."),
    model: str = typer.Option(None, help="Sample a model instead: " + MODEL_HELP),
    temperature: float = typer.Option(1.0, "--temperature", "-T", help="Softmax temperature T."),
    collapse_sigma: float = typer.Option(None, help="Collapse level s_c: T(s) = T·max(s_c/s, 1)."),
    k: int = typer.Option(None, help="Truncate the posterior to each state's K nearest training samples."),
    train_sigmas: str = typer.Option("0.002:80:40", help="p_MN: the training noise levels σ_i (LO:HI:N or list)."),
    sampler: SamplerName = typer.Option(SamplerName.heun, help="euler/heun ODE, sde, or pc (predictor–corrector)."),
    steps: int = typer.Option(32, help="Sampler steps (EDM ρ=7 grid)."),
    corrector_steps: int = typer.Option(1, help="pc: Langevin corrector steps per level."),
    snr: float = typer.Option(0.16, help="pc: corrector signal-to-noise ratio."),
    num_samples: int = typer.Option(64, "--num-samples", "--samples", help="Number of samples to generate."),
    sigma_min: float = typer.Option(0.002, help="Smallest sampler noise level."),
    sigma_max: float = typer.Option(80.0, help="Largest sampler noise level."),
    threshold: float = ThresholdOpt,
    overlap: bool = typer.Option(True, help="Measure trajectory overlap with noised training samples."),
    gamma: bool = typer.Option(True, help="Measure expansion factors γ_ex along the trajectories."),
    scale: ScaleName = ScaleOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    out: Path = out_opt("runs/smooth"),
):
    """Sample with a closed-form score (or a trained model); report memorization, NN distances, γ_ex and
    trajectory overlap with noised training samples."""
    opts = {k: value(v) for k, v in locals().items() if k not in ("out", "device", "subset")}
    dev = check_device(device)
    with Bars() as bars:
        result, label, files = run_smooth_sample(out, subset_size=subset, device=dev, progress=bars, **opts)
    mem = result["memorization"]
    Console().print(
        f"{label}: memorization ratio {mem['memorization_ratio']:.1%}, median NN distance "
        f"{mem['nn_distance']['q50']:.4g}"
    )
    console.print(f"wrote {out}/smooth.json, samples.npy, " + ", ".join(files))


def smooth_score_cmd(
    data: str = DataOpt,
    queries: Path = typer.Option(..., help="Noisy queries x, a .npy of shape (n, …) in the units of --data."),
    sources: Path = typer.Option(..., help="A .npy of n integer indices: row i's clean source is data[S[i]]."),
    sigma: float = typer.Option(..., help="The noise level σ the queries were drawn at (sets T)."),
    collapse: float = typer.Option(None, help="σ_collapse: T = max(σ_collapse/σ, 1) [default: none, T = 1]."),
    k: int = typer.Option(None, help="The K nearest training points of each source [default: all N]."),
    feature: str = typer.Option(None, help="Neighbours in a feature space: module:attr, (n, D) tensor → (n, F)."),
    scale: ScaleName = ScaleOpt,
    out: Path = typer.Option(..., help="Output .npy: the Eq. 10 target per query, (n, D) float64."),
):
    """Zhou et al.'s Eq. 10 target: the temperature-smoothed p_MN score over the K nearest training points of
    each query's source, each at its best shell σ*_j = ‖x − μ_j‖/√D."""
    target = run_smooth_score(
        data, queries, sources, sigma, out, collapse=collapse, k=k, feature=feature, scale=value(scale)
    )
    console.print(f"wrote {out}: Eq. 10 targets for {len(target)} queries")
