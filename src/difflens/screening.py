"""``precision="fast"``: the exact posterior, skipping training points whose weight is provably negligible.

At low and mid noise the posterior of a query concentrates on a few training points, yet the exact
kernel runs two full float32 GEMMs over every chunk. Here a cheap screen bounds every logit first.
Each row v (query or training point) is quantized to int8 with its own scale, v = a·V + r (|V| ≤
127, r the exactly computed residual); the int8 GEMM accumulates exactly in int32, and

    x̃·x_m − (a·A)·(b_m·X_m) = r·x_m + (a·A)·r_m,   so   |error| ≤ ‖r‖·‖x_m‖ + ‖a·A‖·‖r_m‖

(Cauchy–Schwarz on the residuals). That gives for each (query, point) an interval [ℓ⁻, ℓ⁺] holding
the logit ℓ = (x̃·x_m − ‖x_m‖²/2)/(s²T) + log_weight. A point is dropped only if ℓ⁺ < max ℓ⁻ − τ
with τ = ln(C/tol) for a chunk of C points: its weight is below tol/C times the chunk's best, so
all dropped points together carry less than ``tol`` of the posterior mass (the chunks' best weights
sum to at most the total). The kept points — the union over a small group of queries with the same
best point — go through the unchanged exact ``chunk_state``; groups whose union covers most of the
chunk run exact on the whole chunk. The bound arithmetic (float32) is padded by a relative slack
(1e-6) well above its own rounding, so ``fast`` differs from ``exact`` only by float32
rounding of the kept points and the < ``tol`` dropped mass, whose bound is reported per query as
``Posterior.dropped_mass``.

Why int8 and not bfloat16: on CPUs without AMX (this one), bf16 GEMMs run slower than fp32 while
int8 (AVX-512 VNNI) runs 2.4–4× faster; ``benchmarks/bench_scale.py`` measures all of them.
What is skipped depends on the data and noise: at large noise every point keeps real weight and
the screen only costs time (the groups fall back to exact).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace

import torch

from difflens.errors import DifflensError

PRECISIONS = ("exact", "fast")
F32 = 1e-6  # relative slack on the float32 bound arithmetic: it rounds by a few 2⁻²⁴ of |q̃·x̃| + ‖x‖² at most
_CACHE: OrderedDict[tuple, tuple[torch.Tensor, ...]] = OrderedDict()
_CACHE_BUDGET = 512 << 20  # bytes of quantized chunks kept between calls (per process)


def quantize(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows v (n, D) → (int8 V, scale a, ‖v‖, bound on ‖r‖) with v = a·V + r exactly.

    Runs in float32; squares are rounded once (relative 2⁻²⁴) and summed in float64, and the
    rounding of r (≤ 2⁻²⁴·(|v_i| + a) per value) is covered by adding 2⁻²²·‖v‖ to its norm, since
    √D·a ≤ 3‖v‖ for D below the int32 limit (133 000)."""
    v = v.float()
    a = v.abs().amax(1).clamp_min(1e-30) / 127.0
    q = torch.round(v / a[:, None]).clamp_(-127, 127)
    r = v - a[:, None] * q
    norm = (v * v).sum(1, dtype=torch.float64).sqrt()
    r_norm = (r * r).sum(1, dtype=torch.float64).sqrt() * (1 + F32) + 2.0**-22 * norm
    return q.to(torch.int8), a.double(), norm, r_norm


