"""``precision="fast"``: the exact posterior, skipping training points whose weight is provably negligible.

At low and mid noise the posterior of a query concentrates on a few training points, yet the exact
kernel runs two full GEMMs over every chunk. Here a cheap screen bounds every logit first:

    g_m = x̃·x_m − ‖x_m‖²/2 = x̂·x̂_m + x̃⊥·x_m⊥ − ‖x_m‖²/2,     |x̃⊥·x_m⊥| ≤ ‖x̃⊥‖·‖x_m⊥‖

with x̂ = Pᵀx̃ the coordinates in an orthonormal basis P (D × k, k ≪ D, the top principal
directions of a sample of the data) and ⊥ the rest (Cauchy–Schwarz). So the screen costs a rank-k
GEMM, and gives for each (query, point) an interval [ℓ⁻, ℓ⁺] that contains the logit
ℓ = g/(s²T) + log_weight. A point is dropped only if ℓ⁺ < max ℓ⁻ − τ with τ = ln(C/tol) for a
chunk of C points: its weight is below tol/C times the chunk's best weight, so all dropped points
together carry less than ``tol`` of the posterior mass (the chunks' best weights sum to at most the
total). The kept points — the union over a small group of queries — go through the unchanged exact
``chunk_state``; groups where screening would keep most of the chunk run exact on the whole chunk.
The bound arithmetic is float64 with a relative slack (1e-9) far above its rounding, so the only
differences from ``exact`` are float32 rounding of the kept points and the < ``tol`` dropped mass,
whose bound is reported per query as ``Posterior.dropped_mass``.

How much is skipped depends on the data, not the answer: for data with low-dimensional structure
(natural images) ‖x_m⊥‖ is small and almost everything is skipped at low and mid noise; for
isotropic data little is skipped until the noise is small.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from difflens.errors import DifflensError

PRECISIONS = ("exact", "fast")
SLACK = 1e-9  # relative; float64 rounding of the bound terms is below D·2⁻⁵³ ≈ 1e-12 for D < 10⁴
_BASIS_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_PROJ_CACHE: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
_PROJ_BUDGET = 256 << 20  # bytes of projected chunks kept between calls (per process)


@dataclass
class Fast:
    """The screened kernel step: same call signature and results as ``oracle.chunk_state``.

    tol: bound on the posterior mass dropped per query; rank: basis size k; group: most queries
    that share one exact recompute; dense_fraction: above this kept fraction of a chunk, run exact."""

    tol: float = 1e-16
    rank: int = 64
    group: int = 64
    dense_fraction: float = 0.35
    basis: torch.Tensor | None = field(default=None, repr=False)  # (D, k) float64, orthonormal columns
    token: str = ""  # identifies the basis (dataset hash + k) for the projection cache

    def prepared(self, data) -> Fast:
        """A copy with the basis for this dataset (computed once per process and dataset)."""
        if not 0 < self.tol < 1:
            raise DifflensError(f"fast precision: tol must be in (0, 1), got {self.tol}")
        k = max(1, min(self.rank, data.dim // 2 or 1))
        key = (data.stats.hash, k)
        if key not in _BASIS_CACHE:
            _BASIS_CACHE[key] = principal_basis(data, k)
            while len(_BASIS_CACHE) > 4:
                _BASIS_CACHE.popitem(last=False)
        return replace(self, basis=_BASIS_CACHE[key], token=f"{key[0]}:{k}")

    def __call__(self, queries, scale, x, index, log_weights=None, exclude=None):
        from difflens.oracle import PosteriorState, chunk_state

        if self.basis is None:
            raise DifflensError("fast precision: call prepared(data) before use")
        xh, x_norm, x_perp = self._project(x, index)
        qd = queries.double()
        qh = qd @ self.basis
        q_norm = qd.norm(dim=1)
        q_perp = _perp_norm(q_norm, qh)
        tau = math.log(len(x) / self.tol)
        keep = torch.empty(len(queries), len(x), dtype=torch.bool)
        dropped = torch.empty(len(queries), dtype=torch.float64)
        best = torch.empty(len(queries), dtype=torch.int64)
        for lo in range(0, len(queries), 256):  # bounds for 256 queries at a time (float64, B × C)
            sl = slice(lo, lo + 256)
            g_hat = qh[sl] @ xh.T - 0.5 * x_norm**2
            radius = q_perp[sl, None] * x_perp[None, :] + SLACK * q_norm[sl, None] * x_norm[None, :]
            upper = (g_hat + radius) * scale[sl, None]
            lower = (g_hat - radius) * scale[sl, None]
            if log_weights is not None:
                upper, lower = upper + log_weights.double(), lower + log_weights.double()
            if exclude is not None:
                banned = (exclude[sl, None, :] == index[None, :, None]).any(-1)
                upper, lower = upper.masked_fill(banned, -math.inf), lower.masked_fill(banned, -math.inf)
            floor, top = lower.max(1, keepdim=True)
            best[sl] = top.squeeze(1)
            keep[sl] = upper >= floor - tau
            dropped[sl] = torch.exp(upper - floor).masked_fill(keep[sl], 0.0).nan_to_num(0.0).sum(1)
        # queries with the same best point go together; the group shrinks as the kept sets grow
        kept = float(keep.sum(1).double().mean())
        size = 2 ** int(math.log2(min(self.group, max(4.0, len(x) / (16.0 * kept + 1.0)))))
        order = torch.argsort(best, stable=True)
        parts, dense = [], []
        for lo in range(0, len(queries), size):
            rows = order[lo : lo + size]
            cols = keep[rows].any(0).nonzero().squeeze(1)
            if len(cols) > self.dense_fraction * len(x):
                dense.append(rows)
                continue
            part = chunk_state(
                queries[rows],
                scale[rows],
                x[cols],
                index[cols],
                None if log_weights is None else log_weights[cols],
                None if exclude is None else exclude[rows],
            )
            part.dropped = dropped[rows]
            parts.append((rows, part))
        if dense:
            rows = torch.cat(dense)
            ex = None if exclude is None else exclude[rows]
            part = chunk_state(queries[rows], scale[rows], x, index, log_weights, ex)
            part.dropped = torch.zeros(len(rows), dtype=torch.float64)
            parts.append((rows, part))
        order = torch.cat([r for r, _ in parts])
        merged = _cat_states([p for _, p in parts])
        return PosteriorState(*(getattr(merged, f)[torch.argsort(order)] for f in PosteriorState.__dataclass_fields__))

    def _project(self, x: torch.Tensor, index: torch.Tensor):
        """(coordinates x̂ (C, k), ‖x‖, upper bound of ‖x⊥‖) in float64, cached for contiguous chunks."""
        contiguous = len(index) > 0 and int(index[-1]) - int(index[0]) + 1 == len(index)
        key = (self.token, int(index[0]), len(index)) if contiguous else None
        if key is not None and key in _PROJ_CACHE:
            _PROJ_CACHE.move_to_end(key)
            return _PROJ_CACHE[key]
        xd = x.double()
        xh = xd @ self.basis
        x_norm = xd.norm(dim=1)
        out = (xh, x_norm, _perp_norm(x_norm, xh))
        if key is not None:
            _PROJ_CACHE[key] = out
            while sum(t[0].numel() * 8 + t[1].numel() * 16 for t in _PROJ_CACHE.values()) > _PROJ_BUDGET:
                _PROJ_CACHE.popitem(last=False)
        return out


def _perp_norm(norm: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Upper bound of ‖v⊥‖ = √(‖v‖² − ‖Pᵀv‖²), padded by the slack so rounding cannot undercut it."""
    sq = norm**2
    return torch.sqrt((sq - (coords**2).sum(1)).clamp_min(0.0) + SLACK * sq)


def _cat_states(parts):
    from difflens.oracle import _concat

    return _concat(parts)


def principal_basis(data, k: int, sample: int = 2048, seed: int = 0) -> torch.Tensor:
    """(D, k) float64 orthonormal basis of the top principal directions (uncentred) of a data sample.

    Any orthonormal basis keeps the screen exact; a good one makes ‖x⊥‖ small so more is skipped."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(data.n, size=min(data.n, sample), replace=False))
    a = data.take(idx).double()
    if k >= min(a.shape):
        basis = torch.linalg.svd(a, full_matrices=False).Vh[:k].T
    else:
        torch.manual_seed(seed)
        _, _, v = torch.svd_lowrank(a, q=min(k + 8, min(a.shape)), niter=2)
        basis = v[:, :k]
    q, _ = torch.linalg.qr(basis)
    return q.contiguous()


def resolve(precision, data):
    """The kernel step for ``precision``: None (exact ``chunk_state``), or a prepared ``Fast``."""
    if isinstance(precision, Fast):
        return precision.prepared(data)
    if precision == "exact":
        return None
    if precision == "fast":
        return Fast().prepared(data)
    raise DifflensError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
