"""Where sampling goes: do sampler states ever look like noised training samples?

A measure of difflens's own: docs/method.md, "Memorization and generalization gap".

At each level s of a recorded sampler trajectory, compare the sampler states with noised training
samples x_m + s·ε at the same s, on two measures:

* posterior concentration under the empirical posterior at s (T = 1): max weight and effective
  count (a noised training sample at intermediate s has a posterior peaked on its source);
* distance to the nearest member of a bank of noised training samples at s (one fresh draw per
  training point); the reference probes are independent noised training samples.

Per level: both distributions (quantiles) and overlap scores — the histogram overlap coefficient
Σ_bins min(p, q) ∈ [0, 1] on shared bins (1 = same distribution, 0 = disjoint).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from difflens.analysis.memorization import nearest
from difflens.data import Dataset, as_dataset
from difflens.diffusion.estimators import sources_for_level
from difflens.diffusion.samplers import Trajectory
from difflens.errors import DifflensError
from difflens.kernel import oracle
from difflens.report import plt, save_figure


def overlap_coefficient(
    a: np.ndarray, b: np.ndarray, bins: int = 20, range_: tuple[float, float] | None = None
) -> float:
    """Σ min(p, q) over shared histogram bins of two samples (1 = identical, 0 = disjoint)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if range_ is None:
        lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
        range_ = (lo, hi if hi > lo else lo + 1.0)
    pa, _ = np.histogram(a, bins=bins, range=range_)
    pb, _ = np.histogram(b, bins=bins, range=range_)
    return float(np.minimum(pa / len(a), pb / len(b)).sum())


def _quantiles(v: np.ndarray) -> dict:
    q = np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9])
    return dict(zip(("q10", "q25", "median", "q75", "q90"), map(float, q), strict=True))


@dataclass
class OverlapLevel:
    sigma: float
    sampler_max_weight: dict
    train_max_weight: dict
    sampler_log10_eff_count: dict
    train_log10_eff_count: dict
    sampler_nn_distance: dict
    train_nn_distance: dict
    overlap_max_weight: float
    overlap_eff_count: float
    overlap_nn_distance: float


@torch.no_grad()
def trajectory_overlap(
    data: Dataset | np.ndarray | torch.Tensor,
    trajectory: Trajectory,
    *,
    probes: int = 256,
    bank: int | None = None,
    bins: int = 12,
    seed: int = 0,
    chunk_size: int | None = None,
    on_level: Callable[[int], None] | None = None,
) -> list[OverlapLevel]:
    """Per recorded level: sampler states vs ``probes`` noised training samples (see module doc).
    The bank holds one noised copy of every training point, or of ``bank`` of them (seeded) for
    large sets."""
    data = as_dataset(data)
    if not trajectory.states:
        raise DifflensError("the trajectory has no recorded states (sample with record=True)")
    rng = np.random.default_rng(seed)
    x_all = (
        data.rows(0, data.n) if bank is None or bank >= data.n else data.take(np.sort(rng.choice(data.n, bank, False)))
    )
    out = []
    for k, states in enumerate(trajectory.states):
        s = float(trajectory.sigmas[k])
        src = sources_for_level(len(x_all), probes, rng)
        probe = x_all[src] + s * torch.from_numpy(rng.standard_normal((len(src), data.dim)).astype(np.float32))
        noised = x_all + s * torch.from_numpy(rng.standard_normal(tuple(x_all.shape)).astype(np.float32))
        ps = oracle.posterior(states, data, s, chunk_size=chunk_size)
        pt = oracle.posterior(probe, data, s, chunk_size=chunk_size)
        ds_ = nearest(states, noised, 1, chunk_size=chunk_size).dist[:, 0]
        dt_ = nearest(probe, noised, 1, chunk_size=chunk_size).dist[:, 0]
        mw_s, mw_t = ps.max_weight.numpy(), pt.max_weight.numpy()
        ec_s, ec_t = np.log10(ps.eff_count.numpy()), np.log10(pt.eff_count.numpy())
        out.append(
            OverlapLevel(
                sigma=s,
                sampler_max_weight=_quantiles(mw_s),
                train_max_weight=_quantiles(mw_t),
                sampler_log10_eff_count=_quantiles(ec_s),
                train_log10_eff_count=_quantiles(ec_t),
                sampler_nn_distance=_quantiles(ds_),
                train_nn_distance=_quantiles(dt_),
                overlap_max_weight=overlap_coefficient(mw_s, mw_t, bins, (0.0, 1.0)),
                overlap_eff_count=overlap_coefficient(ec_s, ec_t, bins, (0.0, max(np.log10(data.n), 1e-6))),
                overlap_nn_distance=overlap_coefficient(np.log(ds_ + 1e-12), np.log(dt_ + 1e-12), bins),
            )
        )
        if on_level is not None:
            on_level(k)
    return out


def plot_overlap(levels: list[OverlapLevel], path: str | Path, *, title: str = "") -> None:
    """Max weight and NN distance (median, quartile band) of sampler states vs noised training samples
    against s, and the overlap scores per level."""
    s = [lv.sigma for lv in levels]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, field, label in (
        (axes[0], "max_weight", "posterior max weight"),
        (axes[1], "nn_distance", "distance to nearest noised training sample"),
    ):
        for who, color in (("sampler", "C0"), ("train", "C3")):
            q = [getattr(lv, f"{who}_{field}") for lv in levels]
            ax.plot(s, [v["median"] for v in q], "-", color=color, label=f"{who} (median)")
            ax.fill_between(s, [v["q25"] for v in q], [v["q75"] for v in q], color=color, alpha=0.25)
        ax.set_ylabel(label)
    axes[1].set_yscale("log")
    for name, color in (("max_weight", "C0"), ("eff_count", "C1"), ("nn_distance", "C2")):
        axes[2].plot(s, [getattr(lv, f"overlap_{name}") for lv in levels], "o-", ms=3, color=color, label=name)
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].set_ylabel("overlap coefficient (1 = same distribution)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("noise level s")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title or "sampler states vs noised training samples")
    save_figure(fig, path)
