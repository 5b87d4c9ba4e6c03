"""``precision="fast"``: the exact posterior, skipping training points whose weight is provably negligible.

At low and mid noise the posterior of a query concentrates on a few training points, yet the exact
kernel runs two full float32 GEMMs over every chunk. Here one int8 GEMM screens every point first.
Each row v (query or training point) is quantized to int8 with its own scale, v = a·V + r (|V| ≤
127, ‖r‖ bounded exactly); the int8 GEMM accumulates exactly in int32, so the distance between the
quantized rows, d̂ = ‖a·A − b·X‖, is known, and by the triangle inequality the true distance is

    d ≥ d̂ − ‖r_query‖ − ‖r_point‖.

A distance bound is far tighter than a bound on the dot product (its slack scales with d, not with
‖x‖). The screen takes each query's most probable point by the int8 logits, computes its logit ℓ*
exactly, and drops every point whose logit is provably below ℓ* − τ, i.e. whose distance exceeds R,
R² = ‖x̃‖² + 2s²T(max log_weight + τ − ℓ*). A caller that knows a point of high weight elsewhere
(``oracle.posterior(hint=…)``, e.g. the training point a query was noised from) passes its exact
logit as a ``floor`` for ℓ*, so chunks far from the query skip nearly everything; without hints, the
exact best logits of the chunks already folded serve alike (``running_floor``). With τ = ln(N/tol)
for N training points the dropped points together carry less than ``tol`` of the posterior mass.
The bound itself, Σ over skipped points of e^(ℓ* − τ) against the exact ℓ* (so float32 rounding
cannot break it), is reported per query as ``Posterior.dropped_mass``. The test runs as one float32
pass over the int8 GEMM's output, padded by a relative slack (1e-6) well above its own rounding.

The kept points are then computed exactly: queries that keep few points gather them (work ∝ kept
points, not C), the others run the exact kernel in groups over the union of their kept points, or
over the whole chunk — the split that costs least by a per-pair cost model. So ``fast`` differs
from ``exact`` only by float32 rounding of the kept points and the < ``tol`` dropped mass. What is
skipped depends on the data and noise: at large noise every point keeps real weight, and a probe of
1/32 of the queries tells the screen to step aside (exact, plus 1/32 of a screen).

Why int8 and not bfloat16: on CPUs without AMX, bf16 GEMMs run slower than fp32 while int8
(VNNI) runs several times faster; ``benchmarks/bench_scale.py`` measures all of them. The int8/fp32
ratio varies across CPUs (1.8× to 7.4× on x86), so the cost model's constants are measured once per
process (``calibrated_costs``, a few ms); they steer speed, never results. The screen runs on the
CPU only: on another device the step is the exact kernel (CUDA's int8 GEMM has shape constraints,
MPS has none).
"""

from __future__ import annotations

import functools
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields, replace
from typing import NamedTuple

import torch

from difflens.errors import DifflensError
from difflens.kernel import memory
from difflens.kernel.source import RowSource
from difflens.kernel.state import PosteriorState, _count, chunk_state, gathered_state, row_sq_norms

