"""What the run functions behind the commands share: opening a data spec (with a seeded hold-out), the
kernel's precision and engine options checked before any work, progress callbacks and .npy output."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from difflens import report
from difflens.data import Dataset
from difflens.data import load as load_data
from difflens.errors import DifflensError, require
from difflens.kernel import screening
from difflens.kernel.engines import DASK_EXTRA

# progress(description, total, completed) -> advance(n): how a caller shows progress (the CLI: rich bars)
Progress = Callable[..., Callable[..., None]]


def no_progress(description: str, total: int | None, completed: int = 0) -> Callable[..., None]:
    """A ``Progress`` that shows nothing."""
    return lambda n=1: None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run whose finished levels are kept on disk for ``--resume``."""


def open_data(spec: str, scale: str, holdout: float | None = None, seed: int = 0) -> Dataset:
    """Open a data spec; with ``holdout``, the training part of a seeded split."""
    ds = load_data(spec, scale)
    if holdout:
        ds, _ = ds.split(holdout, seed)
    return ds


def kernel_precision(precision: str, fast_tol: float) -> str | screening.Fast:
    """What ``oracle.posterior`` takes as ``precision``, checked before any work."""
    if precision == "fast" and not 0 < fast_tol < 1:
        raise DifflensError(f"--fast-tol must be in (0, 1), got {fast_tol}")
    return screening.Fast(tol=fast_tol) if precision == "fast" else precision


def check_engine(workers: int | None, dask_scheduler: str | None) -> None:
    if workers is not None and dask_scheduler is not None:
        raise DifflensError("give --workers (start a local cluster) or --dask-scheduler (attach to one), not both")
    if workers is not None and workers < 1:
        raise DifflensError(f"--workers must be ≥ 1, got {workers}")
    if workers is not None or dask_scheduler is not None:
        require(*DASK_EXTRA)


def save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    report.write_bytes(Path(path), buf.getvalue())
