"""The exact kernel: per-chunk posterior partials and their exact merge (docs/method.md, "The kernel").

For queries x̃ (VE form, x̃ = x0 + s·ε) and training points x_m, the posterior over the training set is
``w_m = softmax_m(−‖x̃ − x_m‖² / (2 s² T) + log_weight_m)``. Logits come from one float32 GEMM per
data chunk, the weighted mean from a second; per query a running state (max logit, Σexp, mean, M2,
Σexp², argmax) merges chunk results exactly — online log-sum-exp plus Chan et al.'s parallel
variance merge — in float64. Any chunk order or partition of the data gives the same answer to
rounding. Within a chunk, the mean and M2 are taken relative to each query's best point in the
chunk, so the trace of the posterior covariance does not cancel catastrophically when one point
dominates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from difflens.errors import DifflensError


@dataclass
class WorkTally:
    """Work done while a ``counting_work`` block ran: (query, point) pairs the exact kernel computed,
    and data rows the fast screen quantized (rows of a chunk not found in its cache)."""

    pairs: int = 0
    quantized_rows: int = 0


_TALLIES: list[WorkTally] = []

# One chunk's partial posterior: ``chunk_state`` or a ``screening.Fast`` (same call signature).
Step = Callable[..., "PosteriorState"]


@contextmanager
def counting_work() -> Iterator[WorkTally]:
    """Count the work done inside the block (tests and benchmarks use it to see what
    ``precision="fast"`` skipped, and whether its quantized chunks came from the cache)."""
    tally = WorkTally()
    _TALLIES.append(tally)
    try:
        yield tally
    finally:
        _TALLIES.remove(tally)


def _count(pairs: int = 0, quantized_rows: int = 0) -> None:
    for tally in _TALLIES:
        tally.pairs += pairs
        tally.quantized_rows += quantized_rows


@dataclass
class Posterior:
    """Per-query posterior statistics (B queries, D dims). ``mean`` is E[x0 | x̃]."""

    mean: torch.Tensor  # (B, D) float64
    trace_cov: torch.Tensor  # (B,) tr Cov[x0 | x̃]
    log_norm: torch.Tensor  # (B,) log Σ_m exp(−‖x̃ − x_m‖²/(2s²T) + log_weight_m)
    max_weight: torch.Tensor  # (B,) largest posterior weight
    eff_count: torch.Tensor  # (B,) 1 / Σ w²
    argmax: torch.Tensor  # (B,) int64 index of the most probable training point
    dropped_mass: torch.Tensor | None = None  # (B,) bound on the weight skipped by precision="fast" (0: exact)

    def select(self, idx: torch.Tensor | slice) -> Posterior:
        """The statistics of the queries ``idx``."""
        return Posterior(
            self.mean[idx],
            self.trace_cov[idx],
            self.log_norm[idx],
            self.max_weight[idx],
            self.eff_count[idx],
            self.argmax[idx],
            None if self.dropped_mass is None else self.dropped_mass[idx],
        )


@dataclass
class PosteriorState:
    """Mergeable partial statistics of a posterior over part of the data (all float64 but argmax).

    ``log_max`` is the largest logit seen, ``total`` = Σ exp(logit − log_max), ``m2`` =
    Σ exp(logit − log_max)·‖x_m − mean‖², ``sq_total`` = Σ exp(2(logit − log_max)). Rows that saw
    no point have total = 0 (and log_max = −inf). Fast precision only: ``log_dropped`` bounds
    log Σ exp(logit) over the points that were skipped, ``log_floor`` is an exact (float64) lower
    bound on the largest logit; their difference bounds the skipped share of the posterior."""

    log_max: torch.Tensor
    total: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor
    sq_total: torch.Tensor
    argmax: torch.Tensor
    log_dropped: torch.Tensor | None = None
    log_floor: torch.Tensor | None = None

    @classmethod
    def empty(cls, batch: int, dim: int, device: torch.device | None = None) -> PosteriorState:
        z = torch.zeros(batch, dtype=torch.float64, device=device)
        return cls(
            torch.full((batch,), -math.inf, dtype=torch.float64, device=device),
            z,
            torch.zeros(batch, dim, dtype=torch.float64, device=device),
            z.clone(),
            z.clone(),
            torch.full((batch,), -1, dtype=torch.int64, device=device),
        )

    @classmethod
    def of_points(cls, logits: torch.Tensor, points: torch.Tensor, index: torch.Tensor) -> PosteriorState:
        """The state of one point per query (e.g. the source sample of the DOL estimator)."""
        ones = torch.ones(len(logits), dtype=torch.float64)
        return cls(logits.double(), ones, points.double(), torch.zeros_like(ones), ones.clone(), index.long())

    def merge(self, other: PosteriorState) -> PosteriorState:
        """Exact combination of two partials over disjoint parts of the data (associative)."""
        top = torch.maximum(self.log_max, other.log_max)
        safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        fa = torch.exp(self.log_max - safe).nan_to_num(0.0)
        fb = torch.exp(other.log_max - safe).nan_to_num(0.0)
        wa, wb = self.total * fa, other.total * fb
        total = wa + wb
        share_b = torch.where(total > 0, wb / total.clamp_min(1e-300), torch.zeros_like(total))
        delta = other.mean - self.mean
        mean = torch.addcmul(self.mean, share_b[:, None], delta)
        m2 = self.m2 * fa + other.m2 * fb + torch.linalg.vector_norm(delta, dim=1) ** 2 * wa * share_b
        argmax = torch.where(other.log_max > self.log_max, other.argmax, self.argmax)
        skipped: list[torch.Tensor | None] = [None, None]
        if self.log_dropped is not None or other.log_dropped is not None:
            skipped = [
                torch.logaddexp(or_none(self.log_dropped, total), or_none(other.log_dropped, total)),
                torch.maximum(or_none(self.log_floor, total), or_none(other.log_floor, total)),
            ]
        sq_total = self.sq_total * fa**2 + other.sq_total * fb**2
        return PosteriorState(top, total, mean, m2, sq_total, argmax, *skipped)

    def finalize(self, query_sq_norm: torch.Tensor, scale: torch.Tensor) -> Posterior:
        """Posterior statistics; ``scale`` = 1/(s²T) per query turns logits into log densities."""
        if (self.total <= 0).any():
            raise DifflensError("a query has no training point left to put weight on (all excluded)")
        dropped = torch.zeros_like(self.total)
        if self.log_dropped is not None:
            assert self.log_floor is not None, "the fast path sets log_dropped and log_floor together"
            dropped = torch.exp(self.log_dropped - self.log_floor).nan_to_num(0.0)
        return Posterior(
            mean=self.mean,
            trace_cov=(self.m2 / self.total).clamp_min(0.0),
            log_norm=self.log_max + torch.log(self.total) - 0.5 * query_sq_norm * scale,
            max_weight=1.0 / self.total,
            eff_count=self.total**2 / self.sq_total,
            argmax=self.argmax,
            dropped_mass=dropped,
        )


def or_none(log_value: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.full_like(like, -math.inf) if log_value is None else log_value


def chunk_state(
    queries: torch.Tensor,
    scale: torch.Tensor,
    x: torch.Tensor,
    index: torch.Tensor,
    log_weights: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    sq_norm: torch.Tensor | None = None,
) -> PosteriorState:
    """Partial posterior of queries (B, D) over one data chunk x (C, D) with global row ``index``.

    scale (B,) = 1/(s²T); log_weights (C,) are added to the logits; exclude (B, k) lists global
    indices each query must ignore (−1 for none); sq_norm (C,) = ‖x‖², computed when not given."""
    if sq_norm is None:
        sq_norm = row_sq_norms(x)
    _count(len(queries) * len(x))
    g = torch.addmm(sq_norm[None, :], queries, x.T, beta=-0.5)  # (B, C) = x̃·x − ‖x‖²/2, one GEMM
    if exclude is not None:
        g.masked_fill_((exclude[:, None, :] == index[None, :, None]).any(-1), -math.inf)
    return _weighed(g, scale, x, index, log_weights, sq_norm)


def gathered_state(
    queries: torch.Tensor,
    scale: torch.Tensor,
    x: torch.Tensor,
    index: torch.Tensor,
    cols: torch.Tensor,
    sq_norm: torch.Tensor,
    log_weights: torch.Tensor | None = None,
    buffer: torch.Tensor | None = None,
) -> PosteriorState:
    """``chunk_state`` where each query sees only its own rows of the chunk: cols (B, K), −1 = none.

    For queries whose posterior sits on a few points (``precision="fast"``): the rows are gathered
    per query, so the work is B·K·D instead of B·C·D. ``buffer`` (≥ B·K·D floats, reused across
    calls) saves the page faults of a fresh allocation, which would cost more than the gather."""
    valid = cols >= 0
    _count(cols.numel())
    cols = cols.clamp_min(0)
    flat = cols.reshape(-1)
    out = None if buffer is None else buffer[: flat.numel() * x.shape[1]].view(-1, x.shape[1])
    xg = torch.index_select(x, 0, flat, out=out).view(*cols.shape, x.shape[1])  # (B, K, D)
    sq = sq_norm[cols]
    g = torch.baddbmm(sq[:, :, None], xg, queries[:, :, None], beta=-0.5).squeeze(2).masked_fill_(~valid, -math.inf)
    return _weighed(g, scale, xg, index[cols], None if log_weights is None else log_weights[cols], sq)


def _weighed(g, scale, x, index, log_weights, sq_norm) -> PosteriorState:
    """The state from logits g (B, C) = x̃·x − ‖x‖²/2 (−inf: excluded) over rows x: shared (C, D)
    or per query (B, C, D), with index, log_weights and sq_norm shaped (C,) or (B, C) alike."""
    shared = x.ndim == 2
    g_max, best = g.max(1, keepdim=True)
    finite = torch.isfinite(g_max)
    g_max.masked_fill_(~finite, 0.0)
    z = g.sub_(g_max).mul_(scale[:, None].float())  # in place: g is not needed any more
    z_max = torch.zeros_like(g_max)
    if log_weights is not None:
        z.add_(log_weights.float())
        z_max, best = z.max(1, keepdim=True)
        z_max.masked_fill_(~torch.isfinite(z_max), 0.0)
        z.sub_(z_max)
    # weights below e^-87 become exactly 0: subnormal floats would slow the second GEMM many times over
    p = torch.threshold_(z, -87.0, -math.inf).exp_()  # best point has p = 1 (0 everywhere for a fully excluded row)
    p_rest = p.scatter_(1, best, 0.0)  # in place: the dominant point (p = 1) is handled apart, in float64
    best = best.squeeze(1)
    rest_total = p_rest.sum(1).double()  # summed without the 1, so tiny weights keep their precision
    total = rest_total + finite.squeeze(1).double()
    sq_total = torch.linalg.vector_norm(p_rest, dim=1).double().square_() + finite.squeeze(1).double()
    rest = (p_rest @ x if shared else torch.bmm(p_rest[:, None], x).squeeze(1)).double()  # (B, D) second GEMM
    pick = (
        best if shared else (torch.arange(len(best), device=best.device), best)
    )  # each query's best point in the chunk
    anchor = x[pick].double()
    offset = torch.addcmul(rest, rest_total[:, None], anchor, value=-1.0)  # Σ p_m (x_m − anchor)
    spread = (  # Σ p_m ‖x_m − anchor‖²
        (p_rest @ sq_norm if shared else torch.linalg.vecdot(p_rest, sq_norm)).double()
        + rest_total * sq_norm[pick].double()
        - 2.0 * torch.linalg.vecdot(anchor, rest)
    ).clamp_min(0.0)
    safe_total = total.clamp_min(1e-300)
    mean = anchor.addcdiv_(offset, safe_total[:, None])
    m2 = (spread - torch.linalg.vector_norm(offset, dim=1) ** 2 / safe_total).clamp_min(0.0)
    log_max = (g_max.squeeze(1).double() * scale + z_max.squeeze(1).double()).masked_fill(~finite.squeeze(1), -math.inf)
    argmax = torch.where(finite.squeeze(1), index[pick], torch.full_like(best, -1))
    return PosteriorState(log_max, total, mean, m2, sq_total, argmax)


def row_sq_norms(x: torch.Tensor) -> torch.Tensor:
    """‖x_m‖² per row in float32, one pass with no (C, D) temporary."""
    return torch.linalg.vector_norm(x, dim=1).square_()


def concat_states(parts: list[PosteriorState]) -> PosteriorState:
    if len(parts) == 1:
        return parts[0]
    skipped = ("log_dropped", "log_floor")
    fields = [f for f in PosteriorState.__dataclass_fields__ if f not in skipped]
    out = PosteriorState(*(torch.cat([getattr(p, f) for p in parts]) for f in fields))
    if any(p.log_dropped is not None for p in parts):
        for f in skipped:
            setattr(out, f, torch.cat([or_none(getattr(p, f), p.total) for p in parts]))
    return out
