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
given unless ``scale`` says otherwise (``none``, ``uint8``, ``minmax``).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from difflens import storage
from difflens.errors import DifflensError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}
SCALES = ("auto", "none", "uint8", "minmax")
_SCAN_BYTES = 64 << 20  # bytes per chunk when streaming over the whole dataset


@dataclass(frozen=True)
class DataStats:
    """One streaming pass over the data: content hash and the moments the estimators need."""

    hash: str
    mean_sq_norm: float  # Â = mean ‖x‖², the first term of J* = Â − B̂
    variance: float  # tr Cov(data) / D: the plateau of J*_x0 at large noise
    minimum: float
    maximum: float


@dataclass
class Dataset:
    """N samples of shape ``shape`` backed by an array (possibly a memmap), scaled by x·a + b."""

    array: np.ndarray
    spec: str = "array"
    scale: tuple[float, float] = (1.0, 0.0)
    indices: np.ndarray | None = None
    labels: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.array.ndim == 1:
            self.array = self.array.reshape(-1, 1)
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
        return tuple(self.array.shape[1:])

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))

    def _convert(self, block: np.ndarray) -> torch.Tensor:
        a, b = self.scale
        x = np.asarray(block, dtype=np.float32).reshape(len(block), -1)
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
        out = np.empty((len(idx), *self.shape), dtype=self.array.dtype)
        out[order] = self.array[idx[order]]
        return self._convert(out)

    def chunks(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, float32 block) over the whole dataset, ``rows`` samples at a time."""
        for start in range(0, len(self), rows):
            yield start, self.rows(start, min(start + rows, len(self)))

    def sq_norms(self, index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """‖x‖² of the rows at positions ``index`` (``x`` = those rows), remembered across calls so the
        kernel computes them once per dataset rather than once per noise level."""
        from difflens.oracle import row_sq_norms

        cache = self.__dict__.setdefault("_sq_norms", np.full(len(self), np.nan, dtype=np.float32))
        idx = index.numpy()
        known = cache[idx]
        if np.isnan(known).any():
            known = row_sq_norms(x).numpy()
            cache[idx] = known
        return torch.from_numpy(known)

    def scan_rows(self) -> int:
        return max(1, _SCAN_BYTES // max(1, 4 * self.dim))

    @cached_property
    def stats(self) -> DataStats:
        """Hash, finiteness check and moments in one streaming pass (cached)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(repr((self.shape, self.n)).encode())
        total = np.zeros(self.dim, dtype=np.float64)
        sq_norm = 0.0
        lo, hi = np.inf, -np.inf
        for start, x in self.chunks(self.scan_rows()):
            if not torch.isfinite(x).all():
                bad = start + int((~torch.isfinite(x)).any(dim=1).nonzero()[0, 0])
                raise DifflensError(f"{self.spec}: sample {bad} contains NaN or Inf")
            h.update(x.numpy().tobytes())
            xd = x.double()
            total += xd.sum(0).numpy()
            sq_norm += float((xd * xd).sum())
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        mean = total / self.n
        mean_sq = sq_norm / self.n
        return DataStats(
            hash=h.hexdigest(),
            mean_sq_norm=mean_sq,
            variance=max(0.0, (mean_sq - float(mean @ mean)) / self.dim),
            minimum=lo,
            maximum=hi,
        )

    def subset(self, positions: np.ndarray, suffix: str) -> Dataset:
        base = self.indices[positions] if self.indices is not None else np.asarray(positions)
        labels = self.labels[positions] if self.labels is not None else None
        return Dataset(self.array, f"{self.spec}{suffix}", self.scale, np.sort(base), labels)

    def split(self, holdout: float, seed: int = 0) -> tuple[Dataset, Dataset]:
        """(train, held-out) with a fraction ``holdout`` held out, chosen by ``seed``."""
        if not 0.0 < holdout < 1.0:
            raise DifflensError(f"--holdout must be a fraction in (0, 1), got {holdout}")
        n_held = int(round(holdout * len(self)))
        if n_held == 0 or n_held == len(self):
            raise DifflensError(f"--holdout {holdout} leaves an empty split of {len(self)} samples")
        perm = np.random.default_rng(seed).permutation(len(self))
        held, train = np.sort(perm[:n_held]), np.sort(perm[n_held:])
        return self.subset(train, f"[train {1 - holdout:g}]"), self.subset(held, f"[held {holdout:g}]")

    def summary(self) -> dict:
        return {"spec": self.spec, "n": self.n, "dim": self.dim, "shape": list(self.shape), "hash": self.stats.hash}


def as_dataset(data: Dataset | np.ndarray | torch.Tensor) -> Dataset:
    """Wrap an in-memory (N, D) array or tensor as a Dataset (no copy for float32)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    return Dataset(np.asarray(data))


# ---------------------------------------------------------------- toys


def _circle(n: int = 16, radius: float = 1.0, noise: float = 0.0, random: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    angles = rng.uniform(0, 2 * np.pi, n) if random else np.arange(n) * 2 * np.pi / n
    x = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return x + noise * rng.standard_normal(x.shape)


def _gmm(n: int = 1000, k: int = 8, dim: int = 2, std: float = 0.1, radius: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, dim))
    centers *= radius / np.linalg.norm(centers, axis=1, keepdims=True)
    return centers[rng.integers(0, k, n)] + std * rng.standard_normal((n, dim))


def _gaussian(n: int = 1000, dim: int = 2, var: float = 1.0, seed: int = 0):
    return np.sqrt(var) * np.random.default_rng(seed).standard_normal((n, dim))


TOYS = {"circle": _circle, "gmm": _gmm, "gaussian": _gaussian}


def _parse_params(text: str, spec: str) -> dict:
    params = {}
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
        x = TOYS[name](**_parse_params(params, spec))
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
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DifflensError(f"{spec}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
    images, first = [], None
    for p in files:
        try:
            with Image.open(p) as im:
                im = im.convert("L") if im.mode in ("L", "1", "I;16", "I") else im.convert("RGB")
                a = np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise DifflensError(f"{spec}: cannot read image {p.name} ({exc})") from None
        images.append(a)
        first = first if first is not None else a.shape
        if a.shape != first:
            raise DifflensError(
                f"{spec}: images differ in size or channels: {files[0].name} is {first}, {p.name} is {a.shape}"
            )
    return np.stack(images)


def _load_array(spec: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The raw (N, ...) array for a spec, and labels where the source has them."""
    if spec == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images / 16.0 * 255.0).astype(np.float32), d.target  # as 0…255 intensities
    if spec == "lfw":
        from skimage.data import lfw_subset

        return (lfw_subset() * 255.0).astype(np.float32), None
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


def _scale_for(array: np.ndarray, spec: str, scale: str, image_like: bool) -> tuple[float, float]:
    if scale not in SCALES:
        raise DifflensError(f"unknown --scale {scale!r}; choose one of {', '.join(SCALES)}")
    if scale == "auto" and getattr(array, "stored_scale", None):
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


def load(spec: str = "digits", scale: str = "auto") -> Dataset:
    """Open a data spec (see module doc) as a Dataset and check it once (finite, non-empty)."""
    array, labels = _load_array(spec)
    folder = not spec.startswith("toy:") and Path(spec).is_dir() and Path(spec).suffix != ".zarr"
    image_like = spec in ("digits", "lfw") or folder
    ds = Dataset(array, spec, _scale_for(array, spec, scale, image_like), labels=labels)
    ds.stats  # noqa: B018 - validates (NaN/Inf) and hashes in one pass, cached for later use
    return ds
