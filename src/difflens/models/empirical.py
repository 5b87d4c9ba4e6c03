"""The kernel as a denoiser: the empirical optimal denoiser of a training set, optionally smoothed.

:class:`EmpiricalDenoiser` is the posterior mean E_T[x0 | x̃] over the training points at temperature
T(s) = T·max(s_c/s, 1) (docs/method.md, "Smoothing"): T = 1 with no collapse
level s_c and no K is the exact empirical optimal denoiser (the oracle); T > 1 raises the
temperature at all levels, s_c only below s_c; K truncates each query's posterior to its K nearest
training points. Every place that needs the kernel as a ``Denoiser`` (the oracle model spec, the
smoothed training targets, closed-form samplers, the toy lab) uses this one class.
"""

from __future__ import annotations

import numpy as np
import torch

from difflens.data import Dataset, as_dataset
from difflens.diffusion.denoiser import Sigma
from difflens.errors import DifflensError
from difflens.kernel import oracle
from difflens.kernel.neighbours import nearest


class EmpiricalDenoiser(torch.nn.Module):
    """Temperature-smoothed (and optionally K-nearest truncated) empirical optimal denoiser.

    ``device`` is where the kernel runs: queries are sent there and answers come back on the
    queries' own device, in their dtype (float32 for integer queries)."""

    def __init__(
        self,
        data: Dataset | np.ndarray | torch.Tensor,
        temperature: float = 1.0,
        collapse_sigma: float | None = None,
        k: int | None = None,
        chunk_size: int | None = None,
        device: torch.device | str = "cpu",
    ):
        super().__init__()
        self.data = as_dataset(data)
        if not temperature > 0:
            raise DifflensError(f"temperature must be > 0, got {temperature}")
        if collapse_sigma is not None and not collapse_sigma > 0:
            raise DifflensError(f"the collapse level s_c must be > 0, got {collapse_sigma}")
        if k is not None and not 1 <= k <= self.data.n:
            raise DifflensError(f"K must be in 1…{self.data.n} (the training set size), got {k}")
        self.temperature = float(temperature)
        self.collapse_sigma = collapse_sigma
        self.k = k
        self.chunk_size = chunk_size
        self.device = torch.device(device)

    def temperature_at(self, sigma: torch.Tensor) -> torch.Tensor:
        """T(s) = T·max(s_c/s, 1) (just T without a collapse level)."""
        t = torch.full_like(sigma, self.temperature)
        if self.collapse_sigma is not None:
            t = t * torch.clamp(self.collapse_sigma / sigma, min=1.0)
        return t

    def posterior(self, x: torch.Tensor, sigma: Sigma) -> oracle.Posterior:
        """Posterior statistics at T(s), computed on ``device``; with K, each query's posterior over its
        exact K nearest training points (one kernel call per query, restricted with ``include``)."""
        x = torch.as_tensor(x).reshape(len(x), -1).to(self.device)
        s = oracle.as_sigma(sigma, len(x)).to(self.device)
        t = self.temperature_at(s)
        if self.k is None or self.k == self.data.n:
            return oracle.posterior(x, self.data, s, t, chunk_size=self.chunk_size)
        idx = nearest(x, self.data, self.k, chunk_size=self.chunk_size).index
        parts = [
            oracle.posterior(x[b : b + 1], self.data, s[b : b + 1], t[b : b + 1], include=np.sort(idx[b]))
            for b in range(len(x))
        ]
        return oracle.Posterior(
            *(torch.cat([getattr(p, f) for p in parts]) for f in oracle.Posterior.__dataclass_fields__)
        )

    def forward(self, x: torch.Tensor, sigma: Sigma) -> torch.Tensor:
        x = torch.as_tensor(x)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return self.posterior(x, sigma).mean.to(device=x.device, dtype=dtype).reshape(x.shape)
