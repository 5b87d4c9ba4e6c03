"""Which noise levels matter for samples (Xu et al., Fig. 2b): across a run's checkpoints, the Pearson
correlation between each level's excess loss and the Fréchet distance of the checkpoint's samples
(docs/method.md, "Excess loss and sample quality").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from difflens.analysis.features import Feature, frechet_distance, resolve_feature
from difflens.data import Dataset
from difflens.diffusion.denoiser import Denoiser
from difflens.diffusion.samplers import edm_sigmas, initial_noise, sample
from difflens.errors import DifflensError
from difflens.report import plt, save_figure


def excess_fd_correlation(excess: npt.ArrayLike, fd: npt.ArrayLike) -> np.ndarray:
    """Pearson r between column k of ``excess`` (checkpoints × levels) and ``fd`` (one per checkpoint),
    per level, in float64; NaN at a level whose excess does not vary across checkpoints (r undefined)."""
    e, f = np.asarray(excess, dtype=np.float64), np.asarray(fd, dtype=np.float64)
    if e.ndim != 2 or f.shape != (e.shape[0],):
        raise DifflensError(f"need excess (checkpoints × levels) and one FD per checkpoint, got {e.shape}, {f.shape}")
    if e.shape[0] < 3:
        raise DifflensError(f"a correlation across checkpoints needs at least 3 checkpoints, got {e.shape[0]}")
    if not (np.all(np.isfinite(e)) and np.all(np.isfinite(f))):
        raise DifflensError("excess losses and Fréchet distances must be finite")
    if np.ptp(f) == 0:
        raise DifflensError("the Fréchet distance is the same at every checkpoint: no correlation to measure")
    de, df = e - e.mean(0), f - f.mean()
    norm = np.sqrt((de**2).sum(0) * (df**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (de * df[:, None]).sum(0) / norm
    return np.where(norm > 0, np.clip(r, -1.0, 1.0), np.nan)


def sample_fd(
    denoiser: Denoiser,
    train: Dataset,
    feature: Feature | None,
    *,
    samples: int = 512,
    steps: int = 18,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> float:
    """Fréchet distance between ``samples`` draws (EDM Heun sampler, ``steps`` levels 80 → 0.002, same
    seeded noise for every checkpoint) and the training rows, in the feature space ``feature``."""
    device = device or "cpu"
    grid = edm_sigmas(steps)
    x = sample(
        denoiser, initial_noise(samples, train.dim, float(grid[0]), seed, device), grid, seed=seed, device=device
    )
    return frechet_distance(x.samples.float().cpu(), train, feature)


def sample_quality(
    models: Sequence[tuple[int, Any]],
    train: Dataset,
    history: dict,
    *,
    feature: str | None = "pca",
    samples: int = 512,
    steps: int = 18,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict:
    """FD of each checkpoint's samples and, per level of ``history`` (``diagnose.excess_history``), the
    Pearson r between excess and FD across checkpoints. r is unchanged by a positive per-level factor,
    so it is the same in any loss units."""
    if len(models) != len(history["excess"]):
        raise DifflensError("sample quality: one excess row per checkpoint is needed")
    feat, described = resolve_feature(feature, train)
    fd = [sample_fd(den, train, feat, samples=samples, steps=steps, seed=seed, device=device) for _, den in models]
    r = excess_fd_correlation(history["excess"], fd)
    return {
        "feature": described,
        "samples": samples,
        "sampler": f"heun, {steps} EDM levels 80 → 0.002",
        "steps": [int(st) for st, _ in models],
        "fd": fd,
        "sigmas": list(history["sigmas"]),
        "correlation": [None if not np.isfinite(v) else float(v) for v in r],
    }


def plot_correlation(result: dict, excess: npt.ArrayLike, path: str | Path) -> None:
    """Pearson r(excess at σ, FD) per σ (left); right, the FD per checkpoint against the training step
    when the checkpoints are one run's (steps increase), else against ``excess`` (checkpoints × levels,
    the history the correlation came from) at the level of the largest |r| (checkpoints of several runs
    share steps, so a step axis would stack them)."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    r = np.array([np.nan if v is None else v for v in result["correlation"]], dtype=np.float64)
    ax.semilogx(result["sigmas"], r, "o-")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("noise level σ")
    ax.set_ylabel("Pearson r(excess loss, Fréchet distance)")
    ax.set_title(f"across {len(result['steps'])} checkpoints")
    steps = np.asarray(result["steps"])
    if np.all(np.diff(steps) > 0) or np.all(np.isnan(r)):
        bx.plot(steps, result["fd"], "o-")
        bx.set_xlabel("training step")
    else:
        k = int(np.nanargmax(np.abs(r)))
        bx.plot(np.asarray(excess)[:, k], result["fd"], "o")
        bx.set_xlabel(f"excess loss at σ = {result['sigmas'][k]:.3g} (largest |r| = {abs(r[k]):.2f})")
    bx.set_ylabel(f"Fréchet distance ({result['feature'].split(' (')[0]})")
    save_figure(fig, path)
