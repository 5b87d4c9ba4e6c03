"""Engines: where the kernel's data chunks run. Every engine folds chunks with the same
``fold.posterior_state`` / ``state.chunk_state`` and merges partials with ``PosteriorState.merge``.

* ``LocalEngine`` — in this process (the default).
* ``DaskEngine`` — spread over a dask.distributed cluster: a local one (``workers=N``) or an
  existing one (``scheduler="tcp://host:8786"``).
"""

from __future__ import annotations

from typing import Any, Protocol

from difflens.errors import DifflensError, require
from difflens.kernel.engines.local import LocalEngine
from difflens.kernel.fold import FoldJob
from difflens.kernel.source import RowSource
from difflens.kernel.state import PosteriorState

LOCAL = LocalEngine()


class Engine(Protocol):
    """Where the kernel's chunks run: folds them into one state per query (``LocalEngine.fold``)."""

    def fold(self, data: RowSource, job: FoldJob) -> PosteriorState: ...

    def close(self) -> None: ...

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...


def resolve(engine: Engine | None) -> Engine:
    """The engine to use for ``engine`` (None → in-process)."""
    if engine is None:
        return LOCAL
    if not hasattr(engine, "fold"):
        raise DifflensError(f"engine must be None or an engine from difflens.engines, got {type(engine).__name__}")
    return engine


# what the dask engine needs (module, extra, what for): checked before a run starts (errors.require)
DASK_EXTRA = ("distributed", "scale", "the dask engine (--workers, --scheduler)")


def open_engine(workers: int | None = None, scheduler: str | None = None, **options: Any) -> Engine:
    """An engine for the CLI options: in-process, a local dask cluster of ``workers``, or a scheduler.

    Use it as a context manager so a cluster it starts is shut down."""
    if workers is not None and scheduler is not None:
        raise DifflensError("give --workers (start a local cluster) or --scheduler (attach to one), not both")
    if workers is None and scheduler is None:
        return LocalEngine()
    if workers is not None and workers < 1:
        raise DifflensError(f"--workers must be ≥ 1, got {workers}")
    require(*DASK_EXTRA)
    from difflens.kernel.engines.dask import DaskEngine

    return DaskEngine(workers=workers, scheduler=scheduler, **options)


__all__ = ["DASK_EXTRA", "LOCAL", "Engine", "LocalEngine", "open_engine", "resolve"]
