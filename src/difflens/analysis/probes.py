"""Early-stopped probes (Kaiser & Kollmann 2026): does sampling visit where a model overfits?

The math: docs/method.md, "Feature-space measures". The sampler is stopped at step k and jumps to
s = 0, x̂_k = D(x_k, s_k). At the same level, noisy training images and noisy held-out images are
reconstructed, D(y + s_k·n, s_k), with the noise fixed per image (``model_error.fixed_noise``). Each of
the three sets is compared with the training set by its 1-NN cosine similarity in feature space and by
its Fréchet distance. Where the model overfits, training reconstructions sit on the training set and
held-out ones do not; the sampler's outputs show whether it visits that regime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from difflens.analysis.features import Feature, frechet_distance, nn_cosine
from difflens.analysis.model_error import HELD, TRAIN, fixed_noise, pick_images
from difflens.data import Dataset, as_dataset
from difflens.diffusion import samplers
from difflens.errors import DifflensError
from difflens.report import plt, save_figure

GROUPS = ("samples", "train", "held")  # sampler outputs, reconstructions of noisy train / held-out images


@dataclass
class ProbeLevel:
    """One stop: the level, and per group the mean / median 1-NN cosine to the training set and the FD to it."""

    step: int
    sigma: float
    nn_cosine: dict[str, float]
    nn_cosine_median: dict[str, float]
    fd_train: dict[str, float]


def stop_steps(steps: int, stops: int) -> list[int]:
    """``stops`` step indices spread evenly over a sampler grid of ``steps`` levels (first and last included)."""
    if stops < 1 or steps < 1:
        raise DifflensError(f"need ≥ 1 stop and ≥ 1 sampler step, got stops={stops}, steps={steps}")
    return sorted({round(v) for v in np.linspace(0, steps - 1, min(stops, steps))})


@torch.no_grad()
def early_stop_probes(
    denoiser: Callable,
    train: Dataset | np.ndarray | torch.Tensor,
    held: Dataset | np.ndarray | torch.Tensor,
    sigmas: Sequence[float] | np.ndarray | torch.Tensor,
    stops: list[int],
    *,
    samples: int = 64,
    images: int = 64,
    method: str = "euler",
    feature: Feature | None = None,
    seed: int = 0,
    on_stop: Callable[[int], None] | None = None,
    device: torch.device | str = "cpu",
) -> list[ProbeLevel]:
    """Probes at the sampler steps ``stops`` of the grid ``sigmas`` (decreasing, ending in 0). The sampler
    and the denoiser run on ``device`` (noise drawn on the CPU); the measures on the CPU."""
    train, held = as_dataset(train), as_dataset(held)
    sig = torch.as_tensor(sigmas, dtype=torch.float64)
    if any(not 0 <= k < len(sig) - 1 for k in stops):
        raise DifflensError(f"stop steps must lie in [0, {len(sig) - 2}], got {stops}")
    x_init = samplers.initial_noise(samples, train.dim, float(sig[0]), seed)
    traj = samplers.sample(denoiser, x_init, sig, method=method, seed=seed, record=True, device=device)
    y_tr = pick_images(train, images, seed, TRAIN)
    y_he = pick_images(held, images, seed, HELD)
    n_tr = fixed_noise(len(y_tr), train.dim, 1, seed, TRAIN)[0]
    n_he = fixed_noise(len(y_he), held.dim, 1, seed, HELD)[0]
    out = []
    for k in stops:
        s = float(sig[k])
        inputs = {"samples": traj.states[k].float(), "train": y_tr + s * n_tr, "held": y_he + s * n_he}
        sets = {g: torch.as_tensor(denoiser(x.to(device), s)).float().cpu() for g, x in inputs.items()}
        cos = {g: nn_cosine(x, train, feature)[0] for g, x in sets.items()}
        out.append(
            ProbeLevel(
                k,
                s,
                {g: float(c.mean()) for g, c in cos.items()},
                {g: float(np.median(c)) for g, c in cos.items()},
                {g: frechet_distance(x, train, feature) for g, x in sets.items()},
            )
        )
        if on_stop is not None:
            on_stop(k)
    return out


def plot_probes(levels: list[ProbeLevel], path: str | Path, *, title: str = "") -> None:
    """1-NN cosine to the training set (left) and FD to it (right) against the stop level, per group."""

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    s = [lv.sigma for lv in levels]
    names = {"samples": "early-stopped samples", "train": "noisy train → D", "held": "noisy held-out → D"}
    for i, g in enumerate(GROUPS):
        a.plot(s, [lv.nn_cosine[g] for lv in levels], "o-", ms=3, color=f"C{i}", label=names[g])
        b.plot(s, [lv.fd_train[g] for lv in levels], "o-", ms=3, color=f"C{i}", label=names[g])
    for ax in (a, b):
        ax.set_xscale("log")
        ax.set_xlabel("stop level s_k")
        ax.grid(alpha=0.3, which="both")
    a.set_ylabel("mean 1-NN cosine similarity to train")
    b.set_ylabel("Fréchet distance to train")
    b.set_yscale("symlog", linthresh=1e-3)
    a.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
