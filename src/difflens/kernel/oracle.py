"""The kernel's entry points: the posterior over a training set and the empirical optimal denoiser.

``posterior(queries, data, sigma)`` folds the data's chunks (``fold``) on an engine (in-process by
default, or a dask cluster, see ``difflens.kernel.engines``) with the exact step (``state``) or the
screened one (``precision="fast"``, see ``screening``). ``data`` is any row source (a
``difflens.data.Dataset``) or an in-memory array/tensor, prepared once and cached (``source``).
The math is in docs/method.md, "The kernel".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from difflens.errors import DifflensError
from difflens.kernel import engines, screening
from difflens.kernel.device import device_of, resolve_device
from difflens.kernel.engines import Engine
from difflens.kernel.fold import FoldJob, data_chunks, default_chunk_rows
from difflens.kernel.source import Array, Data, Indices, RowSource, as_source
from difflens.kernel.state import Posterior, PosteriorState

Sigma = float | np.ndarray | torch.Tensor

__all__ = [
    "Posterior",
    "PosteriorState",
    "RowSource",
    "Sigma",
    "as_sigma",
    "check_queries",
    "data_chunks",
    "default_chunk_rows",
    "denoise",
    "posterior",
]


def as_sigma(sigma: Sigma, batch: int) -> torch.Tensor:
    s = torch.as_tensor(np.asarray(sigma, dtype=np.float64) if not torch.is_tensor(sigma) else sigma)
    s = s.detach().double().reshape(-1)
    if s.numel() == 1:
        s = s.expand(batch)
    if s.numel() != batch:
        raise DifflensError(f"sigma must be a scalar or one value per query ({batch}), got {s.numel()} values")
    if not torch.isfinite(s).all() or (s <= 0).any():
        raise DifflensError("sigma must be finite and > 0")
    return s


def check_queries(queries: Array, dim: int) -> torch.Tensor:
    """Queries as a contiguous (B, dim) float32 tensor; one line of error for a wrong width or NaN/Inf."""
    q = torch.as_tensor(queries).float()
    if q.ndim == 1:
        q = q[None]
    q = q.reshape(len(q), -1)
    if q.shape[1] != dim:
        raise DifflensError(f"queries have {q.shape[1]} values each but the data has {dim}")
    if not torch.isfinite(q).all():
        raise DifflensError("queries contain NaN or Inf")
    return q.contiguous()


def _exclude_matrix(exclude, batch: int) -> torch.Tensor | None:
    if exclude is None:
        return None
    e = torch.as_tensor(np.asarray(exclude) if not torch.is_tensor(exclude) else exclude).long()
    e = e.reshape(batch, -1) if e.ndim <= 1 else e
    if e.shape[0] != batch:
        raise DifflensError(f"exclude needs one row per query ({batch}), got {e.shape[0]}")
    return e


def posterior(
    queries: Array,
    data: Data,
    sigma: Sigma,
    temperature: Sigma = 1.0,
    *,
    log_weights: Array | None = None,
    include: Indices | None = None,
    exclude: Indices | None = None,
    extra: PosteriorState | None = None,
    chunk_size: int | None = None,
    query_batch: int = 1024,
    engine: Engine | None = None,
    precision: str | screening.Fast = "exact",
    hint: Indices | None = None,
    device: str | torch.device | None = None,
) -> Posterior:
    """Posterior over the training set for noisy queries x̃ (VE form) at noise level ``sigma``.

    Args:
        queries: (B, D) or (B, ...) noisy samples x̃ = x0 + s·ε.
        data: a Dataset, or an (N, D) array/tensor of training points.
        sigma: VE noise level s, a scalar or one per query.
        temperature: T in the softmax (s²T replaces s²), a scalar or one per query.
        log_weights: (N,) per-point log-weight offsets added to the logits.
        include: indices of the only training points to use (shared by all queries).
        exclude: (B,) or (B, k) per-query training indices to leave out (−1 = none).
        extra: a partial state to merge in (e.g. a per-query source point with its own weight).
        chunk_size: data rows per chunk; chosen from available memory by default.
        engine: where the chunks run: None (in-process) or an engine from ``difflens.engines``.
        precision: "exact", or "fast" (skip points of provably negligible weight; the bound on
            the skipped mass is ``dropped_mass``), or a ``screening.Fast`` with its own tolerance.
        hint: (B,) or (B, k) training indices likely to carry each query's weight (e.g. the points
            the queries were noised from). Their exact logits let "fast" skip more (with ``extra``,
            whose logits serve alike); the result does not depend on them.
        device: where the kernel runs (see ``resolve_device``); by default the queries' device.
            Data chunks are moved there; the results (float64) live there.
    """

    data = as_source(data)
    target = _device(queries, device)
    q = check_queries(queries, data.dim).to(target)
    s = as_sigma(sigma, len(q)).to(target)
    t = as_sigma(temperature, len(q)).to(target)
    scale = 1.0 / (s * s * t)
    lw = None
    if log_weights is not None:
        lw = torch.as_tensor(np.asarray(log_weights, dtype=np.float64)).reshape(-1)
        if len(lw) != data.n:
            raise DifflensError(f"log_weights needs one value per training point ({data.n}), got {len(lw)}")
        if torch.isnan(lw).any() or (lw == math.inf).any():
            raise DifflensError("log_weights contain NaN or +inf (−inf, a point with no weight, is fine)")
        lw = lw.to(target)
    rows = chunk_size or default_chunk_rows(data.dim, min(len(q), query_batch), target)
    if rows < 1:
        raise DifflensError(f"chunk_size must be ≥ 1, got {rows}")
    exclude = _exclude_matrix(exclude, len(q))
    exclude = None if exclude is None else exclude.to(target)
    step = screening.resolve(precision, data, target)
    hint = None if hint is None else _check_hint(hint, len(q), data.n)
    # the kernel works relative to the data's mean: float32 logits then lose digits to the data's
    # spread only, not to its offset (docs/method.md, "The kernel"); shifted back at the end
    center = data.center.float()
    c = center.to(target)
    qc = q - c
    if extra is not None:
        extra = _shifted(extra, q, c, scale)
    floor = None  # lower bounds on the largest logits, for a step that can use them (fast)
    if getattr(step, "uses_floor", False):
        floor = None if hint is None else _hint_floor(hint, qc, data, center, scale, lw, include, exclude)
        if extra is not None:
            floor = extra.log_max if floor is None else torch.maximum(floor, extra.log_max)
    job = FoldJob(qc, scale, rows, query_batch, lw, include, exclude, step, floor, center)
    state = engines.resolve(engine).fold(data, job)
    if extra is not None:
        state = state.merge(extra)
    post = state.finalize((qc.double() ** 2).sum(1), scale)
    post.mean += c.double()
    return post


def _device(queries, device) -> torch.device:
    """Where the kernel runs: ``device`` if given, else the queries' device (CPU for arrays)."""
    target = resolve_device(device if device is not None else device_of(queries))
    if target.type == "mps":
        raise DifflensError("the kernel merges its partial sums in float64, which MPS lacks: run it on cpu or cuda")
    return target