@dataclass
class Fast:
    """The screened kernel step: same call signature and results as ``oracle.chunk_state``.

    tol: bound on the posterior mass dropped per query; group: most queries that share one exact
    recompute; dense_fraction: above this kept fraction of a chunk, a group runs exact; when the
    recomputes would cost more than 70% of one exact pass, the whole batch runs exact."""

    tol: float = 1e-16
    group: int = 64
    dense_fraction: float = 0.35
    call_cost: int = 40  # per-point cost of one recompute call (gather, norms), in queries (measured)
    token: str = ""  # identifies the dataset for the cache of quantized chunks

    def prepared(self, data) -> Fast:
        """A copy bound to this dataset (its hash keys the cache of quantized chunks)."""
        if not 0 < self.tol < 1:
            raise DifflensError(f"fast precision: tol must be in (0, 1), got {self.tol}")
        return replace(self, token=data.stats.hash)

    def __call__(self, queries, scale, x, index, log_weights=None, exclude=None, sq_norm=None):
        from difflens.oracle import PosteriorState, chunk_state

        if x.shape[1] * 127**2 >= 2**31:  # int32 accumulation could overflow: no screen
            return chunk_state(queries, scale, x, index, log_weights, exclude, sq_norm)
        xq, xa, x_norm, x_res = self._quantized(x, index)
        qq, qa, q_norm, q_res = quantize(queries)
        # radius of every logit interval as one small GEMM: Σ_k coef_q[b, k]·coef_x[k, m] (see module doc)
        coef_q = [q_res, q_norm + q_res, F32 * q_norm, torch.full_like(q_norm, F32)]
        coef_x = [x_norm, x_res, x_norm, x_norm**2]
        inv_scale = 1.0 / scale  # the screen works in units of x̃·x (logit × s²T)
        if log_weights is not None:
            coef_q.append(F32 * inv_scale)
            coef_x.append(log_weights.double().abs())
        coef_q = (torch.stack(coef_q, 1) * (1 + F32)).float()
        coef_x = torch.stack(coef_x, 0).float()
        half_sq = (0.5 * x_norm**2).float()
        tau = math.log(len(x) / self.tol) * inv_scale
        keep = torch.empty(len(queries), len(x), dtype=torch.bool)
        dropped = torch.empty(len(queries), dtype=torch.float64)
        best = torch.empty(len(queries), dtype=torch.int64)
        for lo in range(0, len(queries), 256):  # 256 queries at a time (float32, B × C)
            sl = slice(lo, lo + 256)
            lower = torch._int_mm(qq[sl], xq.T).float().mul_(qa[sl, None].float()).mul_(xa[None, :].float())
            lower.sub_(half_sq)  # ĝ = q̃·x̃ − ‖x‖²/2
            if log_weights is not None:
                lower.addr_(inv_scale[sl].float(), log_weights.float())
            radius = coef_q[sl] @ coef_x
            upper = lower + radius
            lower.sub_(radius)
            if exclude is not None:
                banned = (exclude[sl, None, :] == index[None, :, None]).any(-1)
                upper.masked_fill_(banned, -math.inf)
                lower.masked_fill_(banned, -math.inf)
            floor, top = lower.max(1, keepdim=True)
            best[sl] = top.squeeze(1)
            keep[sl] = upper >= floor - tau[sl, None].float()
            gap = (upper.masked_fill_(keep[sl], -math.inf).amax(1) - floor.squeeze(1)).double().nan_to_num(-math.inf)
            dropped[sl] = (~keep[sl]).sum(1) * torch.exp(gap * scale[sl])  # count × largest dropped weight
        # queries with the same best point go together; the group shrinks as the kept sets grow
        kept = float(keep.sum(1).double().mean())
        size = 2 ** int(math.log2(min(self.group, max(4.0, len(x) / (16.0 * kept + 1.0)))))
        order = torch.argsort(best, stable=True)
        groups = [order[lo : lo + size] for lo in range(0, len(queries), size)]
        unions = [keep[rows].any(0).nonzero().squeeze(1) for rows in groups]
        sparse = {i for i, cols in enumerate(unions) if len(cols) <= self.dense_fraction * len(x)}
        # a recompute over U points costs like (group + call_cost) queries over U: gathers and norms are per point
        cost = sum((len(groups[i]) + self.call_cost) * len(unions[i]) for i in sparse)
        cost += len(x) * sum(len(groups[i]) for i in range(len(groups)) if i not in sparse)
        if cost > 0.7 * len(queries) * len(x):  # does not pay: one exact pass
            sparse = set()
        parts, dense = [], [groups[i] for i in range(len(groups)) if i not in sparse]
        for i in sorted(sparse):
            rows, cols = groups[i], unions[i]
            part = chunk_state(
                queries[rows],
                scale[rows],
                x[cols],
                index[cols],
                None if log_weights is None else log_weights[cols],
                None if exclude is None else exclude[rows],
                None if sq_norm is None else sq_norm[cols],
            )
            part.dropped = dropped[rows]
            parts.append((rows, part))
        if dense:
            rows = torch.cat(dense)
            ex = None if exclude is None else exclude[rows]
            part = chunk_state(queries[rows], scale[rows], x, index, log_weights, ex, sq_norm)
            part.dropped = torch.zeros(len(rows), dtype=torch.float64)
            parts.append((rows, part))
        order = torch.cat([r for r, _ in parts])
        merged = _cat_states([p for _, p in parts])
        return PosteriorState(*(getattr(merged, f)[torch.argsort(order)] for f in PosteriorState.__dataclass_fields__))

    def _quantized(self, x: torch.Tensor, index: torch.Tensor):
        """``quantize(x)``, cached for contiguous chunks of the prepared dataset."""
        contiguous = len(index) > 0 and int(index[-1]) - int(index[0]) + 1 == len(index)
        key = (self.token, int(index[0]), len(index)) if contiguous and self.token else None
        if key is not None and key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        out = quantize(x)
        if key is not None:
            _CACHE[key] = out
            while sum(t[0].numel() + 24 * len(t[0]) for t in _CACHE.values()) > _CACHE_BUDGET:
                _CACHE.popitem(last=False)
        return out


def _cat_states(parts):
    from difflens.oracle import _concat

    return _concat(parts)


def resolve(precision, data):
    """The kernel step for ``precision``: None (exact ``chunk_state``), or a prepared ``Fast``."""
    if isinstance(precision, Fast):
        return precision.prepared(data)
    if precision == "exact":
        return None
    if precision == "fast":
        return Fast().prepared(data)
    raise DifflensError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
