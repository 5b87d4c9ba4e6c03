"""The Dataset: N samples flattened to D float32 values, streamed in chunks (see docs/architecture.md).

A Dataset is what the kernel reads (``difflens.kernel`` row-source protocol): ``rows``, ``take``,
``sq_norms`` and a ``fingerprint`` of its content; ``sources.load`` opens one from a data spec.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from difflens.data import storage
from difflens.data.layout import canonical, layout_name
from difflens.errors import DifflensError
from difflens.kernel.state import row_sq_norms

_SCAN_BYTES = 64 << 20  # bytes per chunk when streaming over the whole dataset


@dataclass(frozen=True)
class DataStats:
    """One streaming pass over the data: content hash and the moments the estimators need."""

    hash: str
    mean_sq_norm: float  # Â = mean ‖x‖², the first term of J* = Â − B̂
    variance: float  # tr Cov(data) / D: the plateau of J*_x0 at large noise
    minimum: float
    maximum: float
    mean: np.ndarray | None = field(default=None, compare=False, repr=False)  # (D,) float64 per-value mean


@dataclass
class Dataset:
    """N samples of shape ``shape`` backed by an array (possibly a memmap), scaled by x·a + b.

    ``channels_last``: the array stores (N, H, W, C) images, presented (and flattened) as (C, H, W)
    (see ``difflens.data.layout``). ``notes`` say how the values were read (layout, scaling)."""

    array: storage.Rows
    spec: str = "array"
    scale: tuple[float, float] = (1.0, 0.0)
    indices: np.ndarray | None = None
    labels: np.ndarray | None = field(default=None, repr=False)
    channels_last: bool = False
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.array, np.ndarray) and self.array.ndim == 1:  # (a zarr array is ≥ 2-D)
            self.array = self.array.reshape(-1, 1)
        if self.channels_last and self.array.ndim != 4:
            raise DifflensError(f"{self.spec}: channel-last samples must be (H, W, C), got {self.array.shape[1:]}")
        if self.array.dtype.kind not in "fiub":
            raise DifflensError(f"{self.spec}: data must be numeric, got dtype {self.array.dtype}")
        if len(self) == 0:
            raise DifflensError(f"{self.spec}: the dataset is empty")
        if self.dim == 0:
            raise DifflensError(f"{self.spec}: samples have no values (shape {self.shape})")

    def __getstate__(self) -> dict:  # a memmap/zarr-backed dataset pickles as its path, not its data
        state = {k: v for k, v in self.__dict__.items() if k != "_sq_norms"}
        return {**state, "array": storage.portable(self.array)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, array=storage.reopen(state["array"]))

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else self.array.shape[0]

    @property
    def n(self) -> int:
        return len(self)

    @property
    def shape(self) -> tuple[int, ...]:
        """The per-sample shape: (C, H, W) for colour images however they are stored."""
        stored = tuple(self.array.shape[1:])
        return (stored[2], stored[0], stored[1]) if self.channels_last else stored

    @property
    def layout(self) -> str:
        """flat, HW (grey images), CHW (channel-first images) or ND (see ``difflens.data.layout``)."""
        return layout_name(self.shape)

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))

    def _convert(self, block: np.ndarray) -> torch.Tensor:
        a, b = self.scale
        x = np.asarray(block, dtype=np.float32)
        if self.channels_last:  # (n, H, W, C) → (n, C, H, W) before flattening
            x = np.moveaxis(x, -1, 1)
        x = x.reshape(len(block), -1)
        if (a, b) != (1.0, 0.0):
            x = x * np.float32(a) + np.float32(b)
        if not x.flags.writeable:  # a read-only memmap block: materialise it (torch needs writable memory)
            x = x.copy()
        return torch.from_numpy(np.ascontiguousarray(x))

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Samples start…stop−1 as a (stop−start, D) float32 tensor."""
        if self.indices is None:
            return self._convert(self.array[start:stop])
        return self.take(self.indices[start:stop], local=False)

    def take(self, idx: np.ndarray | torch.Tensor, local: bool = True) -> torch.Tensor:
        """Samples at positions ``idx`` (positions in this dataset) as float32 (len(idx), D)."""
        idx = np.asarray(idx, dtype=np.int64)
        if local and self.indices is not None:
            idx = self.indices[idx]
        order = np.argsort(idx, kind="stable")  # sorted reads are far faster on a memmap
        out = np.empty((len(idx), *self.array.shape[1:]), dtype=self.array.dtype)
        out[order] = self.array[idx[order]]
        return self._convert(out)

    def chunks(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, float32 block) over the whole dataset, ``rows`` samples at a time."""
        for start in range(0, len(self), rows):
            yield start, self.rows(start, min(start + rows, len(self)))

    def sq_norms(self, index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """‖x‖² of the rows at positions ``index`` as the kernel reads them (``x``: those rows less
        ``center``), remembered across calls so the kernel computes them once per dataset rather
        than once per noise level."""

        cache = self.__dict__.setdefault("_sq_norms", np.full(len(self), np.nan, dtype=np.float32))
        idx = index.numpy()
        known = cache[idx]
        if np.isnan(known).any():
            known = row_sq_norms(x).numpy()
            cache[idx] = known
        return torch.from_numpy(known)

    @property
    def center(self) -> torch.Tensor:
        """The data's mean (from the cached ``stats`` pass), float32: the kernel reads rows relative to it."""
        return torch.from_numpy(self.stats.mean).float()

    @property
    def fingerprint(self) -> str:
        """The content hash (one streaming pass, cached): keys the kernel's caches."""
        return self.stats.hash

    @property
    def file_backed(self) -> bool:
        """True if the dataset pickles as a file reference (a whole-file memmap or a zarr array)."""
        return storage.file_backed(self.array)

    def scan_rows(self) -> int:
        return max(1, _SCAN_BYTES // max(1, 4 * self.dim))

    @cached_property
    def stats(self) -> DataStats:
        """Hash, finiteness check and moments in one streaming pass (cached)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((canonical(self.shape), self.n)).encode())  # (1, H, W) and (H, W) hash alike
        total = np.zeros(self.dim, dtype=np.float64)
        sq_norm = 0.0
        lo, hi = np.inf, -np.inf
        for start, x in self.chunks(self.scan_rows()):
            h.update(x.numpy().data)  # the bytes themselves, no copy
            xd = x.double()
            total += xd.sum(0).numpy()
            block = float(xd.square_().sum())
            if not math.isfinite(block):  # a sum of squares is finite iff every value is
                bad = start + int((~torch.isfinite(x)).any(dim=1).nonzero()[0, 0])
                raise DifflensError(f"{self.spec}: sample {bad} contains NaN or Inf")
            sq_norm += block
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        mean = total / self.n
        mean_sq = sq_norm / self.n
        return DataStats(
            hash=h.hexdigest(),
            mean_sq_norm=mean_sq,
            variance=max(0.0, (mean_sq - float(mean @ mean)) / self.dim),
            minimum=lo,
            maximum=hi,
            mean=mean,
        )

    def subset(self, positions: np.ndarray, suffix: str) -> Dataset:
        base = self.indices[positions] if self.indices is not None else np.asarray(positions)
        labels = self.labels[positions] if self.labels is not None else None
        return dataclasses.replace(self, spec=f"{self.spec}{suffix}", indices=np.sort(base), labels=labels)

    def split(self, holdout: float, seed: int = 0) -> tuple[Dataset, Dataset]:
        """(train, held-out) with a fraction ``holdout`` held out, chosen by ``seed``."""
        if not 0.0 < holdout < 1.0:
            raise DifflensError(f"--holdout must be a fraction in (0, 1), got {holdout}")
        n_held = round(holdout * len(self))
        if n_held == 0 or n_held == len(self):
            raise DifflensError(f"--holdout {holdout} leaves an empty split of {len(self)} samples")
        perm = np.random.default_rng(seed).permutation(len(self))
        held, train = np.sort(perm[:n_held]), np.sort(perm[n_held:])
        return self.subset(train, f"[train {1 - holdout:g}]"), self.subset(held, f"[held {holdout:g}]")

    def summary(self) -> dict:
        out = {"spec": self.spec, "n": self.n, "dim": self.dim, "shape": list(self.shape), "layout": self.layout}
        out["hash"] = self.stats.hash
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def as_dataset(data: Dataset | np.ndarray | torch.Tensor) -> Dataset:
    """Wrap an in-memory (N, D) array or tensor as a Dataset (no copy for float32)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    return Dataset(np.asarray(data))
