"""The in-process engine: fold the data's chunks here, one after the other."""

from __future__ import annotations

from difflens.kernel.fold import FoldJob, fold_job
from difflens.kernel.source import RowSource
from difflens.kernel.state import PosteriorState


class LocalEngine:
    """Runs ``fold_job`` over all chunks in this process (torch uses its own threads)."""

    def fold(self, data: RowSource, job: FoldJob) -> PosteriorState:
        return fold_job(data, job)

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
