"""Exact k nearest training rows of each query, streamed over a row source in chunks.

Each chunk proposes a few candidates per query (a float32 GEMM in torch, or a faiss flat index), the
running candidate lists merge, and the final candidates are re-measured in float64 — so near-copies
(d ≈ 0) get exact distances instead of the cancellation error of ‖a‖² + ‖b‖² − 2a·b
(docs/method.md, "Memorization and generalization gap"). Distances may be taken in a feature space given by a callable.
Used by the memorization test (d1/d2) and by the K-nearest truncated empirical denoiser.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from difflens.errors import DifflensError, has_module, require
from difflens.kernel.device import device_of, resolve_device
from difflens.kernel.fold import _to, data_chunks, default_chunk_rows
from difflens.kernel.oracle import check_queries
from difflens.kernel.source import Array, Data, RowSource, as_source

Feature = Callable[[torch.Tensor], torch.Tensor]
BACKENDS = ("auto", "torch", "faiss")
_FAISS_MIN_WORK = 50_000_000  # queries × training points above which "auto" picks faiss


@dataclass
class Neighbours:
    """The k nearest training samples of each query: distances (B, k) float64, ascending, and indices."""

    dist: np.ndarray
    index: np.ndarray


def _features(x: torch.Tensor, feature: Feature | None) -> torch.Tensor:
    if feature is None:
        return x.float()
    f = torch.as_tensor(feature(x))
    if f.ndim != 2 or len(f) != len(x):
        raise DifflensError(f"the feature map must return (n, F) for n inputs, got shape {tuple(f.shape)}")
    return f.float()


def check_backend(backend: str) -> None:
    """A known backend whose package is installed (faiss is the 'faiss' extra), or one clear line."""
    if backend not in BACKENDS:
        raise DifflensError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "faiss":
        require("faiss", "faiss", "--backend faiss")


def _chunk_candidates(q: torch.Tensor, q_sq: torch.Tensor, f: torch.Tensor, k: int, backend: str):
    """Approximate (float32) squared distances and local indices of the k closest rows of one chunk."""
    k = min(k, len(f))
    if backend == "faiss":
        faiss = require("faiss", "faiss", "--backend faiss")
        index = faiss.IndexFlatL2(f.shape[1])
        index.add(np.ascontiguousarray(f.cpu().numpy(), dtype=np.float32))
        dist, idx = index.search(np.ascontiguousarray(q.cpu().numpy(), dtype=np.float32), k)
        return torch.from_numpy(dist).double().to(q.device), torch.from_numpy(idx).long().to(q.device)
    d = (q_sq[:, None] + (f * f).sum(1)[None, :] - 2.0 * (q @ f.T)).double()
    d, i = torch.topk(d, k, dim=1, largest=False)
    return d, i


def nearest(
    queries: Array,
    data: Data,
    k: int = 2,
    *,
    feature: Feature | None = None,
    backend: str = "auto",
    candidates: int = 8,
    chunk_size: int | None = None,
    query_batch: int = 4096,
    on_chunk: Callable[[int], None] | None = None,
    device: torch.device | str | None = None,
) -> Neighbours:
    """Exact k nearest training samples of each query (L2, in feature space if ``feature`` is given).

    ``data`` is a row source (a ``difflens.data.Dataset``) or an in-memory array/tensor. Each chunk
    proposes ``k + candidates`` rows per query; the survivors are re-measured in float64, which makes
    the result exact unless more than ``candidates`` rows tie with the true k-th one within float32
    rounding. ``on_chunk(rows)`` is called after each data chunk.

    ``device`` (default: the queries' device) is where the candidate GEMMs run and where ``feature``
    receives its inputs; data chunks are moved there, and the float64 re-measure runs on the CPU
    (docs/method.md, "Memorization and generalization gap"), so the answer does not depend on the device."""
    check_backend(backend)
    data = as_source(data)
    target = resolve_device(device if device is not None else device_of(queries))
    q_raw = check_queries(queries, data.dim).to(target)
    if not 1 <= k <= data.n:
        raise DifflensError(f"need 1 ≤ k ≤ number of training samples ({data.n}), got k={k}")
    if backend == "auto":
        big = len(q_raw) * data.n >= _FAISS_MIN_WORK
        backend = "faiss" if big and target.type == "cpu" and has_module("faiss") else "torch"
    q_feat = _features(q_raw, feature)
    rows = chunk_size or default_chunk_rows(q_feat.shape[1], min(len(q_feat), query_batch), target)
    keep = k + max(0, candidates)
    best_d = torch.full((len(q_feat), 0), np.inf, dtype=torch.float64, device=target)
    best_i = torch.zeros((len(q_feat), 0), dtype=torch.long, device=target)
    q_sq = (q_feat * q_feat).sum(1)
    for index, x in data_chunks(data, rows):
        f = _features(_to(x, target), feature)
        if f.shape[1] != q_feat.shape[1]:
            raise DifflensError("the feature map returns different sizes for queries and training samples")
        parts = [
            _chunk_candidates(q_feat[i : i + query_batch], q_sq[i : i + query_batch], f, keep, backend)
            for i in range(0, len(q_feat), query_batch)
        ]
        d = torch.cat([p[0] for p in parts])
        i = index.to(target)[torch.cat([p[1] for p in parts])]
        best_d, order = torch.topk(torch.cat([best_d, d], 1), min(keep, best_d.shape[1] + d.shape[1]), 1, False)
        best_i = torch.cat([best_i, i], 1).gather(1, order)
        if on_chunk is not None:
            on_chunk(len(x))
    best_i = best_i.cpu()
    exact = _exact_distances(q_feat, best_i, data, feature)
    exact, order = torch.sort(exact, dim=1)
    return Neighbours(exact[:, :k].numpy(), best_i.gather(1, order)[:, :k].numpy())


def _exact_distances(q_feat: torch.Tensor, idx: torch.Tensor, data: RowSource, feature: Feature | None) -> torch.Tensor:
    """float64 distances on the CPU from each query to its candidate rows (B, c); the features of the
    candidates are taken on the queries' device, like those the search compared."""
    flat = idx.reshape(-1).numpy()
    uniq, inverse = np.unique(flat, return_inverse=True)
    f = _features(_to(data.take(uniq), q_feat.device), feature).cpu().double()
    f = f[torch.from_numpy(inverse)].reshape(*idx.shape, -1)
    return torch.linalg.vector_norm(f - q_feat.cpu().double()[:, None, :], dim=-1)
