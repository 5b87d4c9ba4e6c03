"""The chunk loop every engine runs: fold (index, rows) chunks of a row source into one state per query."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from difflens.kernel import memory
from difflens.kernel.source import Indices, RowSource
from difflens.kernel.state import PosteriorState, Step, chunk_state, concat_states


def default_chunk_rows(dim: int, batch: int, device: torch.device | None = None) -> int:
    """Rows per data chunk: chunk + logits + weights fit in a slice of the free memory of ``device``
    (available RAM on the CPU, free device memory on CUDA; ``memory.device_chunk_rows``)."""
    return memory.device_chunk_rows(dim, batch, device)


def posterior_state(
    queries: torch.Tensor,
    chunks: Iterable[tuple[torch.Tensor, torch.Tensor]],
    scale: torch.Tensor,
    log_weights: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    query_batch: int = 1024,
    step: Step | None = None,
    norms: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    floor: torch.Tensor | None = None,
    center: torch.Tensor | None = None,
) -> PosteriorState:
    """Fold (global index, rows) chunks into one state per query; the loop every engine runs.

    ``step`` computes one chunk's partial (default ``chunk_state``; ``screening.Fast`` for fast);
    ``center`` (D,) is subtracted from every chunk (the queries are given already shifted by it);
    ``norms(index, x)`` gives the (centred) rows' ‖x‖² (e.g. ``Dataset.sq_norms``, cached across
    calls); ``floor`` (B,) lower bounds on each query's largest logit go to steps that use them
    (fast). A step with ``running_floor`` set also gets, from the second chunk on, the exact float64
    logit of each query's best point so far as a floor
    (docs/method.md, "Fast precision (screening)"). Chunks are read where they are and moved to the
    queries' device (through pinned memory for CUDA)."""
    step = step or chunk_state
    uses_floor = getattr(step, "uses_floor", False)
    floor = floor if uses_floor else None
    running = uses_floor and getattr(step, "running_floor", False)
    device = queries.device
    state = None
    for index, x in chunks:
        if center is not None:
            x = _centred(x, center.to(x.device))
        sq_norm = None if norms is None else norms(index, x)
        x, index = _to(x, device), index.to(device)
        sq_norm = None if sq_norm is None else _to(sq_norm, device)
        lw = None if log_weights is None else log_weights[index]
        parts = [
            step(
                queries[i : i + query_batch],
                scale[i : i + query_batch],
                x,
                index,
                lw,
                None if exclude is None else exclude[i : i + query_batch],
                sq_norm,
                **({} if floor is None else {"floor": floor[i : i + query_batch]}),
            )
            for i in range(0, len(queries), query_batch)
        ]
        chunk = concat_states(parts)
        if running:
            best = best_logits(chunk.argmax, queries, scale, x, index, lw)
            floor = best if floor is None else torch.maximum(floor, best)
        state = chunk if state is None else state.merge(chunk)
    return PosteriorState.empty(len(queries), queries.shape[1], device) if state is None else state


def best_logits(
    best: torch.Tensor,
    queries: torch.Tensor,
    scale: torch.Tensor,
    x: torch.Tensor,
    index: torch.Tensor,
    log_weights: torch.Tensor | None,
) -> torch.Tensor:
    """Exact (float64) logits (x̃·x − ‖x‖²/2)/(s²T) + log_weight of each query's point ``best`` (global
    indices among the chunk's ``index``; −1: none, logit −inf): the logit of a point the query may
    use, hence a lower bound on its largest logit over all the data."""
    order = torch.argsort(index)
    pos = order[torch.searchsorted(index[order], best.clamp_min(0)).clamp_max(len(index) - 1)]
    xb, y = x[pos].double(), queries.double()
    logit = ((y * xb).sum(1) - 0.5 * xb.square().sum(1)) * scale
    if log_weights is not None:
        logit = logit + log_weights[pos].double()
    return logit.masked_fill(best < 0, -math.inf)


_LOCAL = threading.local()  # per thread: the reused buffer of centred chunk rows


def _centred(x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """x − center in a buffer reused across chunks and calls (per thread, device and dtype): a fresh
    chunk-sized tensor per chunk would cost more in page faults than the subtraction itself. The result
    is valid until the next call in the same thread."""
    key = (x.device, x.dtype)
    buffers = _LOCAL.__dict__.setdefault("buffers", {})
    buf = buffers.get(key)
    if buf is None or buf.numel() < x.numel():
        buf = buffers[key] = torch.empty(x.numel(), device=x.device, dtype=x.dtype)
    return torch.sub(x, center, out=buf[: x.numel()].view(x.shape))


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device`` (itself if already there); a host tensor bound for CUDA goes through pinned
    memory (asynchronous copy)."""
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def data_chunks(
    data: RowSource, rows: int, include: Indices | None = None, span: tuple[int, int] | None = None
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(global index, float32 rows) over the data, or over the rows ``include`` only.

    ``span`` = (lo, hi) restricts to positions lo…hi−1 of that sequence (an engine's partition)."""
    if include is not None:
        include = np.asarray(include, dtype=np.int64)
    lo, hi = span or (0, data.n if include is None else len(include))
    for start in range(lo, hi, rows):
        stop = min(start + rows, hi)
        if include is None:
            yield torch.arange(start, stop), data.rows(start, stop)
        else:
            idx = include[start:stop]
            yield torch.from_numpy(idx), data.take(idx)


@dataclass
class FoldJob:
    """One posterior call's work, as an engine receives it: the (centred) queries, 1/(s²T) per query, the
    chunk size and what every chunk step needs (see ``posterior_state``)."""

    queries: torch.Tensor
    scale: torch.Tensor
    rows: int
    query_batch: int = 1024
    log_weights: torch.Tensor | None = None
    include: Indices | None = None
    exclude: torch.Tensor | None = None
    step: Step | None = None
    floor: torch.Tensor | None = None
    center: torch.Tensor | None = None

    def points(self, data: RowSource) -> int:
        """How many training points the job folds over."""
        return data.n if self.include is None else len(self.include)


def fold_job(data: RowSource, job: FoldJob, span: tuple[int, int] | None = None) -> PosteriorState:
    """The job over the data's chunks (all, or positions ``span`` of them): what every engine runs.

    Over all of them, the centred rows come from the copy held in RAM when it fits (``memory.resident``)."""
    held = None if span is not None or job.center is None else memory.resident(data, job.center)
    chunks: Iterable[tuple[torch.Tensor, torch.Tensor]]
    if held is not None:  # already centred, norms alongside
        chunks, norms, center = held.chunks(job.rows, job.include), held.norms, None
    else:
        chunks, norms, center = data_chunks(data, job.rows, job.include, span), data.sq_norms, job.center
    return posterior_state(
        job.queries,
        chunks,
        job.scale,
        job.log_weights,
        job.exclude,
        job.query_batch,
        step=job.step,
        norms=norms,
        floor=job.floor,
        center=center,
    )
