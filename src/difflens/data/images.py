"""Image files as channel-first arrays: the one reader that data specs and ``convert`` share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from difflens.errors import DifflensError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"}


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder, sorted by name (the order samples get)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: Path) -> np.ndarray:
    """One image as uint8: (H, W) for grey-scale files, (3, H, W) for colour — channel-first, the layout
    of every image Dataset (``difflens.data.layout``), whatever order the file stores its pixels in."""
    try:
        with Image.open(path) as im:
            im = im.convert("L") if im.mode in ("L", "1", "I;16", "I") else im.convert("RGB")
            pixels = np.asarray(im, dtype=np.uint8)
            return np.ascontiguousarray(np.moveaxis(pixels, -1, 0)) if pixels.ndim == 3 else pixels
    except (OSError, UnidentifiedImageError) as exc:
        raise DifflensError(f"cannot read image {path.name} ({exc})") from None
