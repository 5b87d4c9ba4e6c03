"""Memorization of generated samples: exact nearest training samples and the d1/d2 ratio test.

A generated sample is *memorized* when d1/d2 < 1/3, d1 and d2 its L2 distances to the nearest and
second-nearest training samples (Gu et al.; docs/method.md). The exact streamed search, optionally in
a feature space, is the kernel's ``nearest`` (``difflens.kernel.neighbours``).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from difflens.data import Dataset, as_dataset, check_same_layout
from difflens.errors import DifflensError
from difflens.kernel.neighbours import Feature, Neighbours, nearest
from difflens.report import plt, save_figure

__all__ = [
    "Feature",
    "Memorization",
    "Neighbours",
    "image_grid",
    "is_image_shape",
    "memorization",
    "nearest",
    "plot_memorized",
    "plot_nn_distances",
    "to_image",
]


@dataclass
class Memorization:
    """Per-sample nearest distances and the memorized fraction (d1/d2 < threshold)."""

    d1: np.ndarray
    d2: np.ndarray
    index: np.ndarray  # nearest training sample
    index2: np.ndarray  # second nearest
    threshold: float

    @property
    def ratio(self) -> np.ndarray:
        """d1/d2 per sample (0 for an exact copy, also when the copied point is duplicated)."""
        return np.where(self.d1 == 0, 0.0, self.d1 / np.where(self.d2 > 0, self.d2, 1.0))

    @property
    def memorized(self) -> np.ndarray:
        return self.ratio < self.threshold

    @property
    def memorization_ratio(self) -> float:
        return float(self.memorized.mean())

    def summary(self, bins: int = 30) -> dict:
        """JSON-ready: memorized fraction, NN-distance quantiles and histogram, ratio quantiles."""
        q = [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0]
        counts, edges = np.histogram(self.d1, bins=bins)
        return {
            "samples": len(self.d1),
            "threshold": self.threshold,
            "memorization_ratio": self.memorization_ratio,
            "memorized": int(self.memorized.sum()),
            "nn_distance": {
                "mean": float(self.d1.mean()),
                **{f"q{int(p * 100)}": float(v) for p, v in zip(q, np.quantile(self.d1, q), strict=True)},
                "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
            },
            "ratio_d1_d2": {f"q{int(p * 100)}": float(v) for p, v in zip(q, np.quantile(self.ratio, q), strict=True)},
            "distinct_nearest": len(np.unique(self.index)),
        }

    def npz_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, d1=self.d1, d2=self.d2, index=self.index, index2=self.index2, ratio=self.ratio)
        return buf.getvalue()


def memorization(
    samples: np.ndarray | torch.Tensor,
    data: Dataset | np.ndarray | torch.Tensor,
    *,
    threshold: float = 1.0 / 3.0,
    feature: Feature | None = None,
    backend: str = "auto",
    chunk_size: int | None = None,
    on_chunk: Callable[[int], None] | None = None,
    device: torch.device | str | None = None,
) -> Memorization:
    """Nearest and second-nearest training samples of each generated sample, and the ratio test; the
    search runs on ``device`` (default: the samples' device), the distances come back float64 on the CPU."""
    if not 0.0 < threshold <= 1.0:
        raise DifflensError(f"the memorization threshold must be in (0, 1], got {threshold}")
    data = as_dataset(data)
    if data.n < 2:
        raise DifflensError("the memorization ratio needs at least 2 training samples")
    check_same_layout(tuple(getattr(samples, "shape", ()))[1:], data.shape, "samples", "the training data")
    nb = nearest(
        samples, data, 2, feature=feature, backend=backend, chunk_size=chunk_size, on_chunk=on_chunk, device=device
    )
    return Memorization(nb.dist[:, 0], nb.dist[:, 1], nb.index[:, 0], nb.index[:, 1], float(threshold))


# ---------------------------------------------------------------- plots


def is_image_shape(shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 or (len(shape) == 3 and (shape[-1] in (1, 3, 4) or shape[0] in (1, 3, 4)))


def to_image(x: np.ndarray, shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
    """One flattened sample as an (H, W) or (H, W, C) image in [0, 1]."""
    img = np.asarray(x, dtype=np.float64).reshape(shape)
    if img.ndim == 3 and img.shape[0] in (1, 3, 4) and img.shape[-1] not in (1, 3, 4):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    return np.clip((img - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def image_grid(
    images: np.ndarray | torch.Tensor,
    shape: tuple[int, ...],
    path: str | Path,
    *,
    title: str = "",
    cols: int = 8,
    lo: float = -1.0,
    hi: float = 1.0,
) -> None:
    """A plain grid of samples (rows of ``cols``)."""

    images = np.asarray(images)
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.1 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, x in zip(axes.flat, images, strict=False):
        ax.imshow(to_image(x, shape, lo, hi), cmap="gray", vmin=0, vmax=1)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def plot_memorized(
    samples: np.ndarray | torch.Tensor, data: Dataset, result: Memorization, path: str | Path, *, top: int = 16
) -> None:
    """The ``top`` most memorized samples (lowest d1/d2), each beside its nearest training image."""

    if not is_image_shape(data.shape):
        raise DifflensError(f"cannot draw samples of shape {data.shape} as images")
    order = np.argsort(result.ratio, kind="stable")[:top]
    samples = np.asarray(samples, dtype=np.float32).reshape(len(result.d1), -1)
    near = data.take(result.index[order]).numpy()
    lo, hi = data.stats.minimum, data.stats.maximum
    cols = 4
    rows = -(-len(order) // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * 1.2, rows * 1.35 + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for j, (i, nb) in enumerate(zip(order, near, strict=True)):
        a, b = axes[j // cols, 2 * (j % cols)], axes[j // cols, 2 * (j % cols) + 1]
        a.imshow(to_image(samples[i], data.shape, lo, hi), cmap="gray", vmin=0, vmax=1)
        b.imshow(to_image(nb, data.shape, lo, hi), cmap="gray", vmin=0, vmax=1)
        a.set_title(f"#{i} r={result.ratio[i]:.2f}", fontsize=7, color="C3" if result.memorized[i] else "k")
        b.set_title(f"train {result.index[i]}", fontsize=7)
    fig.suptitle(
        f"most memorized samples (left) beside their nearest training image (right); "
        f"memorized {result.memorization_ratio:.1%} at d1/d2 < {result.threshold:.3g}",
        fontsize=9,
    )
    save_figure(fig, path)


def plot_nn_distances(result: Memorization, path: str | Path, *, title: str = "") -> None:
    """Histograms of the nearest-neighbour distance d1 and of the ratio d1/d2 (threshold marked)."""

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.hist(result.d1, bins=30, color="C0")
    a.set_xlabel("distance to nearest training sample d1")
    a.set_ylabel("samples")
    b.hist(result.ratio, bins=np.linspace(0, 1, 31), color="C1")
    b.axvline(result.threshold, color="C3", ls="--", label=f"threshold {result.threshold:.3g}")
    b.set_xlabel("d1 / d2")
    b.legend(fontsize=8)
    fig.suptitle(title or f"memorization ratio {result.memorization_ratio:.1%} ({len(result.d1)} samples)")
    save_figure(fig, path)
