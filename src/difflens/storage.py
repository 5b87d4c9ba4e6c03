"""On-disk arrays for data larger than memory: memory-mapped ``.npy`` and chunked ``.zarr``.

A Dataset backed by either pickles as a small reference (path, dtype, shape) and reopens the
file where it is unpickled, so a dask worker receives a few hundred bytes, not the data.
``convert`` writes any data spec — or an image folder, streamed file by file — as a zarr array
whose attributes remember the value scaling, so ``PATH.zarr`` loads to the same values.
"""

from __future__ import annotations

import mmap
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from difflens.errors import DifflensError

SCALE_ATTR = "difflens_scale"


@dataclass(frozen=True)
class MappedFile:
    """A reference to a read-only memory-mapped array: enough to map it again anywhere."""

    path: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    order: str

    def open(self) -> np.memmap:
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape, offset=self.offset, order=self.order)


def portable(array):
    """What to pickle for an array: a MappedFile for a whole-file memmap, else the array itself."""
    if isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.filename:
        order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
        return MappedFile(str(array.filename), array.dtype.str, tuple(array.shape), int(array.offset), order)
    return array


def file_backed(array) -> bool:
    """True if the array pickles as a file reference (a whole-file memmap or a zarr array)."""
    return isinstance(array, ZarrRows) or portable(array) is not array


def reopen(ref):
    """Inverse of ``portable``."""
    return ref.open() if isinstance(ref, MappedFile) else ref


class ZarrRows:
    """A zarr array as a Dataset reads it: slices along the first axis and integer row lists.

    Pickles as its path. ``stored_scale`` is the (a, b) of x·a + b recorded by ``convert``."""

    def __init__(self, path: str | Path):
        import zarr

        self.path = str(path)
        try:
            self._z = zarr.open_array(self.path, mode="r")
        except Exception as exc:  # zarr raises several unrelated types for unreadable stores
            raise DifflensError(f"{path}: cannot open as a zarr array ({exc})") from None
        if self._z.ndim < 2:
            raise DifflensError(f"{path}: need a zarr array of shape (N, ...) with N samples, got {self._z.shape}")
        scale = self._z.attrs.get(SCALE_ATTR)
        self.stored_scale = (float(scale[0]), float(scale[1])) if scale else None

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
            return self._z.oindex[key]
        return self._z[key]


# ---------------------------------------------------------------- convert


def _image_files(folder: Path) -> list[Path]:
    from difflens.data import IMAGE_SUFFIXES

    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L") if im.mode in ("L", "1", "I;16", "I") else im.convert("RGB")
            return np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise DifflensError(f"cannot read image {path.name} ({exc})") from None


class _Source:
    """Rows of what ``convert`` reads: an image folder (streamed) or any loaded Dataset."""

    def __init__(self, spec: str, scale: str):
        from difflens import data as data_mod

        folder = Path(spec)
        self.files = _image_files(folder) if folder.is_dir() and folder.suffix != ".zarr" else None
        if self.files is not None:
            if not self.files:
                raise DifflensError(f"{spec}: no images in the folder")
            if scale == "minmax":
                raise DifflensError("--scale minmax is not available for image folders; use auto, uint8 or none")
            first = _read_image(self.files[0])
            self.shape, self.dtype = (len(self.files), *first.shape), np.dtype(np.uint8)
            self.scale = data_mod._scale_for(first, spec, scale, image_like=True)
        else:
            ds = data_mod.load(spec, scale)
            if ds.indices is not None:
                raise DifflensError(f"{spec}: cannot convert a subset")
            self.ds = ds
            self.shape, self.dtype, self.scale = (ds.n, *ds.shape), np.dtype(ds.array.dtype), ds.scale

    def block(self, start: int, stop: int) -> np.ndarray:
        if self.files is None:
            return np.asarray(self.ds.array[start:stop])
        out = np.empty((stop - start, *self.shape[1:]), dtype=np.uint8)
        for i, path in enumerate(self.files[start:stop]):
            a = _read_image(path)
            if a.shape != self.shape[1:]:
                raise DifflensError(
                    f"images differ in size: {self.files[0].name} is {self.shape[1:]}, {path.name} {a.shape}"
                )
            out[i] = a
        return out


def convert(
    spec: str,
    dest: str | Path,
    *,
    scale: str = "auto",
    chunk_rows: int | None = None,
    overwrite: bool = False,
    on_rows: Callable[[int, int], None] | None = None,
) -> dict:
    """Write a data spec as a chunked zarr array at ``dest`` (raw values + their scaling).

    The array is written under a temporary name and renamed at the end, so ``dest`` exists only
    when complete. ``on_rows(k, n)`` is called after each block of k of the n rows (progress)."""
    import zarr

    dest = Path(dest)
    if dest.suffix != ".zarr":
        raise DifflensError(f"destination must end in .zarr, got {dest}")
    if dest.exists() and not overwrite:
        raise DifflensError(f"{dest} exists; pass --overwrite to replace it")
    src = _Source(spec, scale)
    row_bytes = max(1, int(np.prod(src.shape[1:])) * src.dtype.itemsize)
    rows = chunk_rows or int(max(1, min(src.shape[0], (16 << 20) // row_bytes)))  # ~16 MB chunks
    if rows < 1:
        raise DifflensError(f"--chunk-rows must be ≥ 1, got {rows}")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    z = zarr.create_array(store=str(tmp), shape=src.shape, chunks=(rows, *src.shape[1:]), dtype=src.dtype)
    z.attrs.update({SCALE_ATTR: list(src.scale), "source": spec})
    for start in range(0, src.shape[0], rows):
        stop = min(start + rows, src.shape[0])
        z[start:stop] = src.block(start, stop)
        if on_rows is not None:
            on_rows(stop - start, src.shape[0])
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return {"dest": str(dest), "shape": list(src.shape), "dtype": src.dtype.str, "chunk_rows": rows, "scale": src.scale}
