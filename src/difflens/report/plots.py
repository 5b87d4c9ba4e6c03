"""PNG plots of results (matplotlib, Agg backend), each written atomically by :func:`save_figure`.

The plots take the JSON-able result dicts the analysis functions return, so they need nothing
above this layer."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from difflens.data.files import write_bytes

RATIO_CLIP = (0.1, 1e3)  # J_θ/J* axis range: where J* → 0 the ratio diverges and says nothing

__all__ = [
    "RATIO_CLIP",
    "excess_figure",
    "plot_excess",
    "plot_heatmap",
    "plot_losses",
    "plot_optimal_loss",
    "plt",
    "save_figure",
]


def save_figure(fig: Figure, path: str | Path) -> None:
    """The figure as a PNG at ``path`` (atomic), then closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_bytes(Path(path), buf.getvalue())


def plot_optimal_loss(curve: dict, path: Path) -> None:
    """J* vs σ (log axis) with ±2 s.e. bands: linear scale (left) and log scale (right)."""
    lv = curve["levels"]
    s = [x["sigma"] for x in lv]
    y = [x["optimal_loss"] for x in lv]
    e = [2 * (x["stderr"] if x["stderr"] is not None and math.isfinite(x["stderr"]) else 0.0) for x in lv]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    unit = "per dim" if curve["reduction"] == "mean" else "summed"
    name = curve["dataset"]["spec"]
    for ax, log in zip(axes, (False, True), strict=True):
        ax.plot(s, y, "o-", ms=3, color="C0", label=f"J* ({curve['estimator']})")
        ax.fill_between(
            s,
            [a - b for a, b in zip(y, e, strict=True)],
            [a + b for a, b in zip(y, e, strict=True)],
            color="C0",
            alpha=0.25,
            label="±2 s.e.",
        )
        if curve["target"] == "x0":
            ax.axhline(curve["data_variance"], color="gray", ls="--", lw=1, label="data variance")
        if curve.get("critical_sigma"):
            ax.axvline(
                curve["critical_sigma"], color="C3", ls=":", lw=1, label=f"critical σ ≈ {curve['critical_sigma']:.3g}"
            )
        ax.set_xscale("log")
        if log:
            positive = [v for v in y if v > 0]
            if positive:
                ax.set_yscale("log")
                ax.set_ylim(bottom=max(min(positive), max(positive) * 1e-8) / 2)
        ax.set_xlabel("noise level σ (VE-equivalent s = σ_t/α_t)")
        ax.set_ylabel(f"optimal loss, target {curve['target']} ({unit})")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Optimal loss on {name} (N={curve['dataset']['n']}, D={curve['dataset']['dim']}), "
        f"process {curve['process']}, M={curve['samples']}"
    )
    save_figure(fig, path)


def plot_losses(result: dict, path: Path, title: str) -> None:
    """Loss vs σ (log axis): optimal curve, model on train and held-out, excess shaded (a diagnose result)."""
    lv = result["levels"]
    s = np.array([x["sigma"] for x in lv])
    opt = np.array([x["optimal"] for x in lv])
    trn = np.array([x["train"] for x in lv])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, log in zip(axes, (False, True), strict=True):
        ax.plot(s, opt, "k-", lw=2, label="optimal $J^*$")
        ax.plot(s, trn, "o-", ms=3, color="C0", label=r"model $J_\theta$, train")
        if lv[0]["held"] is not None:
            ax.plot(s, [x["held"] for x in lv], "s--", ms=3, color="C1", label=r"model $J_\theta$, held-out")
        ax.fill_between(s, opt, trn, where=trn >= opt, color="C3", alpha=0.2, label=r"excess $J_\theta - J^*$ (train)")
        if result.get("critical_sigma"):
            ax.axvline(result["critical_sigma"], color="gray", ls=":", lw=1, label="critical σ")
        ax.set_xscale("log")
        if log and np.all(trn > 0):
            ax.set_yscale("log")
            ax.set_ylim(bottom=max(trn.min() * 1e-3, opt.max() * 1e-6))
        ax.set_xlabel("noise level σ (VE-equivalent)")
        ax.set_ylabel(f"loss per dim, target {result['units']['target']} ({result['units']['process']})")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


