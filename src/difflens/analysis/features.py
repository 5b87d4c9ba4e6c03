"""Comparisons in a feature space: feature maps, the Fréchet distance and 1-NN cosine similarity.

The math: docs/method.md, "Feature-space measures". A feature map is a callable (n, D) tensor → (n, F)
tensor: a user's network (``module:attr``, ``path/file.py:attr``), the identity (``pixels``), or the
default ``pca[:K]`` — the top K principal directions of the training split, fitted once in float64 on up
to 8192 seeded training rows. difflens bundles no image classifier, so PCA is the default where a paper
uses Inception or DINOv2 features; every output records which map it used.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch

from difflens.data import Dataset, as_dataset
from difflens.errors import DifflensError
from difflens.models.load import load_callable

Feature = Callable[[torch.Tensor], torch.Tensor]
PCA_DIMS = 32
PCA_ROWS = 8192
EIG_FLOOR = 0.0  # eigenvalues of Σa^½·Σb·Σa^½ below this are rounding error of a PSD matrix: set to it


class PCAFeature:
    """x ↦ (x − mean)·Vᵀ, V the top ``dims`` principal directions of the training rows (float64 fit)."""

    def __init__(self, data, dims: int = PCA_DIMS, *, max_rows: int = PCA_ROWS, seed: int = 0):
        ds = as_dataset(data)
        if dims < 1:
            raise DifflensError(f"PCA needs at least 1 dimension, got {dims}")
        if ds.n < 2:
            raise DifflensError("PCA needs at least 2 training rows")
        if ds.n > max_rows:
            x = ds.take(np.sort(np.random.default_rng(seed).choice(ds.n, max_rows, replace=False)))
        else:
            x = ds.rows(0, ds.n)
        x = x.double()
        self.mean = x.mean(0)
        _, sv, vt = torch.linalg.svd(x - self.mean, full_matrices=False)
        self.dims = min(dims, len(sv))
        self.components = vt[: self.dims]
        self.explained = float((sv[: self.dims] ** 2).sum() / (sv**2).sum()) if sv.abs().sum() > 0 else 1.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        return ((x.double().reshape(len(x), -1) - self.mean) @ self.components.T).to(torch.float32)

    def describe(self) -> str:
        return f"pca:{self.dims} of the training split ({self.explained:.1%} of its variance)"


def resolve_feature(spec: str | None, train: Dataset | np.ndarray | torch.Tensor) -> tuple[Feature | None, str]:
    """(feature map, description) from a spec: None/``pixels`` (identity), ``pca[:K]`` (fit on ``train``)
    or ``module:attr`` / ``path/file.py:attr`` (``models.load.load_callable``)."""
    if spec is None or spec == "pixels":
        return None, "pixels"
    name, _, k = spec.partition(":")
    if name == "pca":
        try:
            dims = int(k) if k else PCA_DIMS
        except ValueError:
            raise DifflensError(f"feature {spec!r}: use pca or pca:K with an integer K") from None
        f = PCAFeature(train, dims)
        return f, f.describe()
    if ":" not in spec:
        raise DifflensError(f"unknown feature map {spec!r}: use pixels, pca[:K] or module:attr")
    return load_callable(spec, "feature map"), spec


def _apply(feature: Feature | None, x: torch.Tensor) -> torch.Tensor:
    f = x if feature is None else torch.as_tensor(feature(x))
    if f.ndim != 2 or len(f) != len(x):
        raise DifflensError(f"the feature map must return (n, F) for n inputs, got shape {tuple(f.shape)}")
    return f.double()


def _chunks(x, chunk: int):
    """(n, D) rows in chunks: a Dataset streamed, an array or tensor sliced."""
    if isinstance(x, Dataset):
        for i in range(0, x.n, chunk):
            yield x.rows(i, min(i + chunk, x.n))
    else:
        t = torch.as_tensor(np.ascontiguousarray(x) if not isinstance(x, torch.Tensor) else x)
        t = t.reshape(len(t), -1)
        for i in range(0, len(t), chunk):
            yield t[i : i + chunk]


def gaussian_moments(
    x: Dataset | np.ndarray | torch.Tensor, feature: Feature | None = None, *, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of the features of the rows of ``x``, streamed in chunks."""
    n, s, ss = 0, None, None
    for rows in _chunks(x, chunk):
        f = _apply(feature, rows)
        s = f.sum(0) if s is None else s + f.sum(0)
        ss = f.T @ f if ss is None else ss + f.T @ f
        n += len(f)
    if n < 2:
        raise DifflensError(f"the Fréchet distance needs at least 2 rows per set, got {n}")
    mu = s / n
    cov = (ss - n * torch.outer(mu, mu)) / (n - 1)
    return mu.numpy(), ((cov + cov.T) / 2).numpy()


def frechet_from_moments(mu_a: npt.ArrayLike, cov_a: npt.ArrayLike, mu_b: npt.ArrayLike, cov_b: npt.ArrayLike) -> float:
    """‖μa − μb‖² + tr Σa + tr Σb − 2·tr (Σa^½ Σb Σa^½)^½, in float64
    (docs/method.md, "Feature-space measures"): symmetric eigendecompositions, eigenvalues floored at
    ``EIG_FLOOR``, never complex."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape:
        raise DifflensError(f"the two sets have different feature sizes ({mu_a.shape[0]} vs {mu_b.shape[0]})")
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.maximum(w, EIG_FLOOR))) @ v.T
    m = root_a @ cov_b @ root_a
    cross = np.sqrt(np.maximum(np.linalg.eigvalsh((m + m.T) / 2), EIG_FLOOR)).sum()
    d = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)
    return max(d, 0.0)


def frechet_distance(
    a: Dataset | np.ndarray | torch.Tensor,
    b: Dataset | np.ndarray | torch.Tensor,
    feature: Feature | None = None,
    *,
    chunk: int = 4096,
) -> float:
    """Fréchet distance between Gaussians fitted to the features of two sets of rows (arrays, tensors or
    Datasets, streamed). FD to a training set vs to a held-out set is the usual memorization contrast."""
    return frechet_from_moments(*gaussian_moments(a, feature, chunk=chunk), *gaussian_moments(b, feature, chunk=chunk))


def nn_cosine(
    queries: np.ndarray | torch.Tensor,
    data: Dataset | np.ndarray | torch.Tensor,
    feature: Feature | None = None,
    *,
    chunk: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the largest cosine similarity to any training row in feature space, and that row's index
    (float64; a zero feature vector has cosine 0 with everything)."""
    q = _apply(feature, torch.as_tensor(np.ascontiguousarray(queries)).reshape(len(queries), -1))
    q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-300)
    best = torch.full((len(q),), -np.inf, dtype=torch.float64)
    arg = torch.zeros(len(q), dtype=torch.long)
    start = 0
    for rows in _chunks(as_dataset(data), chunk):
        f = _apply(feature, rows)
        f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-300)
        c, i = (q @ f.T).max(1)
        better = c > best
        best = torch.where(better, c, best)
        arg = torch.where(better, i + start, arg)
        start += len(f)
    return best.numpy(), arg.numpy()
