"""Datasets as the kernel sees them: N samples flattened to D float32 values, streamed in chunks.

A data spec names where samples come from:

* ``digits`` — scikit-learn's bundled 8×8 digits (1797 images), scaled to [−1, 1] (the default)
* ``lfw`` — scikit-image's bundled ``lfw_subset`` (200 faces, 25×25), scaled to [−1, 1]
* ``PATH.npy`` — memory-mapped, never loaded whole; first axis = samples
* ``PATH.npz:KEY`` — one named array of an ``.npz`` (the key may be omitted if there is one array)
* ``PATH.zarr`` — a chunked zarr array (e.g. written by ``difflens convert``), read chunk by chunk
* ``DIR`` — a folder of PNG/JPEG/BMP images of one size, scaled to [−1, 1]
* ``toy:NAME[:k=v,...]`` — generated toys: ``circle``, ``gmm``, ``gaussian`` (see ``TOYS``)

Integer arrays (e.g. uint8 images) are scaled from [0, 255] to [−1, 1]; float arrays are used as
given unless ``scale`` says otherwise (``none``, ``uint8``, ``minmax``). Integer data whose values are
not 0…255 intensities (e.g. 0…16) is scaled the same way, with a note and a warning naming ``--scale``.

Images are channel-first, (C, H, W), or (H, W) when grey (``difflens.data.layout``): image files are
decoded so; an array stored (N, H, W, C) is read as (N, C, H, W) (``layout`` decides when in doubt).
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from difflens.data import storage
from difflens.data.dataset import Dataset
from difflens.data.images import IMAGE_SUFFIXES, image_files, read_image
from difflens.data.layout import channels_last
from difflens.errors import DifflensError, require

SCALES = ("auto", "none", "uint8", "minmax")


# ---------------------------------------------------------------- toys


def _circle(n: int = 16, radius: float = 1.0, noise: float = 0.0, random: bool = False, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    angles = rng.uniform(0, 2 * np.pi, n) if random else np.arange(n) * 2 * np.pi / n
    x = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return x + noise * rng.standard_normal(x.shape)


def _gmm(n: int = 1000, k: int = 8, dim: int = 2, std: float = 0.1, radius: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, dim))
    centers *= radius / np.linalg.norm(centers, axis=1, keepdims=True)
    return centers[rng.integers(0, k, n)] + std * rng.standard_normal((n, dim))


def _gaussian(n: int = 1000, dim: int = 2, var: float = 1.0, seed: int = 0) -> np.ndarray:
    return np.sqrt(var) * np.random.default_rng(seed).standard_normal((n, dim))


TOYS: dict[str, Callable[..., np.ndarray]] = {"circle": _circle, "gmm": _gmm, "gaussian": _gaussian}


def parse_params(text: str, spec: str) -> dict[str, int | float | bool]:
    """``k=v,...`` toy parameters: integers, floats and true/false."""
    params: dict[str, int | float | bool] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise DifflensError(f"{spec}: toy parameters are key=value, got {item!r}")
        low = value.strip().lower()
        if low in ("true", "false"):
            params[key.strip()] = low == "true"
            continue
        try:
            params[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            raise DifflensError(f"{spec}: toy parameter {key}={value!r} is not a number") from None
    return params


def _load_toy(spec: str) -> np.ndarray:
    _, _, rest = spec.partition(":")
    name, _, params = rest.partition(":")
    if name not in TOYS:
        raise DifflensError(f"unknown toy {name!r} in {spec!r}; choose one of {', '.join(TOYS)}")
    try:
        x = TOYS[name](**parse_params(params, spec))
    except TypeError as exc:
        raise DifflensError(f"{spec}: {exc}") from None
    return np.asarray(x, dtype=np.float32)


# ---------------------------------------------------------------- files


def _load_npz(path: Path, key: str | None, spec: str) -> np.ndarray:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DifflensError(f"{spec}: cannot read .npz file ({exc})") from None
    with archive:
        keys = list(archive.keys())
        if key is None:
            if len(keys) != 1:
                raise DifflensError(f"{spec}: the .npz holds {keys}; name one as {path}:KEY")
            key = keys[0]
        if key not in keys:
            raise DifflensError(f"{spec}: no array {key!r} in the .npz; it holds {keys}")
        return archive[key]


def _load_images(folder: Path, spec: str) -> np.ndarray:
    files = image_files(folder)
    if not files:
        raise DifflensError(f"{spec}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
    images = []
    for p in files:
        try:
            images.append(read_image(p))
        except DifflensError as exc:
            raise DifflensError(f"{spec}: {exc}") from None
        if images[-1].shape != images[0].shape:
            raise DifflensError(
                f"{spec}: images differ in size or channels: {files[0].name} is {images[0].shape}, "
                f"{p.name} is {images[-1].shape}"
            )
    return np.stack(images)


def _load_array(spec: str) -> tuple[storage.Rows, np.ndarray | None]:
    """The raw (N, ...) array for a spec, and labels where the source has them."""
    if spec == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images / 16.0 * 255.0).astype(np.float32), d.target  # as 0…255 intensities
    if spec == "lfw":
        skimage_data = require("skimage.data", "images", "the lfw data set")
        return (skimage_data.lfw_subset() * 255.0).astype(np.float32), None
    if spec.startswith("toy:"):
        return _load_toy(spec), None
    path_text, sep, key = spec.partition(".npz:")
    path = Path(path_text + ".npz") if sep else Path(spec)
    if not path.exists():
        raise DifflensError(f"data {spec!r}: no such file or folder (or unknown built-in; try digits, lfw, toy:…)")
    if path.suffix == ".zarr":
        return storage.ZarrRows(path), None
    if path.is_dir():
        return _load_images(path, spec), None
    if path.suffix == ".npz":
        return _load_npz(path, key or None, spec), None
    if path.suffix == ".npy":
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        except (OSError, ValueError) as exc:
            raise DifflensError(f"{spec}: cannot read .npy file ({exc})") from None
    raise DifflensError(f"data {spec!r}: unsupported file type {path.suffix!r} (use .npy, .npz, .zarr or a folder)")


def scale_for(array: storage.Rows, spec: str, scale: str, image_like: bool) -> tuple[float, float]:
    """(a, b) of x·a + b for ``scale`` (see the module doc); ``auto`` prefers a zarr array's recorded scaling."""
    if scale not in SCALES:
        raise DifflensError(f"unknown --scale {scale!r}; choose one of {', '.join(SCALES)}")
    if scale == "auto" and isinstance(array, storage.ZarrRows) and array.stored_scale:
        return array.stored_scale
    if scale == "auto":
        scale = "uint8" if image_like or array.dtype.kind in "iub" else "none"
    if scale == "none":
        return 1.0, 0.0
    if scale == "uint8":
        return 1.0 / 127.5, -1.0
    probe = Dataset(array, spec)  # minmax: one pass for the range
    lo, hi = probe.stats.minimum, probe.stats.maximum
    if hi <= lo:
        raise DifflensError(f"{spec}: --scale minmax needs data with a range, all values are {lo}")
    return 2.0 / (hi - lo), -1.0 - 2.0 * lo / (hi - lo)