def _shifted(extra: PosteriorState, q: torch.Tensor, c: torch.Tensor, scale: torch.Tensor) -> PosteriorState:
    """``extra`` (logits x̃·x − ‖x‖²/2 per s²T) in the kernel's coordinates relative to c: each logit
    drops by (x̃·c − ‖c‖²/2)/(s²T), a per-query constant, and the mean moves by −c."""
    c64 = c.double()
    drop = ((q.double() @ c64) - 0.5 * c64.square().sum()) * scale
    fields = {k: getattr(extra, k) for k in extra.__dataclass_fields__}
    fields["log_max"] = fields["log_max"].to(q.device) - drop
    fields["mean"] = fields["mean"].to(q.device) - c64
    if fields["log_floor"] is not None:
        fields["log_floor"] = fields["log_floor"].to(q.device) - drop
    for k in ("total", "m2", "sq_total", "argmax", "log_dropped"):
        fields[k] = None if fields[k] is None else fields[k].to(q.device)
    return PosteriorState(**fields)


def _check_hint(hint, batch: int, n: int) -> torch.Tensor:
    h = torch.as_tensor(np.asarray(hint) if not torch.is_tensor(hint) else hint).long().reshape(batch, -1)
    if ((h < 0) | (h >= n)).any():
        raise DifflensError(f"hint holds indices outside 0…{n - 1}")
    return h


def _hint_floor(h, queries, data: RowSource, center, scale, log_weights, include, exclude) -> torch.Tensor:
    """Each query's largest logit over its hinted points h (B, k), in float64 from the centred rows
    the kernel reads: a lower bound on its largest logit over the data (hints outside ``include``
    or in ``exclude`` do not count)."""
    x = (data.take(h.reshape(-1).numpy()) - center).to(queries.device).double().reshape(*h.shape, -1)
    h = h.to(queries.device)
    logit = ((queries.double()[:, None] * x).sum(-1) - 0.5 * x.square().sum(-1)) * scale[:, None]
    if log_weights is not None:
        logit += log_weights[h]
    valid = torch.ones_like(h, dtype=torch.bool)
    if include is not None:
        valid &= torch.isin(h, torch.as_tensor(np.asarray(include, dtype=np.int64), device=h.device))
    if exclude is not None:
        valid &= ~(h[:, :, None] == exclude[:, None, :]).any(-1)
    return logit.masked_fill(~valid, -math.inf).amax(1)


def denoise(queries: Array, data: Data, sigma: Sigma, temperature: Sigma = 1.0, **kwargs: Any) -> torch.Tensor:
    """E[x0 | x̃]: the empirical optimal denoiser (float32, same shape as the queries)."""
    q = torch.as_tensor(queries)
    return posterior(q, data, sigma, temperature, **kwargs).mean.float().reshape(q.shape)
