"""Commands on generated samples and generalization: ``memorization``, ``gap``, ``smooth sample`` and
``smooth score``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.console import Console

from difflens.analysis.memorization_run import run_gap, run_memorization, run_smooth_sample
from difflens.analysis.probes_run import run_probes
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
    check_device,
    choice,
    console,
    out_opt,
    value,
)
from difflens.models.empirical import EQ10_FORMS

ScoreName = choice("ScoreName", ("empirical", "unconditioned"))
Eq10Form = choice("Eq10Form", EQ10_FORMS)
ThresholdOpt = typer.Option(1.0 / 3.0, help="A sample is memorized when d1/d2 is below this.")
FEATURE_HELP = (
    "Feature map: pca[:K] (PCA of the training split, K=32; the default — no classifier is bundled), "
    "pixels, or module:attr / file.py:attr (a callable (n, D) → (n, F))."
)
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
    fd: bool = typer.Option(
        False, "--fd-ratio", help="Also FD of the samples to train and to held-out data, and their ratio."
    ),
    val: str = typer.Option(None, help="--fd-ratio: held-out data spec (same units as --data)."),
    holdout: float = typer.Option(None, help="--fd-ratio: hold out this fraction of --data (train = the rest)."),
    split_seed: int = typer.Option(0, help="Seed of the --holdout split."),
    fd_feature: str = typer.Option("pca", help=FEATURE_HELP),
    device: str = DeviceOpt,
    out: Path = out_opt("runs/memorization"),
) -> None:
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
    if fd:
        f = result["fd"]
        Console().print(f"FD to train {f['train']:.4g}, to held-out {f['held_out']:.4g}, ratio {f['ratio']:.4g}")
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
    sigmas: str = typer.Option("0.002:80:64", help="Noise levels: LO:HI:N log grid or a comma list."),
    draws: int = typer.Option(1, help="Noise draws per image (fixed per image index, across levels and denoisers)."),
    error: ErrorName = typer.Option(ErrorName.mse, help="mse: squared error per dim; l2: unsquared L2 norm."),
    images: int = typer.Option(8192, help="Images per split, as many as the data allow up to this (0 = all)."),
    feature_gap: bool = typer.Option(False, help="Also G(s) in the features of --feature."),
    feature: str = typer.Option("pca", help=FEATURE_HELP),
    scale: ScaleName = ScaleOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    out: Path = out_opt("runs/gap"),
) -> None:
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
) -> None:
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
    form: Eq10Form = typer.Option(Eq10Form.paper, help="Eq. 10 as printed or as the authors' code computes it."),
    scale: ScaleName = ScaleOpt,
    out: Path = typer.Option(..., help="Output .npy: the Eq. 10 target per query, (n, D) float64."),
) -> None:
    """Zhou et al.'s Eq. 10 target: the temperature-smoothed p_MN score over the K nearest training points of
    each query's source, each at its best shell σ*_j = ‖x − μ_j‖/√D."""
    target = run_smooth_score(
        data,
        queries,
        sources,
        sigma,
        out,
        collapse=collapse,
        k=k,
        feature=feature,
        scale=value(scale),
        form=value(form),
    )
    console.print(f"wrote {out}: Eq. 10 ({value(form)} form) targets for {len(target)} queries")


def probes_cmd(
    model: str = typer.Option("oracle", "--model", help="oracle[:T=…,sc=…,k=…] or " + MODEL_HELP),
    data: str = typer.Option(None, "--data", "-d", help=DATA_HELP + " [default: the run's data, else digits]"),
    holdout: float = typer.Option(None, help="Held-out fraction [default: the run's, else 0.2]."),
    split_seed: int = typer.Option(None, help="Seed of the train/held-out split [default: the run's, else --seed]."),
    val: str = typer.Option(None, help="Held-out data spec instead of a fraction of --data."),
    trust_pickle: bool = typer.Option(False, help="Allow .pt files holding pickled Python objects."),
    sampler: SamplerName = typer.Option(SamplerName.euler, help="Sampler whose trajectories are stopped."),
    steps: int = typer.Option(32, help="Sampler steps (EDM ρ=7 grid)."),
    sigma_min: float = typer.Option(0.002, help="Smallest sampler noise level."),
    sigma_max: float = typer.Option(80.0, help="Largest sampler noise level."),
    stops: int = typer.Option(8, help="Steps k at which to stop and jump to s = 0, spread over the grid."),
    num_samples: int = typer.Option(64, "--num-samples", help="Sampler trajectories."),
    images: int = typer.Option(64, help="Noisy train and held-out images reconstructed per stop."),
    feature: str = typer.Option("pca", help=FEATURE_HELP),
    scale: ScaleName = ScaleOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    out: Path = out_opt("runs/probes"),
) -> None:
    """Early-stopped probes: x̂ = D(x_k, s_k) and reconstructions of noisy train / held-out images against the
    training set, by 1-NN cosine similarity in feature space and Fréchet distance, per stop level."""
    opts = {k: value(v) for k, v in locals().items() if k not in ("out", "device")}
    dev = check_device(device)
    with Bars() as bars:
        result = run_probes(out, device=dev, progress=bars, **opts)
    for lv in result["levels"]:
        cos, fd = lv["nn_cosine"], lv["fd_train"]
        Console().print(
            f"s = {lv['sigma']:.4g}: 1-NN cos samples {cos['samples']:.3f} / train {cos['train']:.3f} / held "
            f"{cos['held']:.3f}; FD to train {fd['samples']:.3g} / {fd['train']:.3g} / {fd['held']:.3g}"
        )
    console.print(f"wrote {out}/probes.json, probes.png")