def _layout_note(array, spec: str, layout: str) -> tuple[bool, tuple[str, ...]]:
    """Whether a stored array holds channel-last images (read as channel-first), and a note saying so."""
    stored = tuple(array.shape[1:])
    last = channels_last(
        stored, spec, (getattr(array, "stored_layout", None) or "auto") if layout == "auto" else layout
    )
    if not last:
        return False, ()
    h, w, c = stored
    return True, (f"images stored channel-last (H, W, C) = {stored}; read channel-first as {(c, h, w)}",)


def _scale_note(ds: Dataset, scale: str) -> str | None:
    """A note (and a warning) when integer data scaled as 0…255 intensities does not look like them:
    values outside 0…255, or none above 127 (e.g. digits' 0…16 would land in [−1, −0.87])."""
    if scale != "auto" or ds.array.dtype.kind not in "iub" or ds.scale != (1.0 / 127.5, -1.0):
        return None
    lo, hi = ((v + 1.0) * 127.5 for v in (ds.stats.minimum, ds.stats.maximum))  # back to the stored values
    lo, hi = round(lo), round(hi)
    if lo >= 0 and 128 <= hi <= 255:
        return None
    note = (
        f"integer data with values {lo}…{hi} scaled as 0…255 intensities to [{ds.stats.minimum:.3g}, "
        f"{ds.stats.maximum:.3g}]; pass --scale minmax (to [−1, 1]) or --scale none (as stored) if that is wrong"
    )
    warnings.warn(f"{ds.spec}: {note}", stacklevel=3)
    return note


def load(spec: str = "digits", scale: str = "auto", layout: str = "auto") -> Dataset:
    """Open a data spec (see module doc) as a Dataset and check it once (finite, non-empty).

    ``layout`` (auto, CHW or HWC) says how an array of (N, a, b, c) samples read from a file is stored;
    auto tells channel-last images by their trailing 1/3/4 channels and refuses when it cannot tell."""
    array, labels = _load_array(spec)
    folder = not spec.startswith("toy:") and Path(spec).is_dir() and Path(spec).suffix != ".zarr"
    image_like = spec in ("digits", "lfw") or folder
    from_file = not (image_like or spec.startswith("toy:"))  # files are decoded channel-first already
    last, notes = _layout_note(array, spec, layout) if from_file else (False, ())
    ds = Dataset(array, spec, scale_for(array, spec, scale, image_like), labels=labels, channels_last=last)
    ds.stats  # noqa: B018 - validates (NaN/Inf) and hashes in one pass, cached for later use
    note = _scale_note(ds, scale) if from_file else None  # image files are 0…255 by definition
    ds.notes = (*notes, note) if note else notes
    return ds
