"""Devices: which one the kernel (or a model) runs on, refused in one line when it is not there."""

from __future__ import annotations

import torch

from difflens.errors import DifflensError

_KINDS = "cpu, cuda, cuda:N or mps"


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The torch device for ``name`` (None → cpu), or a DifflensError naming what is missing here."""
    if name is None:
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DifflensError(f"--device {name}: not a device (use {_KINDS})") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DifflensError(f"--device {name}: CUDA is not available here")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DifflensError(f"--device {name}: only {count} CUDA device(s) here, cuda:0…cuda:{count - 1}")
        return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise DifflensError(f"--device {name}: MPS is not available here")
        return device
    raise DifflensError(f"--device {name}: unsupported device type (use {_KINDS})")


def device_of(x: object) -> torch.device:
    """A tensor's device; the CPU for anything else (NumPy ≥ 2 arrays have a ``device`` that is a string)."""
    return x.device if torch.is_tensor(x) else torch.device("cpu")
