"""2-D toy lab (Kaiser & Kollmann 2026): why models overfit at intermediate noise yet sample well.

The math: docs/method.md, "Memorization and generalization gap".

Data: points on a circle, split alternately into train and val. The defaults are the paper's setting
(docs/method.md, "Memorization and generalization gap"): 10 train + 10 val points alternating, rotated
by 0.01 turn; δ in units of the radius, 0.12–0.22; an EDM ρ = 7 grid of 120 levels in
[2e-3, 80]·radius/10. Denoisers (all ``D(x, sigma)``):

* ``Optimal`` — the empirical optimal denoiser y*(x, s) of the training points: the kernel as a
  denoiser, ``difflens.models.EmpiricalDenoiser``, under the toy's name.
* :class:`Blurred` — the error-prone y_δ: the optimal denoiser of the training data blurred by
  N(0, δ²I), y_δ(x, s) = (δ²·x + s²·y*(x, s̃)) / (s² + δ²) with s̃² = s² + δ².
* :class:`Guided` — D = D₊ + w·(D₊ − D₋) for a better (δ₊) and a worse (δ₋) blurred denoiser.

Sweeps of the gap G(s) against δ, the number of points and w use the unsquared L2 error averaged
over M noise draws per point (default 50); δ and the levels are given in units of the radius and
scaled by it. Plots: flow-field streamlines, trajectories, gap curves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from difflens.analysis.gap import GapCurve, generalization_gap
from difflens.diffusion.denoiser import Denoiser
from difflens.diffusion.samplers import edm_sigmas
from difflens.errors import DifflensError
from difflens.kernel import oracle
from difflens.models.empirical import EmpiricalDenoiser
from difflens.report import plt, save_figure

SWEEPS = ("delta", "density", "guidance")


PAPER_POINTS = 10  # training points (as many validation points between them)
PAPER_DELTAS = (0.12, 0.15, 0.18, 0.22)  # δ / radius
PAPER_ROTATION = 0.01  # turns
PAPER_LEVELS = (120, 2e-3 / 10, 80.0 / 10)  # count, lowest and highest level / radius (EDM ρ = 7)


def paper_sigmas(radius: float = 1.0) -> np.ndarray:
    """The paper's 120 EDM ρ = 7 levels in [2e-3, 80]·radius/10, ascending (float64)."""
    n, lo, hi = PAPER_LEVELS
    return np.sort(edm_sigmas(n, lo * radius, hi * radius)[:-1].numpy())


def circle(
    points: int = PAPER_POINTS, *, random: bool = False, radius: float = 1.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val): 2·points positions on a circle, float32 (points, 2) each. Equally spaced (rotated by
    0.01 turn) and alternating between train and val; or ``random`` angles, drawn independently and split
    as drawn (the first half val, the second train — not after sorting, so the two splits are independent)."""
    if points < 1:
        raise DifflensError(f"need at least 1 training point, got {points}")
    if not radius > 0:
        raise DifflensError(f"the circle radius must be > 0, got {radius}")
    n = 2 * points
    if random:
        angles = np.random.default_rng(seed).uniform(0, 2 * np.pi, n)
    else:
        angles = (np.arange(n) / n + PAPER_ROTATION) * 2 * np.pi
    x = (radius * np.stack([np.cos(angles), np.sin(angles)], 1)).astype(np.float32)
    if random:
        return torch.from_numpy(x[points:].copy()), torch.from_numpy(x[:points].copy())
    return torch.from_numpy(x[0::2].copy()), torch.from_numpy(x[1::2].copy())


def alternate_split(x: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Any 2-D point set split alternately (even rows train, odd rows val)."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32)).reshape(len(x), -1)
    if x.shape[1] != 2 or len(x) < 2:
        raise DifflensError(f"the toy lab needs at least 2 points in 2-D, got shape {tuple(x.shape)}")
    return x[0::2].clone(), x[1::2].clone()


Optimal = EmpiricalDenoiser  # y*(x, s), the posterior mean over the training points


class Blurred:
    """y_δ(x, s) = (δ²·x + s²·y*(x, √(s²+δ²))) / (s² + δ²): exact posterior mean of the blurred data.
    The kernel runs on ``device``; the answer comes back on x's device."""

    def __init__(self, data, delta: float, device: torch.device | str = "cpu"):
        if not delta >= 0:
            raise DifflensError(f"δ must be ≥ 0, got {delta}")
        self.optimal = EmpiricalDenoiser(torch.as_tensor(data).float(), device=device)
        self.delta = float(delta)

    def __call__(self, x, sigma):
        x = torch.as_tensor(x)
        s2 = oracle.as_sigma(sigma, len(x)).to(x.device) ** 2
        d2 = self.delta**2
        y = self.optimal.posterior(x, torch.sqrt(s2 + d2)).mean.to(x.device)
        return ((d2 * x.double() + s2[:, None] * y) / (s2 + d2)[:, None]).to(x.dtype)


