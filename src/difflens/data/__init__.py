"""Data: specs → Datasets the kernel streams (see docs/architecture.md).

``load(spec)`` opens a data spec (``digits``, ``lfw``, ``.npy``/``.npz``/``.zarr``, an image folder,
``toy:…``); ``as_dataset`` wraps an in-memory array; ``convert`` writes any spec as zarr. Images are
channel-first (``layout``); ``check_same_layout`` refuses two inputs whose samples would be compared
in a different order.
"""

from difflens.data.convert import convert
from difflens.data.dataset import Dataset, DataStats, as_dataset
from difflens.data.images import IMAGE_SUFFIXES
from difflens.data.layout import LAYOUTS, check_same_layout
from difflens.data.sources import SCALES, TOYS, load, parse_params

__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "SCALES",
    "TOYS",
    "DataStats",
    "Dataset",
    "as_dataset",
    "check_same_layout",
    "convert",
    "load",
    "parse_params",
]
