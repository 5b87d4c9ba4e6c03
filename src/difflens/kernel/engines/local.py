"""The in-process engine: fold the data's chunks here, one after the other."""

from __future__ import annotations

import torch

from difflens.kernel.fold import data_chunks, posterior_state
from difflens.kernel.source import Indices, RowSource
from difflens.kernel.state import PosteriorState, Step


class LocalEngine:
    """Runs ``posterior_state`` over all chunks in this process (torch uses its own threads)."""

    def fold(
        self,
        queries: torch.Tensor,
        data: RowSource,
        scale: torch.Tensor,
        *,
        log_weights: torch.Tensor | None,
        include: Indices | None,
        exclude: torch.Tensor | None,
        rows: int,
        query_batch: int,
        step: Step | None,
        floor: torch.Tensor | None = None,
        center: torch.Tensor | None = None,
    ) -> PosteriorState:
        chunks = data_chunks(data, rows, include)
        return posterior_state(
            queries,
            chunks,
            scale,
            log_weights,
            exclude,
            query_batch,
            step=step,
            norms=data.sq_norms,
            floor=floor,
            center=center,
        )

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
