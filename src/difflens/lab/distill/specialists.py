"""Light specialist classes: one conditional model per task, fitted on that task's few pairs
(docs/method.md, "Specialist classes").

Each is a tiny class with one interface: ``fit(pairs)`` (returns self), ``sample(cond, generator)``
(one draw of x ~ p̂(x | c) per condition row) and, for the exact metrics and the Tchebycheff ideal
point, the denoiser call ``spec(x, sigma, cond, task) -> E[x0 | x, c]`` of its own fitted model with
``sigma_data`` and ``params()`` (its number of fitted numbers). Classes:

- ``linear``: x | c ~ N(A·c + b, Σ), ridge regression with the ridge chosen by leave-one-out error
  and Σ the leave-one-out residual covariance (closed form; fits from one pair);
- ``mlp``: a small EDM-preconditioned conditional MLP trained by DSM, sampled by the EDM sampler;
- ``kernel``: the empirical conditional distribution Σ_i w_i(c)·δ(x − x_i), w_i(c) ∝ exp(−‖c − c_i‖²/(2h²)),
  whose exact denoiser is the kernel's posterior over the task's pairs with condition log-weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from difflens.errors import DifflensError
from difflens.lab.distill.settings import ModelSpec, SamplerSpec, data_sigma
from difflens.lab.distill.train import DSMConfig, Pairs, train_dsm


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(len(t), -1).double()


class _Fitted:
    """Shared bookkeeping: shapes and σ_data of the fitted pairs, a guard against use before ``fit``."""

    x_shape: tuple[int, ...] | None = None
    sigma_data: float = 0.5

    def _remember(self, pairs: Pairs) -> tuple[torch.Tensor, torch.Tensor]:
        if len(pairs) < 1:
            raise DifflensError("a specialist needs at least one pair")
        self.x_shape = tuple(pairs.x.shape[1:])
        self.sigma_data = data_sigma([pairs])
        return _flat(pairs.cond), _flat(pairs.x)

    def _check(self) -> tuple[int, ...]:
        if self.x_shape is None:
            raise DifflensError(f"{type(self).__name__} used before fit")
        return self.x_shape


class LinearGaussian(_Fitted):
    """x | c ~ N(A·c + b, Σ) (docs/method.md, "Specialist classes").

    (A, b): ridge regression of x on c with an unpenalised intercept; the ridge λ minimises the
    leave-one-out squared error over a log grid (closed form through the hat matrix), so with fewer
    pairs than condition dimensions the fit shrinks instead of interpolating. Σ: the covariance of the
    leave-one-out residuals, i.e. the error of predicting an unseen pair — not the in-sample residuals,
    which vanish once n ≤ dim(c) + 1. One pair: A = 0, b = x₁, Σ = 0."""

    GRID = torch.logspace(-8, 4, 49, dtype=torch.float64)  # λ / (largest squared singular value of C)

    def __init__(self, clip: float | None = None):
        self.clip = clip

    def fit(self, pairs: Pairs) -> LinearGaussian:
        c, x = self._remember(pairs)
        n = len(x)
        c_mean, x_mean = c.mean(0), x.mean(0)
        cc, xc = c - c_mean, x - x_mean
        self.A = torch.zeros(x.shape[1], c.shape[1], dtype=torch.float64)
        self.ridge, resid = 0.0, torch.zeros_like(x)
        u, s, vt = torch.linalg.svd(cc, full_matrices=False)
        keep = s > s.max() * 1e-12  # none when all conditions coincide (or n = 1)
        u, s, vt = u[:, keep], s[keep], vt[keep]
        if n > 1 and len(s):
            uxc = u.T @ xc
            best = math.inf
            for lam in self.GRID * s.max() ** 2:
                shrink = s**2 / (s**2 + lam)
                hat = 1.0 / n + (u**2 * shrink).sum(1)  # H_ii of the intercept + ridge fit
                loo = (xc - u @ (shrink[:, None] * uxc)) / (1 - hat)[:, None]
                err = float(loo.pow(2).sum())
                if err < best:
                    best, self.ridge, resid = err, float(lam), loo
            self.A = ((vt.T * (s / (s**2 + self.ridge))) @ uxc).T
        elif n > 1:
            resid = xc * (n / (n - 1))  # constant conditions: leave-one-out error of the mean
        self.b = x_mean - self.A @ c_mean
        self.cov = resid.T @ resid / n
        evals, self._evecs = torch.linalg.eigh(self.cov)
        self._evals = evals.clamp_min(0)
        return self

    def mean(self, cond: torch.Tensor) -> torch.Tensor:
        return _flat(cond) @ self.A.T + self.b

    def sample(self, cond: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shape = self._check()
        z = torch.randn(len(cond), len(self.b), generator=generator, dtype=torch.float64)
        x = self.mean(cond) + (z * self._evals.sqrt()) @ self._evecs.T
        x = x.float().reshape(len(cond), *shape)
        return x.clamp(-self.clip, self.clip) if self.clip is not None else x

    def __call__(self, x, sigma, cond, task=None) -> torch.Tensor:
        """Tweedie for a Gaussian: E[x0 | x, c] = μ + Σ(Σ + σ²I)⁻¹(x − μ), in Σ's eigenbasis."""
        self._check()
        mu = self.mean(cond)
        s2 = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1) ** 2
        proj = (_flat(x) - mu) @ self._evecs
        out = mu + (proj * self._evals / (self._evals + s2)) @ self._evecs.T
        return out.to(x.dtype).reshape(x.shape)

    def params(self) -> int:
        d = len(self.b)
        return self.A.numel() + d + d * (d + 1) // 2


