"""Row sources: what the kernel reads, and in-memory arrays prepared once for it.

The kernel needs of its data only ``n``, ``dim``, rows by range (``rows``) and by index (``take``)
as float32, a ``center`` (the data's mean, computed once) which the kernel subtracts from rows and
queries alike so that float32 logits do not cancel on un-centred data (posteriors are
shift-equivariant; docs/method.md, "The kernel"), the squared norms of the centred rows
(``sq_norms``, remembered across calls), a ``fingerprint`` that
changes whenever the content does (it keys caches such as the fast screen's quantized chunks) and
whether it pickles as a small file reference (``file_backed``, for a dask cluster).
``difflens.data.Dataset`` is one; ``ArraySource`` wraps an in-memory array or tensor. A tensor
passed again (same storage, same version counter, i.e. not modified in place) reuses its prepared
source, so repeated ``posterior`` calls do not redo norms or quantization.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, TypeAlias, runtime_checkable

import numpy as np
import torch

from difflens.errors import DifflensError
from difflens.kernel.state import row_sq_norms


@runtime_checkable
class RowSource(Protocol):
    """The data as the kernel reads it (see the module doc)."""

    @property
    def n(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def file_backed(self) -> bool: ...

    @property
    def center(self) -> torch.Tensor: ...

    def rows(self, start: int, stop: int) -> torch.Tensor: ...

    def take(self, idx: np.ndarray) -> torch.Tensor: ...

    def sq_norms(self, index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """‖x‖² of the centred rows x = rows at positions ``index`` − ``center`` (may be remembered)."""


# In-memory data as the kernel's public functions accept it: an (N, ...) array or tensor.
Array: TypeAlias = np.ndarray | torch.Tensor
# Integer indices (of training points), as an array, a tensor or a list.
Indices: TypeAlias = np.ndarray | torch.Tensor | Sequence[int]
# Training data: a row source (e.g. a difflens Dataset) or an in-memory array.
Data: TypeAlias = RowSource | np.ndarray | torch.Tensor

_SERIAL = itertools.count()


class ArraySource:
    """An (N, ...) in-memory tensor as a row source: float32, flattened; mean and norms computed once."""

    file_backed = False

    def __init__(self, x: torch.Tensor, fingerprint: str):
        x = x.detach().reshape(len(x), -1) if x.ndim > 1 else x.detach().reshape(-1, 1)
        if len(x) == 0 or x.shape[1] == 0:
            raise DifflensError(f"the data is empty (shape {tuple(x.shape)})")
        self.x = x.float().contiguous()
        self.fingerprint = fingerprint
        self._norms: torch.Tensor | None = None
        self._center: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return len(self.x)

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    @property
    def center(self) -> torch.Tensor:
        """The rows' mean (summed in float64), float32."""
        if self._center is None:
            self._center = self.x.sum(0, dtype=torch.float64).div_(self.n).float()
        return self._center

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self.x[start:stop]

    def take(self, idx: np.ndarray) -> torch.Tensor:
        return self.x[torch.as_tensor(np.asarray(idx, dtype=np.int64))]

    def sq_norms(self, index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self._norms is None:
            self._norms = torch.cat([row_sq_norms(x - self.center) for x in self.x.split(4096)])
        return self._norms[index]


_NUMPY: OrderedDict[tuple, ArraySource] = OrderedDict()
_NUMPY_KEEP = 2  # prepared NumPy arrays remembered (each holds a float32 copy at most)


def _numpy_key(a: np.ndarray) -> tuple:
    """Identity of a NumPy array's content: its memory, layout and a checksum of a strided sample of
    its values (NumPy has no version counter; a write that misses the sample is not seen, so pass a
    tensor or a Dataset for data you modify in place between calls)."""
    flat = a.reshape(-1)
    sample = flat[:: max(1, flat.size // 65536)]
    digest = hashlib.blake2b(np.ascontiguousarray(sample).tobytes(), digest_size=8).hexdigest()
    return (a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.str, digest)


def as_source(data: Data) -> RowSource:
    """``data`` itself if it is a row source, else an in-memory array or tensor prepared once (cached)."""
    if isinstance(data, RowSource):
        return data
    if isinstance(data, torch.Tensor):
        key = (data.data_ptr(), data._version, tuple(data.shape), data.stride(), data.dtype, data.device)
        cached = getattr(data, "_difflens_source", None)  # lives and dies with the tensor
        if cached is not None and cached[0] == key:
            return cached[1]
        source = ArraySource(data, f"tensor:{next(_SERIAL)}")
        data._difflens_source = (key, source)  # type: ignore[attr-defined]  # a cache riding on the tensor
        return source
    a = np.asarray(data)
    if a.dtype.kind not in "fiub":
        raise DifflensError(f"data must be numeric, got dtype {a.dtype}")
    key = _numpy_key(a)
    if key in _NUMPY:
        _NUMPY.move_to_end(key)
        return _NUMPY[key]
    source = ArraySource(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), f"array:{next(_SERIAL)}")
    _NUMPY[key] = source
    while len(_NUMPY) > _NUMPY_KEEP:
        _NUMPY.popitem(last=False)
    return source
