"""The kernel: the exact, streaming empirical optimal denoiser (docs/method.md, "The kernel").

Imports nothing of difflens but its errors. Data reach it as row sources (``source``); chunks are
folded (``fold``) into mergeable per-query states (``state``) exactly or screened (``screening``),
in-process or on a dask cluster (``engines``); ``oracle`` holds the entry points.
"""

from difflens.kernel.device import resolve_device
from difflens.kernel.engines import LocalEngine, open_engine
from difflens.kernel.fold import FoldJob, data_chunks, default_chunk_rows, fold_job, posterior_state
from difflens.kernel.oracle import Sigma, denoise, posterior
from difflens.kernel.screening import PRECISIONS, Fast
from difflens.kernel.source import ArraySource, RowSource, as_source
from difflens.kernel.state import Posterior, PosteriorState, chunk_state, counting_work, gathered_state, row_sq_norms

__all__ = [
    "PRECISIONS",
    "ArraySource",
    "Fast",
    "FoldJob",
    "LocalEngine",
    "Posterior",
    "PosteriorState",
    "RowSource",
    "Sigma",
    "as_source",
    "chunk_state",
    "counting_work",
    "data_chunks",
    "default_chunk_rows",
    "denoise",
    "fold_job",
    "gathered_state",
    "open_engine",
    "posterior",
    "posterior_state",
    "resolve_device",
    "row_sq_norms",
]
