"""The kernel as a denoiser: the empirical optimal denoiser of a training set, optionally smoothed.

:class:`EmpiricalDenoiser` is the posterior mean E_T[x0 | x̃] over the training points at temperature
T(s) = T·max(s_c/s, 1) (docs/method.md, "Smoothing"): T = 1 with no collapse
level s_c and no K is the exact empirical optimal denoiser (the oracle); T > 1 raises the
temperature at all levels, s_c only below s_c; K truncates each query's posterior to its K nearest
training points. Every place that needs the kernel as a ``Denoiser`` (the oracle model spec, the
smoothed training targets, closed-form samplers, the toy lab) uses this one class.

:class:`TemperatureScore` is the paper's own smoothing (Zhou, Zhang & Wright, Eq. 10): the score of the
noise-*un*conditioned mixture p_MN over the K nearest training points of a query's clean source, each
at its own best shell, at temperature T(σ) = max(σ_c/σ, 1). It is a training target (it needs the
source), not a denoiser. ``form="official"`` is the same sum as the authors' released code computes it
(``EQ10_FORMS``; docs/method.md, "Smoothing").
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch

from difflens.data import Dataset, as_dataset
from difflens.diffusion.denoiser import Sigma
from difflens.errors import DifflensError
from difflens.kernel import oracle
from difflens.kernel.neighbours import Feature, nearest

_GATHER_BUDGET = 1 << 24  # float64 values of gathered neighbour rows held at once (queries × K × D)

# The two readings of Eq. 10 (docs/method.md, "Smoothing"): "paper" is the equation as printed, softmax of
# f_j/T_i with f_j = −(D−2)·ln σ*_j − r_j²/(2σ*_j²) and components −(x − μ_j)/σ*_j²; "official" is the
# authors' released code, log-weights −(D/(2√D))·ln(r_j²/D) (a fixed temperature √D, no σ_collapse/σ_i)
# and components −(x − μ_j)/σ_i² (the training level, not the shell).
EQ10_FORMS = ("paper", "official")


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


class TemperatureScore:
    """The temperature-smoothed p_MN score of Zhou, Zhang & Wright, Eq. 10 (docs/method.md, "Smoothing").

    For a noisy x whose clean source is training point μ, over the K nearest training points μ_j of
    μ (pixel space, or the space of ``feature``; μ itself is among them), each at its best shell
    σ*_j = ‖x − μ_j‖/√D with log-weight f_j = −(D−2)·ln σ*_j − ‖x − μ_j‖²/(2σ*_j²):

        target(x) = Σ_j softmax_j(f_j / T)·(−(x − μ_j)/σ*_j²),   T = max(σ_collapse/σ, 1)

    (T = 1 without a collapse level). ``form="official"`` (the authors' code) instead weights by
    softmax_j(−(D/(2√D))·ln(r_j²/D)) at every σ and divides each component by σ² rather than σ*_j²; its
    σ_collapse only marks where a trainer uses the target. Computed in float64 from the float32 training
    rows; the neighbour table of each source is found once (exactly, by ``kernel.neighbours.nearest``)
    and cached. K = None or K = N uses every training point."""

    def __init__(
        self,
        data,
        collapse_sigma: float | None = None,
        k: int | None = None,
        feature: Feature | None = None,
        chunk_size: int | None = None,
        form: str = "paper",
    ):
        self.data = as_dataset(data)
        n = self.data.n
        if form not in EQ10_FORMS:
            raise DifflensError(f"unknown Eq. 10 form {form!r}; choose one of {', '.join(EQ10_FORMS)}")
        self.form = form
        if collapse_sigma is not None and not (np.isfinite(collapse_sigma) and collapse_sigma > 0):
            raise DifflensError(f"the collapse level σ_collapse must be finite and > 0, got {collapse_sigma}")
        if k is not None and not 1 <= k <= n:
            raise DifflensError(f"K must be in 1…{n} (the training set size), got {k}")
        self.collapse_sigma = collapse_sigma
        self.k = n if k is None else int(k)
        self.feature = feature
        self.chunk_size = chunk_size
        self._table = np.full((n, self.k), -1, dtype=np.int64) if self.k < n else None

    def temperature_at(self, sigma: torch.Tensor) -> torch.Tensor:
        """T_i = max(σ_collapse/σ_i, 1) (1 at every level without a collapse level), float64."""
        sigma = sigma.to(torch.float64)
        if self.collapse_sigma is None:
            return torch.ones_like(sigma)
        return torch.clamp(self.collapse_sigma / sigma, min=1.0)

    def neighbours(self, sources: npt.ArrayLike) -> np.ndarray:
        """Indices (B, K) of the K nearest training points of each source (the source among them)."""
        src = _check_sources(sources, self.data.n)
        if self._table is None:
            return np.broadcast_to(np.arange(self.data.n), (len(src), self.k))
        missing = np.unique(src[self._table[src, 0] < 0])
        if len(missing):
            found = nearest(
                self.data.take(missing), self.data, self.k, feature=self.feature, chunk_size=self.chunk_size
            )
            self._table[missing] = found.index
        return self._table[src]

    def __call__(self, x, sources, sigma: Sigma) -> torch.Tensor:
        """Eq. 10 target for queries x (B, D) with clean sources ``sources`` (B,) at levels sigma: (B, D) float64."""
        x = torch.as_tensor(x).reshape(len(x), -1).to(torch.float64)
        if x.shape[1] != self.data.dim:
            raise DifflensError(f"queries have {x.shape[1]} values, the training samples {self.data.dim}")
        if not torch.isfinite(x).all():
            raise DifflensError("queries must be finite")
        idx = self.neighbours(sources)
        if len(idx) != len(x):
            raise DifflensError(f"need one source per query: {len(idx)} sources for {len(x)} queries")
        s = oracle.as_sigma(sigma, len(x)).cpu().to(torch.float64)
        temp = self.temperature_at(s)
        out = torch.empty_like(x)
        step = max(1, _GATHER_BUDGET // (self.k * self.data.dim))
        for b in range(0, len(x), step):
            rows = slice(b, b + step)
            out[rows] = self._target(x[rows], idx[rows], temp[rows], s[rows])
        return out

    def _target(self, x: torch.Tensor, idx: np.ndarray, temp: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        d = self.data.dim
        uniq, inverse = np.unique(idx, return_inverse=True)
        rows = self.data.take(uniq).to(torch.float64)
        mu = rows[torch.from_numpy(inverse.reshape(idx.shape))]  # (b, K, D)
        diff = x[:, None, :] - mu
        r2 = (diff * diff).sum(-1)  # ‖x − μ_j‖², (b, K)
        if (r2 == 0).any():
            raise DifflensError("a query coincides with one of its training neighbours: Eq. 10 is singular there")
        shell2 = r2 / d  # σ*_j²
        if self.form == "official":
            logit = -(d / (2.0 * math.sqrt(d))) * torch.log(shell2)
            scale = (sigma * sigma)[:, None].expand_as(r2)
        else:
            logit = (-(d - 2) * 0.5 * torch.log(shell2) - r2 / (2.0 * shell2)) / temp[:, None]
            scale = shell2
        w = torch.softmax(logit, dim=1)
        return -torch.einsum("bk,bkd->bd", w / scale, diff)


def _check_sources(sources, n: int) -> np.ndarray:
    src = np.asarray(sources)
    if src.ndim != 1 or not (np.issubdtype(src.dtype, np.integer) or src.size == 0):
        raise DifflensError(f"sources must be a 1-D array of training-set indices, got {src.dtype} {src.shape}")
    src = src.astype(np.int64)
    if src.size and (src.min() < 0 or src.max() >= n):
        raise DifflensError(f"source indices must be in 0…{n - 1}, got {src.min()}…{src.max()}")
    return src