class Sampled(_Fitted):
    """A fixed conditional denoiser (e.g. an analytic one) as a specialist, sampled by the EDM sampler."""

    def __init__(self, net, x_shape, sampler: SamplerSpec | None = None, sigma_data: float = 0.5):
        self.net, self.sampler, self.sigma_data = net, sampler or SamplerSpec(), sigma_data
        self.x_shape = None if x_shape is None else tuple(x_shape)

    @property
    def device(self) -> torch.device:
        """Where the network lives (training and sampling run there); the CPU for a plain function."""
        return getattr(self.net, "device", torch.device("cpu"))

    def sample(self, cond: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.sampler(self.net, cond, 0, self._check(), generator)

    def __call__(self, x, sigma, cond, task=None) -> torch.Tensor:
        self._check()
        return self.net(x, sigma, cond, torch.zeros(len(x), dtype=torch.long, device=x.device))

    def params(self) -> int:
        return sum(p.numel() for p in self.net.parameters()) if isinstance(self.net, torch.nn.Module) else 0


class MLPSpecialist(Sampled):
    """A small conditional denoiser trained by DSM on the task's pairs, sampled by the EDM sampler."""

    def __init__(self, model: ModelSpec, config: DSMConfig, sampler: SamplerSpec, seed: int = 0, progress=None):
        super().__init__(None, None, sampler)
        self.model, self.config, self.seed, self.progress = model, config, seed, progress

    def fit(self, pairs: Pairs) -> MLPSpecialist:
        self._remember(pairs)
        self.net = self.model.build(pairs.x.shape[1:], pairs.cond.shape[1:], 1, self.sigma_data, self.seed)
        cfg = DSMConfig(**{**self.config.__dict__, "seed": self.seed})
        train_dsm(self.net, [pairs], config=cfg, progress=self.progress)
        return self


class KernelSpecialist(_Fitted):
    """The empirical conditional distribution of the task's pairs, smoothed in the condition only:
    p̂(x | c) = Σ_i w_i(c)·δ(x − x_i), w_i(c) = softmax_i(−‖c − c_i‖²/(2h²)) (Nadaraya–Watson).

    ``h`` = ``bandwidth`` × Scott's factor n^(−1/(d_c + 4)) × the conditions' RMS per-dimension standard
    deviation. Its exact denoiser is the kernel's posterior over the pairs with per-query log-weights
    log w_i(c): E[x0 | x, c] = Σ_i x_i·softmax_i(log w_i(c) − ‖x − x_i‖²/(2σ²)); sampling it exactly
    needs no diffusion: pick pair i with probability w_i(c) and return x_i."""

    def __init__(self, bandwidth: float = 1.0):
        if not bandwidth > 0:
            raise DifflensError(f"kernel bandwidth must be > 0, got {bandwidth}")
        self.bandwidth = bandwidth

    def fit(self, pairs: Pairs) -> KernelSpecialist:
        self.c, self.x = self._remember(pairs)
        n, dc = self.c.shape
        spread = float(self.c.var(0).mean().sqrt()) if n > 1 else 0.0
        self.h = self.bandwidth * (spread if spread > 0 else 1.0) * n ** (-1.0 / (dc + 4))
        return self

    def log_weights(self, cond: torch.Tensor) -> torch.Tensor:
        """log w_i(c): (B, n), float64, rows normalised."""
        self._check()
        logit = -torch.cdist(_flat(cond), self.c).pow(2) / (2 * self.h**2)
        return logit - torch.logsumexp(logit, dim=1, keepdim=True)

    def sample(self, cond: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shape = self._check()
        i = torch.multinomial(self.log_weights(cond).exp(), 1, generator=generator).squeeze(1)
        return self.x[i].float().reshape(len(cond), *shape)

    def __call__(self, x, sigma, cond, task=None) -> torch.Tensor:
        self._check()
        s2 = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1) ** 2
        logit = self.log_weights(cond) - torch.cdist(_flat(x), self.x).pow(2) / (2 * s2)
        return (torch.softmax(logit, dim=1) @ self.x).to(x.dtype).reshape(x.shape)

    def params(self) -> int:
        return self.c.numel() + self.x.numel()


SPECIALISTS = ("linear", "mlp", "kernel")


def make_specialist(
    kind: str,
    *,
    model: ModelSpec | None = None,
    config: DSMConfig | None = None,
    sampler: SamplerSpec | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> LinearGaussian | MLPSpecialist | KernelSpecialist:
    """An unfitted specialist of class ``kind`` (one of ``SPECIALISTS``); ``model``/``config`` matter to
    ``mlp`` only, ``sampler`` to ``mlp`` (how it samples) and ``linear`` (its clip to the data range)."""
    sampler = sampler or SamplerSpec()
    if kind == "linear":
        return LinearGaussian(clip=sampler.clip)
    if kind == "mlp":
        return MLPSpecialist(model or ModelSpec(width=64, depth=2), config or DSMConfig(), sampler, seed, progress)
    if kind == "kernel":
        return KernelSpecialist()
    raise DifflensError(f"unknown specialist class {kind!r}; choose {', '.join(SPECIALISTS)}")
