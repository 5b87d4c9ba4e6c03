"""The in-process engine: fold the data's chunks here, one after the other."""

from __future__ import annotations

from difflens.kernel.fold import data_chunks, posterior_state


class LocalEngine:
    """Runs ``posterior_state`` over all chunks in this process (torch uses its own threads)."""

    def fold(
        self, queries, data, scale, *, log_weights, include, exclude, rows, query_batch, step, floor=None, center=None
    ):
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

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
