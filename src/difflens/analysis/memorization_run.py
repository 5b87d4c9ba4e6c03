"""The ``memorization``, ``gap`` and ``smooth sample`` runs: generated samples against their training set,
the generalization gap of denoisers or checkpoints, and closed-form samplers (docs/method.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from difflens import report
from difflens.analysis import features, smoothing, trajectories
from difflens.analysis import gap as gap_mod
from difflens.analysis import memorization as mm
from difflens.analysis.diagnose_run import checkpoint_paths, resolve_split
from difflens.analysis.run_support import Progress, no_progress, open_data, save_npy
from difflens.data import Dataset, check_same_layout
from difflens.diffusion import processes, samplers
from difflens.errors import DifflensError
from difflens.kernel.neighbours import check_backend
from difflens.models import Denoiser, load_denoiser
from difflens.models.load import default_shape


def memorization_outputs(samples: np.ndarray, ds: Dataset, mem: mm.Memorization, out: Path, top: int) -> list[str]:
    """Write memorization.npz and the NN-distance / most-memorized plots; return the file names."""
    report.write_bytes(out / "memorization.npz", mem.npz_bytes())
    mm.plot_nn_distances(mem, out / "nn_distance.png", title=f"{ds.spec}: {len(mem.d1)} samples")
    files = ["memorization.npz", "nn_distance.png"]
    if mm.is_image_shape(ds.shape):
        mm.plot_memorized(samples, ds, mem, out / "memorized.png", top=top)
        files.append("memorized.png")
    return files


def fd_ratio(samples: np.ndarray | torch.Tensor, train: Dataset, held: Dataset, feature: str | None = "pca") -> dict:
    """Fréchet distance of samples to the training set and to a held-out set, and FD_train / FD_held
    (< 1: closer to the data the model saw; docs/method.md, "Feature-space measures")."""
    fmap, desc = features.resolve_feature(feature, train)
    fd_train = features.frechet_distance(samples, train, fmap)
    fd_held = features.frechet_distance(samples, held, fmap)
    ratio = fd_train / fd_held if fd_held > 0 else float("inf")
    return {"feature": desc, "train": fd_train, "held_out": fd_held, "ratio": ratio, "held_out_data": held.spec}


def run_memorization(
    samples_file: str,
    out: Path,
    *,
    data: str = "digits",
    threshold: float = 1 / 3,
    feature: str | None = None,
    backend: str = "auto",
    top: int = 16,
    scale: str = "auto",
    chunk_size: int | None = None,
    fd: bool = False,
    val: str | None = None,
    holdout: float | None = None,
    split_seed: int = 0,
    fd_feature: str | None = "pca",
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> tuple[dict, mm.Memorization, list[str]]:
    """d1/d2 test of generated samples against the training data; writes memorization.{json,npz} and plots.
    ``fd``: also the Fréchet distances to train and to held-out data (``val``, or a ``holdout`` fraction
    of ``data`` — then the training set is the rest) in ``fd_feature`` space, and their ratio. The
    nearest-neighbour search runs on ``device`` (default cpu)."""
    ds = open_data(data, scale)
    if holdout is not None:
        ds, held = ds.split(holdout, split_seed)
    else:
        held = open_data(val, scale) if val else None
    if fd and held is None:
        raise DifflensError("--fd-ratio needs held-out data: --val SPEC or --holdout FRACTION")
    gen = open_data(samples_file, scale)
    if gen.dim != ds.dim:
        raise DifflensError(f"samples have {gen.dim} values each but the training data has {ds.dim}")
    check_same_layout(gen.shape, ds.shape, "samples", "the training data")
    if held is not None:
        check_same_layout(held.shape, ds.shape, "held-out data", "the training data")
    fmap = gap_mod.load_callable(feature) if feature else None
    check_backend(backend)
    x = gen.rows(0, gen.n)
    advance = progress("training rows", ds.n)
    mem = mm.memorization(
        x,
        ds,
        threshold=threshold,
        feature=fmap,
        backend=backend,
        chunk_size=chunk_size,
        on_chunk=advance,
        device=device or "cpu",
    )
    files = memorization_outputs(x.numpy(), ds, mem, out, top)
    result = {"dataset": ds.summary(), "samples": gen.summary(), "feature": feature, **mem.summary()}
    if fd:
        result["fd"] = fd_ratio(x, ds, held, fd_feature)
    report.write_json(out / "memorization.json", result)
    return result, mem, ["memorization.json", *files]


def run_gap(
    out: Path,
    *,
    model: Sequence[str] = ("oracle",),
    data: str | None = None,
    holdout: float | None = None,
    split_seed: int | None = None,
    val: str | None = None,
    checkpoints: str | None = None,
    trust_pickle: bool = False,
    sigmas: str = "0.002:80:64",
    draws: int = 1,
    error: str = "mse",
    images: int = 8192,
    feature_gap: bool = False,
    feature: str | None = "pca",
    scale: str = "auto",
    seed: int = 0,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> list[gap_mod.GapCurve]:
    """G(s) = (E_val − E_train)/E_train per level for denoisers or checkpoints; writes gap.{json,csv,png}.
    Defaults near the paper's: 64 levels in [2e-3, 80], up to 8192 images per split, one fixed noise per
    image index (``draws`` = 1: image i's noise does not depend on the split size). ``feature_gap``: the
    same curves again in the features of ``feature`` (``analysis.features``; default PCA of the training
    split), labelled ``… [feature]``. Models and closed-form denoisers run on ``device`` (default cpu);
    images and noise are drawn on the CPU."""
    device = device or torch.device("cpu")
    grid = np.sort(processes.parse_sigmas(sigmas))
    specs = list(model)
    if checkpoints:
        specs = [s for s in specs if s != "oracle"] + [str(p) for p in checkpoint_paths(checkpoints)]
    loaded = {
        s: load_denoiser(s, trust_pickle=trust_pickle, device=device) for s in specs if not gap_mod.is_closed_form(s)
    }
    cfg = next((m.info["config"] for m in loaded.values() if m.info.get("config")), {})
    if val:
        train, _ = resolve_split(data, scale, 0, None, cfg)
        held = open_data(val, scale)
    else:
        train, held = resolve_split(data, scale, holdout, split_seed, cfg, default_holdout=0.2, default_seed=seed)
    for m in loaded.values():
        if getattr(m.denoiser, "shape", 1) is None:
            m.denoiser.shape = default_shape(train.shape)
        check_same_layout(getattr(m.denoiser, "shape", None) or (), train.shape, "model inputs", "data")
    dens = {
        (Path(s).name if s in loaded and Path(s).exists() else s): (
            loaded[s].denoiser if s in loaded else gap_mod.resolve_denoiser(s, train, device)
        )
        for s in specs
    }
    fmap, fdesc = features.resolve_feature(feature, train) if feature_gap else (None, None)
    spaces = [None, fmap] if feature_gap else [None]
    advance = progress("denoiser × level", len(dens) * len(grid) * len(spaces))
    curves = []
    for f in spaces:
        part = gap_mod.generalization_gap(
            dens,
            train,
            held,
            grid,
            draws=draws,
            error=error,
            seed=seed,
            max_images=images or None,
            feature=f,
            on_level=lambda *_: advance(1),
            device=device,
        )
        for c in part:
            c.label = c.label if f is None else f"{c.label} [{fdesc}]"
        curves += part
    rows = [
        {"denoiser": c.label, "sigma": s, "e_train": a, "e_val": b, "gap": g}
        for c in curves
        for s, a, b, g in zip(c.sigmas, c.e_train, c.e_val, c.gap, strict=True)
    ]
    report.write_csv(out / "gap.csv", rows)
    gap_mod.plot_gap(curves, out / "gap.png", title=f"generalization gap on {train.spec} vs {held.spec}")
    if len(dens) > 1:
        gap_mod.plot_gap_over_time(curves[: len(dens)], out / "gap_over_checkpoints.png")
    result = {
        "train": train.summary(),
        "val": held.summary(),
        "seed": seed,
        "images_per_split": images or None,
        "feature": fdesc,
        "curves": [c.to_dict() for c in curves],
    }
    report.write_json(out / "gap.json", result)
    return curves


def subset(ds: Dataset, size: int | None, seed: int) -> Dataset:
    """A seeded random subset of ``size`` training samples (all of them if size is None or ≥ N)."""
    if size is None or size >= ds.n:
        return ds
    if size < 2:
        raise DifflensError(f"--subset must be ≥ 2, got {size}")
    return ds.subset(np.sort(np.random.default_rng(seed).choice(ds.n, size, replace=False)), f"[{size}]")


def sampling_denoiser(
    ds: Dataset,
    model: str | None,
    score: str,
    temperature: float,
    collapse_sigma: float | None,
    k: int | None,
    train_sigmas: str,
    device: torch.device | str = "cpu",
) -> Denoiser:
    """The denoiser ``smooth sample`` follows, on ``device``: a model, the unconditioned mixture or the
    empirical one."""
    if model and model.startswith("py:"):
        return gap_mod.load_callable(model)
    if model:
        den = load_denoiser(model, data=ds, device=device).denoiser
        if getattr(den, "shape", 1) is None:
            den.shape = default_shape(ds.shape)
        return den
    if score == "unconditioned":
        return smoothing.UnconditionedMixture(ds, processes.parse_sigmas(train_sigmas))
    return smoothing.EmpiricalDenoiser(ds, temperature, collapse_sigma, k, device=device)


def run_smooth_sample(
    out: Path,
    *,
    data: str = "digits",
    subset_size: int | None = None,
    score: str = "empirical",
    model: str | None = None,
    temperature: float = 1.0,
    collapse_sigma: float | None = None,
    k: int | None = None,
    train_sigmas: str = "0.002:80:40",
    sampler: str = "heun",
    steps: int = 32,
    corrector_steps: int = 1,
    snr: float = 0.16,
    num_samples: int = 64,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    threshold: float = 1 / 3,
    overlap: bool = True,
    gamma: bool = True,
    scale: str = "auto",
    seed: int = 0,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> tuple[dict, str, list[str]]:
    """Sample with a closed-form score (or a model); memorization, γ_ex and trajectory overlap. Writes
    smooth.json, samples.npy and plots; returns (result, label, files). Sampling and the denoiser run on
    ``device`` (default cpu; the noise is drawn on the CPU), the analyses on the CPU."""
    device = device or torch.device("cpu")
    ds = subset(open_data(data, scale), subset_size, seed)
    den = sampling_denoiser(ds, model, score, temperature, collapse_sigma, k, train_sigmas, device)
    label = model or (f"{score} score" + (f", T={temperature:g}" if score == "empirical" else ""))
    sig = samplers.edm_sigmas(steps, sigma_min, sigma_max)
    advance = progress("sampler steps", steps)
    traj = samplers.sample(
        den,
        samplers.initial_noise(num_samples, ds.dim, sigma_max, seed),
        sig,
        method=sampler,
        seed=seed,
        corrector_steps=corrector_steps,
        snr=snr,
        record=overlap or gamma,
        on_step=lambda _: advance(1),
        device=device,
    )
    on_cpu = traj.cpu()
    levels = []
    if overlap:
        advance2 = progress("overlap per level", steps)
        levels = trajectories.trajectory_overlap(ds, on_cpu, seed=seed, on_level=lambda _: advance2(1))
    mem = mm.memorization(traj.samples, ds, threshold=threshold, device=device)
    x = on_cpu.samples.float().numpy()
    files = memorization_outputs(x, ds, mem, out, 16)
    if mm.is_image_shape(ds.shape):
        lo, hi = ds.stats.minimum, ds.stats.maximum
        mm.image_grid(x[:64], ds.shape, out / "samples.png", lo=lo, hi=hi, title=f"{label}, {sampler}")
        files.append("samples.png")
    if overlap:
        trajectories.plot_overlap(levels, out / "overlap.png")
        files.append("overlap.png")
    save_npy(out / "samples.npy", x.reshape(len(x), *ds.shape))
    result = {
        "dataset": ds.summary(),
        "model": model,
        "score": None if model else score,
        "temperature": temperature,
        "collapse_sigma": collapse_sigma,
        "k": k,
        "train_sigmas": train_sigmas if score == "unconditioned" else None,
        "sampler": sampler,
        "steps": steps,
        "sigma_min": sigma_min,
        "sigma_max": sigma_max,
        "seed": seed,
        "memorization": mem.summary(),
        "expansion": smoothing.summarize_expansion(smoothing.expansion_factor(den, traj), sig) if gamma else None,
        "overlap": [asdict(lv) for lv in levels] or None,
    }
    report.write_json(out / "smooth.json", result)
    return result, label, files
