"""On-disk arrays for data larger than memory: memory-mapped ``.npy`` and chunked ``.zarr``.

A Dataset backed by either pickles as a small reference (path, dtype, shape) and reopens the
file where it is unpickled, so a dask worker receives a few hundred bytes, not the data.
``difflens.data.convert`` writes any data spec as such a zarr array.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

import numpy as np

from difflens.errors import DifflensError, require

SCALE_ATTR = "difflens_scale"
LAYOUT_ATTR = "difflens_layout"  # CHW or HWC: how ``convert`` stored (N, a, b, c) samples


@dataclass(frozen=True)
class MappedFile:
    """A reference to a read-only memory-mapped array: enough to map it again anywhere."""

    path: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    order: Literal["C", "F"]

    def open(self) -> np.memmap:
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape, offset=self.offset, order=self.order)


def portable(array: Rows) -> Rows | MappedFile:
    """What to pickle for an array: a MappedFile for a whole-file memmap, else the array itself."""
    if isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.filename:
        order: Literal["C", "F"] = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
        return MappedFile(str(array.filename), array.dtype.str, tuple(array.shape), int(array.offset), order)
    return array


def file_backed(array: Rows) -> bool:
    """True if the array pickles as a file reference (a whole-file memmap or a zarr array)."""
    return isinstance(array, ZarrRows) or portable(array) is not array


def reopen(ref: Rows | MappedFile) -> Rows:
    """Inverse of ``portable``."""
    return ref.open() if isinstance(ref, MappedFile) else ref


class ZarrRows:
    """A zarr array as a Dataset reads it: slices along the first axis and integer row lists.

    Pickles as its path. ``stored_scale`` is the (a, b) of x·a + b and ``stored_layout`` the image layout
    recorded by ``convert`` (None for arrays written otherwise)."""

    def __init__(self, path: str | Path):
        zarr = require("zarr", "scale", "reading .zarr data")
        self.path = str(path)
        try:
            self._z = zarr.open_array(self.path, mode="r")
        except Exception as exc:  # zarr raises several unrelated types for unreadable stores
            raise DifflensError(f"{path}: cannot open as a zarr array ({exc})") from None
        if self._z.ndim < 2:
            raise DifflensError(f"{path}: need a zarr array of shape (N, ...) with N samples, got {self._z.shape}")
        scale = self._z.attrs.get(SCALE_ATTR)
        self.stored_scale: tuple[float, float] | None = None
        if scale:
            if not isinstance(scale, list | tuple) or len(scale) != 2:
                raise DifflensError(f"{path}: attribute {SCALE_ATTR} must be [a, b], got {scale!r}")
            a, b = np.asarray(scale, dtype=np.float64).tolist()
            self.stored_scale = (a, b)
        self.stored_layout = self._z.attrs.get(LAYOUT_ATTR)

    def __reduce__(self):
        return ZarrRows, (self.path,)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._z.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._z.dtype)

    @property
    def ndim(self) -> int:
        return self._z.ndim

    @property
    def chunk_rows(self) -> int:
        return int(self._z.chunks[0])

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, np.ndarray):
            return np.asarray(self._z.oindex[key])
        return np.asarray(self._z[key])


# What a Dataset holds: rows that slice along the first axis and take integer row lists (an array, a memmap
# or a zarr array); ``np.asarray`` of a slice is a NumPy array.
Rows: TypeAlias = np.ndarray | ZarrRows