PRECISIONS = ("exact", "fast")
SLACK = 1e-6  # relative slack on the float32 screen pass: it rounds by a few 2⁻²⁴ of its terms' magnitudes at most
TILE = 256  # queries screened at a time (a TILE × C float32 buffer)
PROBE = 32  # fewest queries in the first tile, which decides whether screening pays
BLOCK = 64  # columns per block of the screen's scans (chunks are padded to whole blocks)
GATHER_BYTES = 64 << 20  # rows gathered per call to ``gathered_state``
_CACHE: OrderedDict[tuple, tuple[torch.Tensor, ...]] = OrderedDict()
# quantized chunks kept between calls: ≥ 512 MB, a quarter of the float32 rows' resident budget (int8)
_CACHE_BUDGET = max(512 << 20, memory.resident_budget() // 4)


def quantize(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows v (n, D) → (int8 V, scale a, ‖a·V‖², bound on ‖v − a·V‖), all but V float64.

    Runs in float32: w = v/a and a·(w − V) are each rounded by 2⁻²⁴ relative, so the residual
    is off by at most 2⁻²³·(‖v‖ + ‖r‖) ≤ 2⁻²¹·√D·127a, added to its norm; the float32 sum of
    squares of w − V is off by at most D·2⁻²⁴ relative, covered by 1e-3 for D below 2¹⁴. ‖V‖² is
    summed exactly: 1 024 squares of integers ≤ 127 add up to less than 2²⁴."""
    v = v.float()
    a = (v.abs().amax(1) / 127.0).clamp_min(2.0**-60)  # floor: 1/a stays finite
    w = v * (1.0 / a)[:, None]
    q = torch.round(w)
    res = torch.linalg.vector_norm(w.sub_(q), dim=1).double() * (1 + 1e-3 * math.ceil(v.shape[1] / 2**14))
    sq = sum(torch.linalg.vecdot(q[:, i : i + 1024], q[:, i : i + 1024]).double() for i in range(0, v.shape[1], 1024))
    a = a.double()
    return q.to(torch.int8), a, sq * a * a, a * (res + 2.0**-21 * math.sqrt(v.shape[1]) * 127.0)


def quantize_levels(
    v: torch.Tensor, levels: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows v (n, D) in one or two int8 levels, the second quantizing the first's residual:
    (codes (levels·n, D) int8, a_l/a_1 per level (levels, n), a_1, ‖Q‖², ‖V_1‖a_1 + ‖V_2‖a_2, bound on
    ‖v − Q‖) with Q = Σ_l a_l·V_l, all float64 but the codes. The residual is computed in float32,
    off by at most 2⁻²³·(‖v‖ + ‖r‖) (covered with 2⁻²²)."""
    v = v.float()
    v1, a1, sq, res = quantize(v)
    if levels == 1:
        return v1, torch.ones(1, len(v), dtype=torch.float64), a1, sq, sq.sqrt(), res
    r = v - a1.float()[:, None] * v1.float()
    v2, a2, sq2, res2 = quantize(r)
    q = a1[:, None] * v1.double() + a2[:, None] * v2.double()  # exact products, one rounding per sum
    norms = torch.linalg.vector_norm(v, dim=1, dtype=torch.float64) + torch.linalg.vector_norm(
        r, dim=1, dtype=torch.float64
    )
    res = res2 + 2.0**-22 * norms
    return (
        torch.cat([v1, v2]),
        torch.stack([torch.ones_like(a1), a2 / a1]),
        a1,
        q.square().sum(1),
        sq.sqrt() + sq2.sqrt(),
        res,
    )


class Costs(NamedTuple):
    """The cost model's constants, in (query, point) pairs of the exact kernel (see ``Fast.plan``)."""

    gather: float
    group: float
    call: float
    screen: float


@dataclass
class Fast:
    """The screened kernel step: same call signature and results as ``state.chunk_state``.

    tol: bound on the posterior mass dropped per query; gather_cost, group_cost, call_cost: the
    cost model of ``plan``, and screen_cost: one int8 level's screen in exact passes (None: measured
    at run time by ``calibrated_costs``; they steer speed, never results); dense_fraction:
    when the queries (or a first probe of them) keep more than this fraction of the chunk, the
    whole batch runs exact; query_levels: int8 levels per query (see ``screen``); running_floor: each
    chunk's exact best logits become the floor of the chunks after it (``fold.posterior_state``), so
    calls without hints prune too (results change only within the dropped-mass bound)."""

    tol: float = 1e-16
    gather_cost: float | None = None
    group_cost: float | None = None
    call_cost: float | None = None
    dense_fraction: float = 0.15
    query_levels: int = 0  # 1, 2, or 0: the probe picks
    screen_cost: float | None = None
    running_floor: bool = True
    token: str = ""  # identifies the dataset for the cache of quantized chunks
    rows: int = 0  # training points in all (the dropped mass of every chunk adds up); 0: this chunk's
    costs: Costs = field(init=False, repr=False, compare=False)  # the *_cost fields, resolved

    def __post_init__(self) -> None:
        unset = [f.name for f in fields(self) if f.name.endswith("_cost") and getattr(self, f.name) is None]
        for name in unset:
            setattr(self, name, calibrated_costs()[name])
        self.costs = Costs(*(float(getattr(self, f"{name}_cost")) for name in Costs._fields))

    def prepared(self, data: RowSource) -> Fast:
        """A copy bound to this dataset (its hash keys the cache of quantized chunks)."""
        if not 0 < self.tol < 1:
            raise DifflensError(f"fast precision: tol must be in (0, 1), got {self.tol}")
        return replace(self, token=data.fingerprint, rows=data.n)

    uses_floor = True  # ``fold.posterior_state`` passes it a lower bound on each query's largest logit

    def __call__(
        self,
        queries: torch.Tensor,
        scale: torch.Tensor,
        x: torch.Tensor,
        index: torch.Tensor,
        log_weights: torch.Tensor | None = None,
        exclude: torch.Tensor | None = None,
        sq_norm: torch.Tensor | None = None,
        floor: torch.Tensor | None = None,
    ) -> PosteriorState:

        # no screen where int32 accumulation could overflow, or for one column (torch 2.13's _int_mm is wrong there)
        # nor for points of weight 0 (log_weight −inf): the screen's arithmetic assumes finite values
        if not 2 <= x.shape[1] < 2**31 / 127**2 or (log_weights is not None and not log_weights.isfinite().all()):
            return chunk_state(queries, scale, x, index, log_weights, exclude, sq_norm)
        points = self._quantized(x, index)
        pairs = self.screen(queries, scale, x, index, log_weights, exclude, floor, points)
        if pairs is None or len(pairs[0]) > self.dense_fraction * len(queries) * len(x):
            return chunk_state(queries, scale, x, index, log_weights, exclude, sq_norm)
        sq_norm = row_sq_norms(x) if sq_norm is None else sq_norm
        order = queries @ points[4]  # along the chunk's main direction, for ``plan``
        return self.recompute(*pairs, queries, scale, x, index, log_weights, exclude, sq_norm, order)

    def screen(
        self,
        queries: torch.Tensor,
        scale: torch.Tensor,
        x: torch.Tensor,
        index: torch.Tensor,
        log_weights: torch.Tensor | None = None,
        exclude: torch.Tensor | None = None,
        floor: torch.Tensor | None = None,
        points: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(query, point) index pairs each query must keep, row-major, and each query's reference
        logit ℓ (exact; every skipped point's logit is below ℓ − τ); None when a first probe of the
        queries keeps more than ``dense_fraction`` of the chunk. ``floor`` (B,): known lower bounds
        on each query's largest logit over all the data (e.g. from a point elsewhere); ``points``:
        the chunk's ``_quantized`` form, when already at hand.

        The probe also picks the queries' int8 levels (unless ``query_levels`` is set): two when
        the cost model says the finer screen saves more recompute than it costs, as at high noise,
        where the rounding of the noisy query itself dominates the bound."""
        out, lo, levels = [], 0, self.query_levels or 1
        points = self._quantized(x, index) if points is None else points  # padded to whole blocks
        if log_weights is not None:
            log_weights = torch.cat([log_weights.double(), log_weights.new_zeros(len(points[0]) - len(x))])
        while lo < len(queries):
            sl = slice(lo, lo + (TILE if lo else min(TILE, max(PROBE, len(queries) // 32))))
            args = (queries[sl], scale[sl], x, points, index, log_weights)
            ex, fl = (None if t is None else t[sl] for t in (exclude, floor))
            rows, cols, ref = self._screen_tile(*args, ex, fl, levels)
            coarse = self._cost(rows, len(ref), len(x), 1) if lo == 0 and not self.query_levels else 0.0
            if coarse > 2 * self.costs.screen:  # a second level could pay: try it on the probe
                finer = self._screen_tile(*args, ex, fl, 2)
                if self._cost(finer[0], len(ref), len(x), 2) < coarse:
                    (rows, cols, ref), levels = finer, 2
            if lo == 0 and len(queries) > len(ref) and len(rows) > self.dense_fraction * len(ref) * len(x):
                return None
            out.append((rows + lo, cols, ref))
            lo += len(ref)
        rows, cols, ref = (torch.cat(part) for part in zip(*out, strict=True))
        return rows, cols, ref

    def _screen_tile(self, queries, scale, x, points, index, lw, exclude, floor, levels: int):
        """``screen`` for one tile of queries, quantized with one or two int8 levels; ``points``:
        the chunk's ``_quantized`` form, ``lw`` its log-weights (float64, padded alike)."""
        xq, xa, x_sq, x_res, _ = points
        tau, s, n = self._tau(len(x)), scale, len(queries)
        codes, weights, a, q_sq, q_mag, q_res = quantize_levels(queries, levels)
        ia = 1.0 / a
        # int8 logit / (a·s): t = Σ_l (a_l/a)·b·G_l − ‖b·X‖²/(2a) (+ log_weight/(a·s)); argmax: probable best
        g = torch._int_mm(codes, xq.T)
        t = torch.mul(g[:n], xa.float())
        for level in range(1, levels):
            t.add_(torch.mul(g[level * n : (level + 1) * n], xa.float()).mul_(weights[level].float()[:, None]))
        u, v = [-0.5 * ia], [x_sq]
        if lw is not None:
            u, v = [*u, ia / s], [*v, lw]
        t.addmm_(torch.stack(u, 1).float(), torch.stack(v).float())
        t[:, len(x) :] = -math.inf
        if exclude is not None:
            t[:, : len(x)].masked_fill_((exclude[:, None, :] == index[None, :, None]).any(-1), -math.inf)
        blocks = t.view(n, -1, BLOCK)
        top = blocks.amax(2).argmax(1)
        best = top * BLOCK + blocks[torch.arange(n), top].argmax(1)
        # reference: the larger of the floor and the exact logit of the probable best point
        y = queries.double()
        y2 = y.square().sum(1)
        d2 = (y - x[best.clamp_max(len(x) - 1)].double()).square_().sum(1)
        ref = 0.5 * (y2 - d2) * s + (0.0 if lw is None else lw[best])
        ref = ref.masked_fill_(t[torch.arange(n), best] == -math.inf, -math.inf)  # all excluded
        ref = ref if floor is None else torch.maximum(ref, floor)
        # a point beyond distance R has logit < ref − tau (log_weight_m ≤ max covers every m)
        lw_max = 0.0 if lw is None else float(lw[: len(x)].max())
        radius = (y2 + 2.0 * (lw_max + tau - ref) / s).clamp_min(0.0).sqrt()
        w = (radius + q_res) * (1 + 1e-9)  # R + ‖r_query‖
        c = 0.5 * ia * (q_sq - w * w)
        # keep ⟺ d̂ ≤ w + ‖r_point‖ ⟺ Qx̃·b·X/a + (w/a)·‖r_point‖ − (‖b·X‖² − ‖r_point‖²)/(2a) ≥ c,
        # written as t + U·V; the last three rows of U·V are the float32 slack
        u = [w * ia, 0.5 * ia, SLACK * ia * q_mag, SLACK * w * ia, 0.5 * SLACK * ia]
        v = [x_res, x_res.square(), x_sq.sqrt(), x_res, x_sq + x_res.square()]
        if lw is not None:
            u, v = [*u, -ia / s, 2 * SLACK * ia / s], [*v, lw, lw.abs()]
        t.addmm_(torch.stack(u, 1).float(), torch.stack(v).float())
        # (a finite threshold: −inf marks excluded and padding columns, never kept)
        rows, cols = _at_least(blocks, (c - SLACK * c.abs()).float().clamp_min(-torch.finfo(torch.float32).max))
        return rows, cols, ref

    def recompute(
        self,
        rows: torch.Tensor,
        cols: torch.Tensor,
        ref: torch.Tensor,
        queries: torch.Tensor,
        scale: torch.Tensor,
        x: torch.Tensor,
        index: torch.Tensor,
        log_weights: torch.Tensor | None,
        exclude: torch.Tensor | None,
        sq_norm: torch.Tensor,
        order: torch.Tensor,
    ) -> PosteriorState:
        """The exact state over each query's kept points (who computes how: ``plan``, by ``order``)."""

        size, tau = len(x), self._tau(len(x))
        counts = torch.bincount(rows, minlength=len(queries))
        gathered, groups = self.plan(rows, cols, counts, order, size)
        kernel = (queries, scale, x, index, log_weights, sq_norm)
        parts = [*_gathered_parts(gathered, rows, cols, counts, *kernel), *_group_parts(groups, exclude, *kernel)]
        for members, part, skipped in parts:
            part.log_dropped = torch.log(skipped.double()) + ref[members] - tau  # each skipped logit < ref − τ
            part.log_floor = ref[members]
        out = PosteriorState(*(v.new_empty(len(queries), *v.shape[1:]) for v in vars(parts[0][1]).values()))
        for members, part, _ in parts:  # every query is in exactly one part
            for name, value in vars(part).items():
                getattr(out, name)[members] = value
        return out

    def plan(
        self, rows: torch.Tensor, cols: torch.Tensor, counts: torch.Tensor, signature: torch.Tensor, size: int
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor | None]]]:
        """Who computes how: (queries that gather their own kept points, [(group, its points or None)]).

        Queries sorted by ``signature`` (their projection on the chunk's main direction, so that
        neighbours keep overlapping points) are cut into groups of g; a group runs the exact kernel
        over the union of its kept points (gathered, when at most half the chunk) or over the whole
        chunk (None), and a query gathers its own points instead when that costs less than its share.
        Costs are in (query, point) pairs of the exact kernel: gather_cost per gathered pair,
        group_cost per gathered point of a union, call_cost per group. The cheapest g wins."""
        n = len(counts)
        order = torch.argsort(signature)
        position = torch.empty_like(order).scatter_(0, order, torch.arange(n))
        alone = self.costs.gather * _pow2(counts).double()
        best_cost, best = float(alone.sum()), None
        for g in sorted({16, 32, 64, 128, 256, n}):
            group = position // g
            union = torch.zeros(int(group.max()) + 1, size, dtype=torch.bool)
            union[group[rows], cols] = True
            union = union.sum(1).double()
            members = torch.bincount(group).double()
            whole = (union > size / 2) | (members * size <= (members + self.costs.group) * union)
            share = torch.where(whole, float(size), union * (1.0 + self.costs.group / members))[group]
            together = alone >= share
            cost = float(torch.where(together, share, alone).sum()) + self.costs.call * len(union)
            if cost < best_cost:
                best_cost, best = cost, (group, together, whole)
        if best is None:  # every query gathers its own points
            return torch.arange(n), []
        group, together, whole = best
        sel = together[rows]
        union = torch.zeros(len(whole), size, dtype=torch.bool)
        union[group[rows[sel]], cols[sel]] = True
        joined = together.nonzero().squeeze(1)
        joined = joined[torch.argsort(group[joined], stable=True)]
        sizes = torch.bincount(group[joined], minlength=len(union)).tolist()
        groups = [
            (members, None if whole[i] else union[i].nonzero().squeeze(1))
            for i, members in enumerate(joined.split(sizes))
            if len(members)
        ]
        return (~together).nonzero().squeeze(1), groups

    def _cost(self, rows: torch.Tensor, queries: int, size: int, levels: int) -> float:
        """Estimated cost per query, in exact passes over the chunk, of screening with ``levels``
        and then gathering what the screen kept (``rows``: the kept pairs' queries)."""
        kept = _pow2(torch.bincount(rows, minlength=queries)).double() * self.costs.gather
        return levels * self.costs.screen + float(kept.clamp_max(size).mean()) / size

    def _tau(self, size: int) -> float:
        """Skip below the best logit minus this: N points of weight < tol/N each carry < tol."""
        return math.log(max(self.rows, size) / self.tol)

    def _quantized(self, x: torch.Tensor, index: torch.Tensor):
        """``quantize(x)``, cached for contiguous chunks of the prepared dataset."""
        contiguous = len(index) > 0 and int(index[-1]) - int(index[0]) + 1 == len(index)
        key = (self.token, int(index[0]), len(index)) if contiguous and self.token else None
        if key is not None and key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        _count(quantized_rows=len(x))
        xq, xa, x_sq, x_res = (torch.cat(f) for f in zip(*(quantize(rows) for rows in x.split(4096)), strict=True))
        pad = -len(x) % BLOCK
        rest = (torch.cat([t, t.new_zeros(pad)]) for t in (xa, x_sq, x_res))
        out = (torch.cat([xq, xq.new_zeros(pad, xq.shape[1])]), *rest, _main_direction(x))
        if key is not None:
            _CACHE[key] = out
            while sum(t[0].numel() + 24 * len(t[0]) + 4 * t[4].numel() for t in _CACHE.values()) > _CACHE_BUDGET:
                _CACHE.popitem(last=False)
        return out


def clear_cache() -> None:
    """Drop the quantized chunks kept between calls (benchmarks measure a cold start)."""
    _CACHE.clear()


def _main_direction(x: torch.Tensor, steps: int = 6, sample: int = 2048) -> torch.Tensor:
    """The chunk's first principal direction (power iteration on a sample of its rows): queries
    close along it keep overlapping points, so sorting by it makes groups whose kept points overlap."""
    x = x[torch.linspace(0, len(x) - 1, min(len(x), sample)).long()]
    x = x - x.mean(0)
    v = x[-1] - x[0] + 1e-3
    for _ in range(steps):
        v = (x @ v) @ x
        v = v / torch.linalg.vector_norm(v).clamp_min(1e-30)
    return v


_BUFFER = torch.empty(0)


def _buffer(floats: int) -> torch.Tensor:
    """A float32 workspace of at least ``floats`` values, kept between calls (first-touch page faults
    of a fresh allocation cost more than the gather that fills it)."""
    global _BUFFER
    if _BUFFER.numel() < floats:
        _BUFFER = torch.empty(floats)
    return _BUFFER


def _gathered_parts(gathered, rows, cols, counts, queries, scale, x, index, log_weights, sq_norm):
    """(queries, state, points skipped) for queries that gather their own kept points, in buckets of
    equal (power-of-two) width."""

    start = torch.cumsum(counts, 0) - counts
    width = _pow2(counts[gathered])
    slot = torch.full((len(queries),), -1, dtype=torch.int64)
    for k in torch.unique(width).tolist():
        bucket = gathered[width == k]
        slot[bucket] = torch.arange(len(bucket))
        sel = slot[rows] >= 0
        kept = torch.full((len(bucket), k), -1, dtype=torch.int64)  # −1: padding
        kept[slot[rows[sel]], torch.arange(len(rows))[sel] - start[rows[sel]]] = cols[sel]
        slot[bucket] = -1
        step = max(1, GATHER_BYTES // (4 * k * x.shape[1]))
        buffer = _buffer(min(len(bucket), step) * k * x.shape[1])
        for sub, sub_kept in zip(bucket.split(step), kept.split(step), strict=True):
            part = gathered_state(queries[sub], scale[sub], x, index, sub_kept, sq_norm, log_weights, buffer)
            yield sub, part, len(x) - counts[sub]


def _group_parts(groups, exclude, queries, scale, x, index, log_weights, sq_norm):
    """(queries, state, points skipped) for groups run by the exact kernel over their points."""

    for members, used in groups:
        ex = None if exclude is None else exclude[members]
        if used is None:  # the whole chunk
            part = chunk_state(queries[members], scale[members], x, index, log_weights, ex, sq_norm)
            yield members, part, torch.zeros(len(members), dtype=torch.int64)
            continue
        size = used.numel() * x.shape[1]
        rows = torch.index_select(x, 0, used, out=_buffer(size)[:size].view(len(used), -1))
        lw = None if log_weights is None else log_weights[used]
        part = chunk_state(queries[members], scale[members], rows, index[used], lw, ex, sq_norm[used])
        yield members, part, torch.full((len(members),), len(x) - len(used))


def _pow2(counts: torch.Tensor) -> torch.Tensor:
    """The smallest power of two ≥ each count (1 for 0)."""
    return torch.pow(2, torch.ceil(torch.log2(counts.clamp_min(1).double()))).long()


def _at_least(blocks: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every entry ≥ its row's threshold in t viewed as (n, C/BLOCK, BLOCK):
    whole blocks are tested by their maximum first, so the scan is one vectorized pass."""
    qi, bi = (blocks.amax(2) >= threshold[:, None]).nonzero(as_tuple=True)
    hit, offset = (blocks[qi, bi] >= threshold[qi, None]).nonzero(as_tuple=True)
    return qi[hit], bi[hit] * BLOCK + offset


def resolve(precision: str | Fast, data: RowSource, device: torch.device | None = None) -> Fast | None:
    """The kernel step for ``precision``: None (exact ``chunk_state``), or a prepared ``Fast``.

    Off the CPU the step is exact whatever the precision (see the module doc)."""
    if isinstance(precision, Fast):
        step = precision.prepared(data)
    elif precision == "exact":
        return None
    elif precision == "fast":
        step = Fast().prepared(data)
    else:
        raise DifflensError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return step if device is None or device.type == "cpu" else None


def _best_time(fn, repeats: int = 3) -> float:
    """The fastest of a few runs of ``fn`` (seconds): the least disturbed by other processes."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return max(best, 1e-9)


@functools.cache
def calibrated_costs() -> dict[str, float]:
    """The cost model's constants measured where it runs, once per process (a few ms).

    On a synthetic chunk (C = 1024 rows of D = 256, 64 queries) it times the exact kernel, one
    int8 screen, a gather of 32 points per query, a one-pair kernel call and a row gather; each
    cost is in (query, point) pairs of the exact kernel, clamped to 1/8…8× the values measured
    on a 2-core AVX-512 machine so that one disturbed timing cannot steer the plan far."""
    gen = torch.Generator().manual_seed(0)
    b, c, d, k = 64, 1024, 256, 32
    x, q = torch.randn(c, d, generator=gen), torch.randn(b, d, generator=gen)
    scale, index, sq = torch.ones(b, dtype=torch.float64), torch.arange(c), row_sq_norms(x)
    cols = torch.randint(0, c, (b, k), generator=gen)
    probe = Fast(tol=1e-6, gather_cost=50.0, group_cost=40.0, call_cost=20000.0, screen_cost=0.25)
    xq, xa, x_sq, x_res = quantize(x)
    points = (xq, xa, x_sq, x_res, _main_direction(x))
    buffer = torch.empty(b * k * d)
    exact = _best_time(lambda: chunk_state(q, scale, x, index, sq_norm=sq))
    pair = exact / (b * c)
    screen = _best_time(lambda: probe._screen_tile(q, scale, x, points, index, None, None, None, 1))
    gather = _best_time(lambda: gathered_state(q, scale, x, index, cols, sq, None, buffer)) / (b * k)
    call = _best_time(lambda: chunk_state(q[:1], scale[:1], x[:1], index[:1], sq_norm=sq[:1]))
    rows = _best_time(lambda: torch.index_select(x, 0, cols.reshape(-1)[:c])) / c
    measured = {"screen_cost": screen / exact, "gather_cost": gather / pair, "call_cost": call / pair}
    measured["group_cost"] = rows / pair
    reference = {"screen_cost": 0.25, "gather_cost": 50.0, "call_cost": 20000.0, "group_cost": 40.0}
    return {name: min(max(measured[name], ref / 8), ref * 8) for name, ref in reference.items()}
