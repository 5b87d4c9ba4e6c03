"""``difflens convert``: any data spec — or an image folder, streamed file by file — as a chunked zarr
array whose attributes remember the value scaling and the (channel-first) image layout, so ``PATH.zarr``
loads to the same values in the same order."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from difflens.data.files import atomic_path
from difflens.data.images import image_files, read_image
from difflens.data.sources import load, scale_for
from difflens.data.storage import LAYOUT_ATTR, SCALE_ATTR
from difflens.errors import DifflensError, require


class _Source:
    """Rows of what ``convert`` reads: an image folder (streamed) or any loaded Dataset."""

    def __init__(self, spec: str, scale: str, layout: str):
        folder = Path(spec)
        self.files = image_files(folder) if folder.is_dir() and folder.suffix != ".zarr" else None
        if self.files is not None:
            if not self.files:
                raise DifflensError(f"{spec}: no images in the folder")
            if scale == "minmax":
                raise DifflensError("--scale minmax is not available for image folders; use auto, uint8 or none")
            first = read_image(self.files[0])
            self.shape, self.dtype = (len(self.files), *first.shape), np.dtype(np.uint8)
            self.scale = scale_for(first, spec, scale, image_like=True)
        else:
            ds = load(spec, scale, layout)
            if ds.indices is not None:
                raise DifflensError(f"{spec}: cannot convert a subset")
            self.ds = ds
            self.shape, self.dtype, self.scale = (ds.n, *ds.shape), np.dtype(ds.array.dtype), ds.scale

    def block(self, start: int, stop: int) -> np.ndarray:
        if self.files is None:
            block = np.asarray(self.ds.array[start:stop])
            return np.moveaxis(block, -1, 1) if self.ds.channels_last else block  # written channel-first
        out = np.empty((stop - start, *self.shape[1:]), dtype=np.uint8)
        for i, path in enumerate(self.files[start:stop]):
            a = read_image(path)
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
    layout: str = "auto",
    chunk_rows: int | None = None,
    overwrite: bool = False,
    on_rows: Callable[[int, int], None] | None = None,
) -> dict:
    """Write a data spec as a chunked zarr array at ``dest`` (raw values + their scaling).

    Images are written channel-first (``layout`` as in ``load``), and the zarr says so.

    The array is written under a temporary name and renamed at the end, so ``dest`` exists only
    when complete. ``on_rows(k, n)`` is called after each block of k of the n rows (progress)."""
    zarr = require("zarr", "scale", "difflens convert (zarr output)")
    dest = Path(dest)
    if dest.suffix != ".zarr":
        raise DifflensError(f"destination must end in .zarr, got {dest}")
    if dest.exists() and not overwrite:
        raise DifflensError(f"{dest} exists; pass --overwrite to replace it")
    src = _Source(spec, scale, layout)
    row_bytes = max(1, int(np.prod(src.shape[1:])) * src.dtype.itemsize)
    rows = chunk_rows or int(max(1, min(src.shape[0], (16 << 20) // row_bytes)))  # ~16 MB chunks
    if rows < 1:
        raise DifflensError(f"--chunk-rows must be ≥ 1, got {rows}")
    with atomic_path(dest) as tmp:
        z = zarr.create_array(store=str(tmp), shape=src.shape, chunks=(rows, *src.shape[1:]), dtype=src.dtype)
        z.attrs.update({SCALE_ATTR: list(src.scale), "source": spec})
        if len(src.shape) == 4:  # images, always written channel-first: no guessing when read back
            z.attrs[LAYOUT_ATTR] = "CHW"
        for start in range(0, src.shape[0], rows):
            stop = min(start + rows, src.shape[0])
            z[start:stop] = src.block(start, stop)
            if on_rows is not None:
                on_rows(stop - start, src.shape[0])
    return {"dest": str(dest), "shape": list(src.shape), "dtype": src.dtype.str, "chunk_rows": rows, "scale": src.scale}
