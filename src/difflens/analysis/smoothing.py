"""Smoothing the empirical score (Zhou, Zhang & Wright 2026; docs/method.md, "Smoothing").

The empirical optimal denoiser puts all posterior weight on the nearest training point as s → 0, so
closed-form samplers reproduce training points ("sampling collapse"). Two remedies, both as
denoisers ``D(x (B, D), sigma) -> x0_hat`` in VE form that plug into :mod:`difflens.diffusion.samplers`:

* :class:`EmpiricalDenoiser` (the kernel as a denoiser, from ``difflens.models.empirical``) — the
  posterior mean at temperature T(s) = T·max(s_c/s, 1) (raise T at all levels, or only below a
  collapse level s_c), optionally truncated to each query's K nearest training points. T = 1, no
  s_c, no K is the exact empirical optimal denoiser.
* :class:`TemperatureScore` (from ``difflens.models.empirical``) — the paper's Eq. 10: the p_MN score
  over the K nearest training points of a query's clean source, each at its best shell, at temperature
  T = max(σ_collapse/σ, 1); a training target (it needs the source); ``form="official"`` is the
  authors' code's version of the same sum. ``run_smooth_score`` writes it for a file of queries
  (``difflens smooth score``).
* :class:`UnconditionedMixture` — the minimizer of a noise-unconditioned network: the score of
  p_MN(x) ∝ Σ_i Σ_j σ_i² N(x; x_j, σ_i² I) over the training noise levels σ_i. Its weights are a
  softmax over (i, j) of −(D−2)·ln σ_i − ‖x − x_j‖²/(2σ_i²); they factor into a softmax over
  levels of (log-normalizer of level i − (D−2)·ln σ_i) times the ordinary posterior over j at σ_i,
  so each level is one exact kernel call (the kernel's log_norm) and levels combine by a float64
  log-sum-exp — exact, and free of the float32 range problems of stacking all (i, j) in one call.

Plus :func:`expansion_factor` γ_ex = ‖y′ − x′‖/‖y − x‖ for nearby states one sampler step later.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from difflens.analysis.run_support import open_data, save_npy
from difflens.data import Dataset, as_dataset
from difflens.diffusion import samplers
from difflens.diffusion.denoiser import Denoiser, Sigma
from difflens.errors import DifflensError
from difflens.kernel import oracle
from difflens.models.empirical import EmpiricalDenoiser, TemperatureScore
from difflens.models.load import load_callable

__all__ = [
    "EmpiricalDenoiser",
    "TemperatureScore",
    "UnconditionedMixture",
    "expansion_factor",
    "run_smooth_score",
    "smoothed_target",
    "summarize_expansion",
]


def smoothed_target(
    x_noisy: torch.Tensor,
    sigma: Sigma,
    data: Dataset | np.ndarray | torch.Tensor,
    temperature: float = 1.0,
    collapse_sigma: float | None = None,
    k: int | None = None,
) -> torch.Tensor:
    """Training target E_T[x0 | x̃] at T(s) = T·max(s_c/s, 1): what a temperature-smoothed trainer regresses on."""
    return EmpiricalDenoiser(data, temperature, collapse_sigma, k)(x_noisy, sigma)


class UnconditionedMixture:
    """Score of p_MN(x) ∝ Σ_i Σ_j σ_i² N(x; x_j, σ_i² I), the optimum of a noise-unconditioned network."""

    def __init__(self, data, sigmas, chunk_size: int | None = None):
        self.data = as_dataset(data)
        s = np.asarray(sigmas, dtype=np.float64).reshape(-1)
        if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise DifflensError("the training noise levels of p_MN must be finite and > 0")
        self.sigmas = torch.from_numpy(np.unique(s))
        self.chunk_size = chunk_size

    def _levels(self, x: torch.Tensor):
        """Per level i: log Σ_j exp(−‖x−x_j‖²/(2σ_i²)) (B, L) and the posterior mean over j (L, B, D).
        One kernel call: each query is repeated once per level with that level's σ."""
        n_lev, batch = len(self.sigmas), len(x)
        q = x[None].expand(n_lev, -1, -1).reshape(n_lev * batch, -1)
        post = oracle.posterior(q, self.data, self.sigmas.repeat_interleave(batch), chunk_size=self.chunk_size)
        return post.log_norm.reshape(n_lev, batch).T, post.mean.reshape(n_lev, batch, -1)

    def _shell_logits(self, log_norm: torch.Tensor) -> torch.Tensor:
        return log_norm - (self.data.dim - 2) * torch.log(self.sigmas)[None, :]

    def shell_weights(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """π_i(x) = Σ_j w_ij: how much each training noise level ("shell") contributes at x (B, L)."""
        log_norm, _ = self._levels(torch.as_tensor(x).reshape(len(x), -1))
        return torch.softmax(self._shell_logits(log_norm), 1)

    def log_density(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """log p_MN(x) up to an additive constant (the same for all x)."""
        log_norm, _ = self._levels(torch.as_tensor(x).reshape(len(x), -1))
        return torch.logsumexp(self._shell_logits(log_norm), 1)

    def score(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """∇ log p_MN(x) = −Σ_ij w_ij (x − x_j)/σ_i² (float64, (B, D))."""
        x = torch.as_tensor(x).reshape(len(x), -1).double()
        log_norm, means = self._levels(x)
        pi = torch.softmax(self._shell_logits(log_norm), 1)  # (B, L)
        inv = 1.0 / self.sigmas**2  # (L,)
        return torch.einsum("bl,lbd->bd", pi * inv[None, :], means) - (pi @ inv)[:, None] * x

    def effective_sigma(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(Σ_i π_i/σ_i²)^(−1/2): the single noise level whose Gaussian score has the same stiffness at x.
        (T_eff = effective_sigma²/s² is the temperature the mixture acts at relative to a level s.)"""
        return (self.shell_weights(x) @ (1.0 / self.sigmas**2)) ** -0.5

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """As a denoiser for the samplers: D(x, s) = x + s²·score(x) (the network never sees s)."""
        x = torch.as_tensor(x)
        s = oracle.as_sigma(sigma, len(x)).to(torch.float64)
        return (x.double() + (s * s)[:, None] * self.score(x)).to(x.dtype)


def run_smooth_score(
    data: str,
    queries: Path,
    sources: Path,
    sigma: float,
    out: Path,
    *,
    collapse: float | None = None,
    k: int | None = None,
    feature: str | None = None,
    scale: str = "auto",
    form: str = "paper",
) -> np.ndarray:
    """Eq. 10 target for each row of the .npy ``queries`` (row i has the clean source data[S[i]], S the
    .npy of integer indices ``sources``) at level ``sigma``, as printed (``form="paper"``) or as the
    authors' code computes it (``"official"``); written to ``out`` (.npy, float64) and returned."""
    if form == "official" and collapse is not None:
        raise DifflensError("the official Eq. 10 form has a fixed temperature √D: σ_collapse does not enter it")
    ds = open_data(data, scale)
    q, src = _read_npy(queries, "queries"), _read_npy(sources, "sources")
    if q.ndim < 2 or q.dtype.kind not in "fiu":
        raise DifflensError(f"queries must be a numeric array of shape (n, …), got {q.dtype} {q.shape}")
    if src.dtype.kind not in "iu":
        raise DifflensError(f"sources must hold integer indices into the data, got dtype {src.dtype}")
    fmap = load_callable(feature, "feature map") if feature else None
    score = TemperatureScore(ds, collapse, k, feature=fmap, form=form)
    target = score(torch.from_numpy(q.reshape(len(q), -1)), src, sigma)
    result = target.numpy()
    save_npy(Path(out), result)
    return result


def _read_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DifflensError(f"cannot read {what} {path}: {exc}") from None


@torch.no_grad()
def expansion_factor(
    denoiser: Denoiser,
    trajectory: samplers.Trajectory,
    *,
    method: str = "euler",
    eps: float = 1e-2,
    seed: int = 0,
) -> np.ndarray:
    """γ_ex per recorded step and sample (steps, B): perturb each state x at level s_k by eps·s_k in a
    random direction, take one ODE step with both, and return ‖y′ − x′‖/‖y − x‖. Near 1 or below
    means nearby states stay nearby; ≫ 1 means the step tears neighbourhoods apart (collapse
    boundaries of the empirical score). The final jump to s = 0 (x ← D(x, s_min), a projection
    rather than a flow step) is left out."""
    if not trajectory.states:
        raise DifflensError("the trajectory has no recorded states (sample with record=True)")
    if method not in ("euler", "heun"):
        raise DifflensError(f"expansion factors use an ODE step (euler or heun), got {method!r}")
    gen = samplers.seeded_generator(seed, 2)
    sig = [float(v) for v in trajectory.sigmas]
    out = []
    for k, x in enumerate(trajectory.states):
        s, s_next = sig[k], sig[k + 1]
        if s_next == 0:
            break
        u = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
        u = u / torch.linalg.vector_norm(u, dim=1, keepdim=True)
        y = x + eps * s * u
        both = samplers.ode_step(denoiser, torch.cat([x, y]), s, s_next, method)
        xn, yn = both[: len(x)], both[len(x) :]
        out.append((torch.linalg.vector_norm(yn - xn, dim=1) / (eps * s)).cpu().numpy())
    return np.stack(out)


def summarize_expansion(gamma: np.ndarray, sigmas: torch.Tensor | np.ndarray) -> list[dict]:
    """Median, 90th percentile and max γ_ex per level, and the running log-product (end-to-end growth)."""
    rows, log_total = [], np.zeros(gamma.shape[1])
    for k, g in enumerate(gamma):
        log_total = log_total + np.log(np.maximum(g, 1e-300))
        rows.append(
            {
                "sigma": float(sigmas[k]),
                "median": float(np.median(g)),
                "q90": float(np.quantile(g, 0.9)),
                "max": float(g.max()),
                "median_log10_cumulative": float(np.median(log_total) / math.log(10)),
            }
        )
    return rows
