"""The one ``Denoiser`` protocol: D(x̃, σ) → x̂0 in VE form (x̃ = x0 + σ·ε).

Samplers, adapters, the kernel-as-denoiser and the labs all speak it (docs/architecture.md). It lives
at the lowest layer that calls denoisers (the samplers); ``difflens.models`` re-exports it as the
public home of everything that is a denoiser.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

Sigma = float | np.ndarray | torch.Tensor


@runtime_checkable
class Denoiser(Protocol):
    def __call__(self, x: torch.Tensor, sigma: Sigma) -> torch.Tensor:
        """E[x0 | x̃] estimate, shape and device of x, for VE-form x̃ (B, …) at levels sigma (scalar or (B,))."""


def wide_dtype(device: torch.device | str) -> torch.dtype:
    """float64 for sampler states and level arithmetic, except on devices without it (Apple's mps): float32."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64