def _finite(values) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def excess_figure(result: dict) -> Figure:
    """Left: the excess J_θ − J* per level with ±2 s.e. on a symlog axis (linear within about one
    s.e. of zero, so noise around 0 and large excesses both stay readable). Right: J_θ / J* on a log
    axis clipped to ``RATIO_CLIP``; levels beyond it are drawn as triangles on the edge."""
    lv = result["levels"]
    s = _finite(x["sigma"] for x in lv)
    ex = _finite(x["excess"] for x in lv)
    se = _finite(x["excess_stderr"] for x in lv)
    unit = result["units"]["target"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    band = np.where(np.isfinite(se), 2 * se, 0.0)
    a.fill_between(s, ex - band, ex + band, color="C0", alpha=0.25, label="±2 s.e.")
    a.plot(s, ex, "o-", ms=3, color="C0", label=r"$J_\theta - J^*$ (train)")
    if lv[0]["held"] is not None:
        held_ex = _finite(x["held"] for x in lv) - _finite(x["optimal"] for x in lv)
        a.plot(s, held_ex, "s--", ms=3, color="C1", label=r"$J_\theta - J^*$ (held-out)")
    a.axhline(0.0, color="gray", lw=1)
    scale = np.abs(ex[np.isfinite(ex)])
    noise = se[np.isfinite(se) & (se > 0)]
    if scale.size and scale.max() > 0:
        lin = float(np.median(noise)) if noise.size else 1e-3 * float(scale.max())
        a.set_yscale("symlog", linthresh=max(lin, 1e-9 * float(scale.max())))
    a.set_ylabel(rf"excess $J_\theta - J^*$ per dim ({unit} units, symlog)")
    opt, trn = _finite(x["optimal"] for x in lv), _finite(x["train"] for x in lv)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(opt > 0, trn / opt, np.inf)
    lo, hi = RATIO_CLIP
    inside = np.isfinite(ratio) & (ratio >= lo) & (ratio <= hi)
    b.plot(s[inside], ratio[inside], "o-", ms=3, color="C0", label=r"$J_\theta / J^*$ (train)")
    above, below = ~inside & (np.nan_to_num(ratio, nan=0.0) > hi), ~inside & (ratio < lo)
    if above.any():
        b.plot(s[above], np.full(above.sum(), hi), "^", color="C3", label=f"> {hi:g} (J* ≈ 0)")
    if below.any():
        b.plot(s[below], np.full(below.sum(), lo), "v", color="C3", label=f"< {lo:g}")
    b.axhline(1.0, color="gray", ls="--", lw=1, label="optimal")
    b.set_yscale("log")
    b.set_ylim(lo / 1.5, hi * 1.5)
    b.set_ylabel(r"$J_\theta / J^*$ (train)")
    for ax in (a, b):
        ax.set_xscale("log")
        ax.set_xlabel("noise level σ")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return fig


def plot_excess(result: dict, path: Path) -> None:
    """:func:`excess_figure` of a diagnose result, saved as a PNG."""
    save_figure(excess_figure(result), path)


def plot_heatmap(
    steps: Sequence[int],
    sigmas: Sequence[float],
    excess: np.ndarray | Sequence[Sequence[float]],
    path: Path,
    units: str,
) -> None:
    """Excess loss over training time (rows: checkpoints/steps) and noise level (columns)."""
    grid = np.asarray(excess, dtype=np.float64)
    positive = grid[np.isfinite(grid) & (grid > 0)]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(steps) + 2.5))
    if positive.size:
        norm = LogNorm(vmin=max(positive.min(), positive.max() * 1e-6), vmax=positive.max())
        img = ax.imshow(np.where(grid > 0, grid, np.nan), aspect="auto", origin="lower", cmap="magma", norm=norm)
        fig.colorbar(img, ax=ax, label=rf"excess loss $J_\theta - J^*$ ({units}); ≤ 0 blank")
    ticks = np.linspace(0, len(sigmas) - 1, min(8, len(sigmas))).astype(int)
    ax.set_xticks(ticks, [f"{sigmas[i]:.3g}" for i in ticks])
    rows = np.linspace(0, len(steps) - 1, min(12, len(steps))).astype(int)
    ax.set_yticks(rows, [str(steps[i]) for i in rows])
    ax.set_xlabel("noise level σ")
    ax.set_ylabel("training step")
    save_figure(fig, path)


def plot_schedule(table: list[dict], path: str | Path, title: str, critical_sigma: float | None = None) -> None:
    """One figure: J*_x0, J_θ (x0 units) and the effective x0 weight w(σ) (left, log scales), and the
    sampling density p per bin (right); the critical σ* as a dotted line on both."""
    s = np.array([r["sigma"] for r in table])
    optimal = np.array([r["optimal_loss_x0"] for r in table])
    model = np.array([r["model_loss_x0"] for r in table])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    ax.plot(s, optimal, "k-", lw=2, label="optimal J*")
    if np.isfinite(model).any():
        ax.plot(s, model, "o-", ms=3, color="C0", label="model J_θ")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(bottom=np.nanmax(np.concatenate([optimal, model])) * 1e-4)
    ax.set_xlabel("noise level σ")
    ax.set_ylabel("loss per dim (x0 units)")
    twin = ax.twinx()
    twin.plot(s, [r["weight_x0"] for r in table], "--", color="C2", label="weight on the x0 loss w(σ)")
    twin.set_yscale("log")
    twin.set_ylabel("weight w(σ)")
    ax.legend(loc="upper left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    lo, hi = np.array([r["sigma_lo"] for r in table]), np.array([r["sigma_hi"] for r in table])
    axes[1].bar(lo, [r["density"] for r in table], width=hi - lo, align="edge", color="C1", edgecolor="k", lw=0.3)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("noise level σ")
    axes[1].set_ylabel("p(σ): probability per bin")
    if critical_sigma:
        for a in axes:
            a.axvline(critical_sigma, color="C3", ls=":", lw=1, label=f"critical σ* ≈ {critical_sigma:.3g}")
        axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
