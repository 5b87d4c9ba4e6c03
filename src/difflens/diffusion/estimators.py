"""Monte Carlo estimators of the optimal loss J*_x0(s) (Xu et al., ICLR 2026; docs/method.md, "Estimators").

J*_x0(s) = E_{x0, ε} tr Cov[x0 | x0 + s·ε] / D. Every estimator is a tiny class with one call
signature returning the posterior (over all data or a subset) for a batch of noisy queries; all of
them estimate B(s) = E‖E[x0|x̃]‖², and J* = Â − B̂ per query as ‖x_n‖² − ‖μ̂‖², with n the query's
source sample (sources are drawn without replacement, cycling through the data, so the Â part is
exact whenever M is a multiple of N). For ``full`` the reported value is its Rao–Blackwellised form
E[‖x0‖² − ‖μ‖² | x̃] = tr Cov[x0|x̃], lower variance with the same expectation; both are kept.
Adding an estimator is one small class and one row in ``make_estimator``.

Standard errors: the subset estimators share one random subset across a group of queries, which
correlates the group's values, so the independent draws are the groups, not the queries. The
standard error is therefore computed over groups (the cluster formula of ``grouped_stderr``), and
the groups are kept small enough that a level has at least ``MIN_GROUPS`` of them. Groups rather
than a fresh subset per query: each group is one kernel call (a round trip on a dask engine), and
smaller groups also lower the estimate's own variance, which the group standard error accounts for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from difflens.data import Dataset
from difflens.errors import DifflensError
from difflens.kernel import oracle

# At least this many independent groups per level, so the standard error over groups has ≥ 15
# degrees of freedom (its expected value is then within 2 % of the true standard deviation).
MIN_GROUPS = 16


@dataclass
class Full:
    """Posterior over all N points: exact up to Monte Carlo over (source, ε)."""

    rao_blackwell = True

    def group_size(self, queries: int) -> int:
        """Queries that share random draws beyond their own (source, ε): none here, every query is independent."""
        return 1

    def __call__(
        self,
        data: Dataset,
        queries: torch.Tensor,
        sources: np.ndarray,
        sigma: float,
        rng: np.random.Generator,
        **kernel: Any,
    ) -> oracle.Posterior:
        return oracle.posterior(queries, data, sigma, hint=sources, **kernel)


class _Grouped:
    """Subset estimators: one random subset per group of at most ``group`` consecutive queries."""

    group: int
    rao_blackwell = False

    def group_size(self, queries: int) -> int:
        """Queries per shared draw: at most ``group`` (one kernel call each), and small enough for
        ``MIN_GROUPS`` independent groups (docs/method.md, "Estimators": a shared subset correlates
        the group's values, so its standard error is taken over groups)."""
        return max(1, min(self.group, queries // MIN_GROUPS))


@dataclass
class SNIS(_Grouped):
    """Posterior over L random points (fresh per group of queries). High variance at small s."""

    subset: int
    group: int = 32

    def __call__(
        self,
        data: Dataset,
        queries: torch.Tensor,
        sources: np.ndarray,
        sigma: float,
        rng: np.random.Generator,
        **kernel: Any,
    ) -> oracle.Posterior:
        parts = []
        g = self.group_size(len(queries))
        for i in range(0, len(queries), g):
            idx = np.sort(rng.choice(data.n, size=min(self.subset, data.n), replace=False))
            q, src = queries[i : i + g], sources[i : i + g]
            parts.append(oracle.posterior(q, data, sigma, include=idx, hint=src, **kernel))
        return _cat(parts)


@dataclass
class CDOL(_Grouped):
    """Source + L−1 random points, the source's kernel weight divided by C (C = 1: DOL; C → ∞: SNIS)."""

    subset: int
    C: float = 1.0
    group: int = 32

    def __call__(
        self,
        data: Dataset,
        queries: torch.Tensor,
        sources: np.ndarray,
        sigma: float,
        rng: np.random.Generator,
        **kernel: Any,
    ) -> oracle.Posterior:
        scale = 1.0 / sigma**2
        parts = []
        g = self.group_size(len(queries))
        for i in range(0, len(queries), g):
            q, src = queries[i : i + g], sources[i : i + g]
            drawn, leave_out = _others_per_query(rng, data.n, self.subset, src)
            xs = data.take(src)
            logit = ((q.double() * xs.double()).sum(1) - 0.5 * (xs.double() ** 2).sum(1)) * scale
            extra = oracle.PosteriorState.of_points(logit - math.log(self.C), xs, torch.from_numpy(src))
            post = oracle.posterior(q, data, sigma, include=drawn, exclude=leave_out, extra=extra, **kernel)
            parts.append(post)
        return _cat(parts)


def _others_per_query(
    rng: np.random.Generator, n: int, size: int, sources: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One shared draw of ``size`` points, and per query the one to leave out, so that each query sees
    ``size`` − 1 points drawn uniformly from the data without its own source (which is added apart)."""
    drawn = rng.choice(n, size=size, replace=False)
    leave_out = np.where(np.isin(sources, drawn), sources, drawn[-1])
    return np.sort(drawn), leave_out


def _cat(parts: list[oracle.Posterior]) -> oracle.Posterior:
    return oracle.Posterior(*(torch.cat([getattr(p, f) for p in parts]) for f in oracle.Posterior.__dataclass_fields__))


ESTIMATORS = ("full", "snis", "dol", "cdol")
Estimator = Full | SNIS | CDOL


def make_estimator(name: str, n: int, subset: int | None = None, C: float | None = None) -> Estimator:
    """An estimator by name; ``subset`` L defaults to min(N, 256), cdol's C to 4N/L (Xu et al.)."""
    if name not in ESTIMATORS:
        raise DifflensError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    if name == "full":
        return Full()
    L = min(n, 256) if subset is None else subset
    if not 2 <= L <= n and not (name == "snis" and 1 <= L <= n):
        raise DifflensError(f"--subset must be between 2 and N = {n} for {name}, got {L}")
    if name == "snis":
        return SNIS(L)
    if name == "dol":
        return CDOL(L, 1.0)
    C = 4.0 * n / L if C is None else C
    if not C > 0:
        raise DifflensError(f"--C must be > 0, got {C}")
    return CDOL(L, float(C))


def sources_for_level(n: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """M source indices drawn without replacement, cycling through all N (stratified Â)."""
    reps = -(-samples // n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:samples]


def grouped_stderr(values: torch.Tensor, group: int) -> float:
    """Standard error of the mean of ``values`` whose consecutive runs of ``group`` share random draws.

    Cluster formula: se² = G/(G−1) · Σ_g (Σ_{i∈g} (y_i − ȳ))² / M² over the G groups (the last may be
    shorter); with equal groups it is the variance of the group means over G, with ``group`` = 1 the
    usual s.d./√M. NaN with fewer than two groups."""
    return cluster_stderr(values, torch.arange(values.numel()) // group)


def cluster_stderr(values: torch.Tensor, labels: torch.Tensor) -> float:
    """The cluster formula of ``grouped_stderr`` with explicit group labels 0…G−1 (one per value), for
    values gathered in batches whose groups differ in size. NaN with fewer than two groups."""
    y = values.double().reshape(-1)
    m = len(y)
    groups = int(labels.max()) + 1 if m else 0
    if groups < 2:
        return math.nan
    sums = torch.zeros(groups, dtype=torch.float64).index_add_(0, labels, y - y.mean())
    return float(torch.sqrt(groups / (groups - 1) * (sums**2).sum()) / m)


def level_rng(seed: int, level: int) -> np.random.Generator:
    """Each level has its own stream, so a resumed run reproduces the levels it recomputes."""
    return np.random.default_rng([seed, level])


# Adaptive queries per level (``target_se``): the first batch and the smallest later batch.
MIN_ADAPTIVE_QUERIES = 32


def estimate_level(
    data: Dataset,
    sigma: float,
    estimator: Estimator,
    samples: int,
    rng: np.random.Generator,
    reduce_dims: int,
    chunk_size: int | None = None,
    target_se: float | None = None,
    min_samples: int = MIN_ADAPTIVE_QUERIES,
    **kernel: Any,
) -> tuple[float, float, float, dict]:
    """(J*_x0, stderr, paired J*_x0, concentration stats) at noise level ``sigma``.

    With ``target_se`` = None: ``samples`` queries in one batch. With a relative target REL, queries
    come in batches (first ``min_samples``) until stderr ≤ REL·J*_x0 or ``samples`` are used
    (docs/method.md, "Adaptive queries per level"); the sources are still the first queries of one
    stratified without-replacement draw of ``samples``, and every draw comes from ``rng`` in order,
    so a level is reproducible. ``conc["samples"]`` is the number of queries used.

    ``kernel`` options (engine, precision, device) go to ``oracle.posterior``; results come back to the CPU."""
    src = sources_for_level(data.n, samples, rng)
    kernel = {"chunk_size": chunk_size, **kernel}
    if target_se is None:
        values, paired, post = _query_batch(data, sigma, estimator, src, rng, reduce_dims, kernel)
        stderr = grouped_stderr(values, estimator.group_size(len(values)))
    else:
        parts, labels, used, stderr = [], [], 0, math.nan
        size = min(min_samples, samples)
        while True:
            part = _query_batch(data, sigma, estimator, src[used : used + size], rng, reduce_dims, kernel)
            first = int(labels[-1].max()) + 1 if labels else 0
            labels.append(first + torch.arange(size) // estimator.group_size(size))
            parts.append(part)
            used += size
            values = torch.cat([p[0] for p in parts])
            stderr = cluster_stderr(values, torch.cat(labels))
            goal = target_se * float(values.mean())
            if used >= samples or stderr <= goal:
                break
            # the count the current spread asks for (se ∝ 1/√M): one more batch when the estimate holds
            needed = used * (stderr / goal) ** 2 if goal > 0 and math.isfinite(stderr) else 2 * used
            size = int(min(samples - used, max(min_samples, math.ceil(needed) - used)))
        paired = torch.cat([p[1] for p in parts])
        post = _cat([p[2] for p in parts])
    conc = {
        "samples": len(values),
        "mean_max_weight": float(post.max_weight.mean()),
        "mean_eff_count": float(post.eff_count.mean()),
        "max_dropped_mass": float(post.dropped_mass.max()),
    }
    return float(values.mean()), stderr, float(paired.mean()), conc


def _query_batch(
    data: Dataset,
    sigma: float,
    estimator: Estimator,
    src: np.ndarray,
    rng: np.random.Generator,
    reduce_dims: int,
    kernel: dict,
) -> tuple[torch.Tensor, torch.Tensor, oracle.Posterior]:
    """Per-query values (Rao–Blackwellised or paired), paired values and the posterior of one batch of
    queries noised from ``src``: the noise, then the estimator's own draws, from ``rng``."""
    x0 = data.take(src)
    noise = torch.from_numpy(rng.standard_normal(x0.shape, dtype=np.float32))
    queries = x0 + float(sigma) * noise
    post = estimator(data, queries, src, float(sigma), rng, **kernel)
    paired = ((x0.double() ** 2).sum(1) - (post.mean.cpu() ** 2).sum(1)) / reduce_dims
    values = post.trace_cov.cpu() / reduce_dims if estimator.rao_blackwell else paired
    return values, paired, post


def critical_sigma(
    sigmas: Sequence[float] | np.ndarray,
    values_x0: Sequence[float] | np.ndarray,
    plateau: float,
    fraction: float = 0.01,
) -> float | None:
    """Smallest s where J*_x0 reaches ``fraction`` of the plateau (log-interpolated between levels;
    docs/method.md, "Critical noise level"). Lives here, under analysis and schedules, which both need it."""
    if plateau <= 0:
        return None
    level = fraction * plateau
    for i, v in enumerate(values_x0):
        if v >= level:
            if i == 0:
                return float(sigmas[0])
            v0, v1 = values_x0[i - 1], v
            f = (level - v0) / (v1 - v0) if v1 > v0 else 0.0
            return float(math.exp(math.log(sigmas[i - 1]) + f * (math.log(sigmas[i]) - math.log(sigmas[i - 1]))))
    return None
