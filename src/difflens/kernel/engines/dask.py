"""The dask.distributed engine: the data's chunks spread over a cluster's workers.

The rows are cut into contiguous partitions aligned to the chunk size, a few per worker. Each task
folds its partition with ``fold_job`` (the same code as in-process, so the chunk
partials are identical) and returns a ``PosteriorState``; the partials merge exactly in a tree on
the workers, so only one state travels back. Queries (and the fast screen's basis) travel once per
call as one task, recomputed if lost with a worker. A memory-mapped ``.npy`` or ``.zarr`` dataset travels as its path
(it must be on storage the workers can read); an in-memory dataset is scattered once per engine.

A worker lost mid-run is survived by dask itself: its tasks (and the results it held) are
recomputed elsewhere from their recipe, so the answer is unchanged. A local cluster keeps its size:
the killed worker's nanny restarts it, however long the restart takes (see ``_local_cluster``).
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import torch

from difflens.errors import DifflensError, require
from difflens.kernel.fold import FoldJob, fold_job
from difflens.kernel.source import RowSource
from difflens.kernel.state import PosteriorState


def partitions(n: int, rows: int, parts: int) -> list[tuple[int, int]]:
    """About ``parts`` (lo, hi) ranges covering 0…n, as equal in rows as boundaries on multiples of
    ``rows`` allow (a worker's time is its rows; the slowest sets the pace)."""
    parts = max(1, parts)
    inner = {round(n / rows * k / parts) * rows for k in range(1, parts)}
    cuts = sorted({0, n} | {c for c in inner if 0 < c < n})
    return list(itertools.pairwise(cuts))


def _job(job: FoldJob) -> FoldJob:
    """A call's small inputs as one task result: a task has a recipe, so a copy lost with its worker is
    recomputed (scattered data has none, and the scheduler's memory manager keeps one copy of it)."""
    return job


def _merge(a: PosteriorState, b: PosteriorState) -> PosteriorState:
    return a.merge(b)


def _torch_threads(n: int):
    """A worker plugin that gives torch ``n`` threads on every worker, restarted ones included."""
    from distributed.diagnostics.plugin import WorkerPlugin  # present: DaskEngine required it

    class TorchThreads(WorkerPlugin):
        name = "difflens-torch-threads"

        def setup(self, worker) -> None:
            torch.set_num_threads(n)

    return TorchThreads()


def _local_cluster(**options):
    """A ``LocalCluster`` that leaves a lost worker to its nanny's restart.

    A stock ``LocalCluster`` closes a lost worker's nanny for good when no worker of the same name
    is back within ``distributed.deploy.lost-worker-timeout`` (15 s): on a loaded machine a restart
    (a new process importing torch) takes longer, the nanny is closed mid-restart and the cluster
    shrinks for the rest of its life. Local nannies live in this process, so a lost worker is always
    one being restarted: only the base bookkeeping of the worker list is kept."""
    from distributed import LocalCluster  # present: DaskEngine required it
    from distributed.deploy.cluster import Cluster

    class NannyRestartsCluster(LocalCluster):
        def _update_worker_status(self, op, msg) -> None:
            Cluster._update_worker_status(self, op, msg)

    return NannyRestartsCluster(**options)


class DaskEngine:
    """Runs the fold on a dask cluster: a new local one of ``workers`` processes, or ``scheduler``.

    tasks_per_worker: partitions per worker (more = finer recovery and balance, more merges);
    min_rows: below this many rows a call runs in-process (a cluster round trip costs more)."""

    def __init__(
        self,
        workers: int | None = None,
        scheduler: str | None = None,
        *,
        threads_per_worker: int | None = None,
        tasks_per_worker: int = 1,
        min_rows: int = 4096,
        memory_limit: str | int = "auto",
    ):
        Client = require("distributed", "scale", "the dask engine").Client

        self.tasks_per_worker = tasks_per_worker
        self.min_rows = min_rows
        self._scattered: dict[int, tuple[RowSource, Any]] = {}  # dataset and its future
        self.cluster = None
        if scheduler is not None:
            try:
                self.client = Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise DifflensError(f"cannot reach the dask scheduler at {scheduler} ({exc})") from None
        else:
            if workers is None or workers < 1:
                raise DifflensError(f"a local dask cluster needs workers ≥ 1, got {workers}")
            threads = threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
            self.cluster = _local_cluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                memory_limit=memory_limit,
                host="127.0.0.1",
            )
            self.client = Client(self.cluster)
            self.client.register_plugin(_torch_threads(threads))

    @property
    def n_workers(self) -> int:
        return max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))

    def worker_pids(self) -> dict[str, int]:
        return self.client.run(os.getpid)

    def _remote_data(self, data):
        """What to pass to tasks for ``data``: itself if it pickles small (file-backed), else a scatter."""
        if data.file_backed:
            return data
        key = id(data)
        if key not in self._scattered or self._scattered[key][1].status != "finished":  # lost with its workers
            self._scattered[key] = (data, self.client.scatter(data, broadcast=True, hash=False))
        return self._scattered[key][1]

    def fold(self, data: RowSource, job: FoldJob) -> PosteriorState:
        n = job.points(data)
        if n < self.min_rows:
            return fold_job(data, job)
        spans = partitions(n, job.rows, self.n_workers * self.tasks_per_worker)
        remote_job = self.client.submit(_job, job, pure=False)
        remote = self._remote_data(data)
        futures = [self.client.submit(fold_job, remote, remote_job, span, pure=False) for span in spans]
        while len(futures) > 1:
            pairs = [
                self.client.submit(_merge, a, b, pure=False) for a, b in zip(futures[::2], futures[1::2], strict=False)
            ]
            futures = pairs + ([futures[-1]] if len(futures) % 2 else [])
        return futures[0].result()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> DaskEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