class Guided:
    """D = D₊ + w·(D₊ − D₋)."""

    def __init__(self, positive, negative, w: float):
        self.positive, self.negative, self.w = positive, negative, float(w)

    def __call__(self, x, sigma):
        p = self.positive(x, sigma)
        return p + self.w * (p - self.negative(x, sigma))


def sweep(
    kind: str,
    values: Iterable[float],
    sigmas: npt.ArrayLike,
    *,
    points: int = PAPER_POINTS,
    delta: float = PAPER_DELTAS[0],
    delta_neg: float = 0.3,
    random: bool = False,
    radius: float = 1.0,
    draws: int = 50,
    seed: int = 0,
    on_level: Callable[[str, int], None] | None = None,
    device: torch.device | str = "cpu",
) -> list[GapCurve]:
    """Gap curves G(s) for each value of δ (``delta``), number of training points (``density``) or
    guidance weight w (``guidance``, D₊ = y_δ, D₋ = y_δ₋); unsquared L2 error, ``draws`` per point.
    δ values are in units of ``radius``; ``sigmas`` are absolute levels. The denoisers run on ``device``
    (the points and noise are drawn on the CPU)."""
    if kind not in SWEEPS:
        raise DifflensError(f"unknown sweep {kind!r}; choose one of {', '.join(SWEEPS)}")
    curves = []
    for v in values:
        n = int(v) if kind == "density" else points
        if kind == "density" and n != v:
            raise DifflensError(f"density sweep values are point counts (integers), got {v}")
        train, val = circle(n, random=random, radius=radius, seed=seed)
        d = radius * (v if kind == "delta" else delta)
        if kind == "guidance":
            den = Guided(Blurred(train, d, device), Blurred(train, radius * delta_neg, device), v)
        else:
            den = Blurred(train, d, device)
        label = {"delta": f"δ={v:g}", "density": f"N={n}", "guidance": f"w={v:g}"}[kind]
        (curve,) = generalization_gap(
            {label: den}, train, val, sigmas, draws=draws, error="l2", seed=seed, on_level=on_level, device=device
        )
        curves.append(curve)
    return curves


# ---------------------------------------------------------------- plots


def _grid(lim: float, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    g = np.linspace(-lim, lim, n)
    return np.meshgrid(g, g)


def plot_flow(
    denoiser: Denoiser,
    train: np.ndarray | torch.Tensor,
    val: np.ndarray | torch.Tensor,
    levels: Iterable[float],
    path: str | Path,
    *,
    trajectories: np.ndarray | torch.Tensor | None = None,
    lim: float = 1.8,
    title: str = "",
) -> None:
    """Streamlines of the sampling direction −dx/ds = (D(x, s) − x)/s at several levels s, then the
    sampler trajectories (if given, (steps, B, 2)) over the data."""

    levels = list(levels)
    panels = len(levels) + (trajectories is not None)
    fig, axes = plt.subplots(1, panels, figsize=(3.4 * panels, 3.6), squeeze=False)
    gx, gy = _grid(lim)
    pts = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1)).double()
    for ax, s in zip(axes[0], levels, strict=False):
        v = ((torch.as_tensor(denoiser(pts, float(s))).double() - pts) / s).numpy()
        u, w = v[:, 0].reshape(gx.shape), v[:, 1].reshape(gx.shape)
        speed = np.hypot(u, w)
        ax.streamplot(gx, gy, u, w, color=np.log10(speed + 1e-12), cmap="viridis", density=1.1, linewidth=0.7)
        ax.set_title(f"s = {s:.3g}", fontsize=9)
    if trajectories is not None:
        ax = axes[0, -1]
        t = np.asarray(trajectories)
        for b in range(t.shape[1]):
            ax.plot(t[:, b, 0], t[:, b, 1], "-", color="C0", lw=0.5, alpha=0.4)
        ax.plot(t[-1, :, 0], t[-1, :, 1], ".", color="C0", ms=3, label="samples")
        ax.set_title("sampler trajectories", fontsize=9)
    for ax in axes[0]:
        ax.plot(*np.asarray(train).T, "o", color="C3", ms=4, label="train")
        ax.plot(*np.asarray(val).T, "x", color="k", ms=4, label="val")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
