"""Preconditioning in one place: the VE form (x̃ = x0 + s·ε, s) ↔ a network's own input and target.

A network trained on process (α_t, σ_t) sees x_t = α_t·x0 + σ_t·ε = α_t·x̃ and a time input; it
predicts a target y (docs/method.md, "Preconditioning"). Every parametrization is EDM-style (Karras et al. 2022):

    network input = c_in·x̃,  time input = c_noise,  x0 = c_skip·x̃ + c_out·y,

with (c_in, c_noise) = (α_t, t·time_scale) for a process's own targets and (1/√(s²+σ_d²), ln(s)/4)
for EDM's F. ``Parametrization.coefficients`` computes the four in torch on the input's device, so a
model on a GPU is preconditioned there; the trainer, every adapter, the diagnosis and the distill
lab's conditional nets all go through this class, nothing else converts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from difflens.diffusion.denoiser import wide_dtype
from difflens.diffusion.processes import (
    EDM,
    SIGMA_DATA,
    TARGETS,
    ArrayLike,
    Process,
    _arr,
    _xp,
    conversion_factor,
    edm_coefficients,
    get_process,
)
from difflens.errors import DifflensError


@dataclass(frozen=True)
class DiscreteVP(Process):
    """A discrete DDPM schedule (ᾱ_k, k = 0…K−1) with a fractional timestep t: log-SNR is linear in
    t between steps and extrapolated beyond them, so s_of_t(t_of_s(s)) = s for every s."""

    alphas_cumprod: tuple[float, ...] = field(default=())
    name = "ddpm-discrete"

    def _lam(self, like) -> tuple:
        """(log SNR per step, decreasing in k; step numbers k) in like's namespace (and device)."""
        ac = np.asarray(self.alphas_cumprod, dtype=np.float64)
        lam, k = np.log(ac) - np.log1p(-ac), np.arange(len(ac), dtype=np.float64)
        if torch.is_tensor(like):
            return torch.as_tensor(lam, dtype=like.dtype, device=like.device), torch.as_tensor(
                k, dtype=like.dtype, device=like.device
            )
        return lam, k

    def s_of_t(self, t: ArrayLike) -> ArrayLike:
        t = _arr(t)
        lam, k = self._lam(t)
        inner = _interp(t, k, lam)
        lo = lam[0] + (t - 0) * (lam[1] - lam[0])
        hi = lam[-1] + (t - k[-1]) * (lam[-1] - lam[-2])
        xp = _xp(t)
        lam_t = xp.where(t < 0, lo, xp.where(t > k[-1], hi, inner))
        return xp.exp(-0.5 * lam_t)

    def t_of_s(self, s: ArrayLike) -> ArrayLike:
        s = _arr(s)
        lam, k = self._lam(s)
        xp = _xp(s)
        target = -2.0 * xp.log(s)
        inner = _interp(target, _reverse(lam), _reverse(k))
        lo = (target - lam[0]) / (lam[1] - lam[0])
        hi = k[-1] + (target - lam[-1]) / (lam[-1] - lam[-2])
        return xp.where(target > lam[0], lo, xp.where(target < lam[-1], hi, inner))

    def alpha(self, t: ArrayLike) -> ArrayLike:
        return 1.0 / _xp(t).sqrt(1.0 + self.s_of_t(t) ** 2)

    def sigma(self, t: ArrayLike) -> ArrayLike:
        return self.s_of_t(t) * self.alpha(t)


def _reverse(a):
    return torch.flip(a, [0]) if torch.is_tensor(a) else a[::-1]


def _interp(x, xp, fp):
    """np.interp (xp increasing, clamped at the ends), also for torch tensors on their device: the same
    arithmetic as NumPy's, slope·(x − xp[j]) + fp[j], so both give the same numbers."""
    if not torch.is_tensor(x):
        return np.interp(x, xp, fp)
    j = (torch.searchsorted(xp, x.contiguous(), right=True) - 1).clamp(0, len(xp) - 2)
    slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j])
    out = slope * (x - xp[j]) + fp[j]
    return torch.where(x < xp[0], fp[0], torch.where(x >= xp[-1], fp[-1], out))


@dataclass(frozen=True)
class Coefficients:
    """EDM-style preconditioning at a batch of levels: input = c_in·x̃, time = c_noise, x0 = c_skip·x̃ +
    c_out·y. c_skip, c_out, c_in are shaped (B, 1, …) to broadcast against x̃; c_noise is (B,)."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


@dataclass(frozen=True)
class Parametrization:
    """How a network sees noise: forward process, prediction target and time input scale.

    ``time_scale`` multiplies the time input (e.g. 1000 for a net trained with t ∈ [0, 1000]).
    For the ``edm`` target the time input is c_noise = ln(s)/4 and the input is c_in·x̃.
    ``noise_conditioned=False`` makes the network blind to s: its time input is the constant 0,
    while the scalings around it (c_in, c_skip, c_out, or α for other targets) still use s, as in
    noise-unconditioned EDM networks (Sun et al. 2025): s only enters outside the network."""

    process: Process = field(default_factory=EDM)
    target: str = "x0"
    time_scale: float = 1.0
    sigma_data: float = SIGMA_DATA
    noise_conditioned: bool = True

    def __post_init__(self):
        if self.target not in TARGETS:
            raise DifflensError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise DifflensError(f"time scale must be > 0, got {self.time_scale}")
        if not (math.isfinite(self.sigma_data) and self.sigma_data > 0):
            raise DifflensError(f"sigma_data must be > 0, got {self.sigma_data}")

    @classmethod
    def of(
        cls,
        process: str | Process = "edm",
        target: str = "x0",
        time_scale: float = 1.0,
        noise_conditioned: bool = True,
    ) -> Parametrization:
        proc = get_process(process) if isinstance(process, str) else process
        return cls(proc, target, float(time_scale), noise_conditioned=bool(noise_conditioned))

    def describe(self) -> dict:
        return {
            "process": self.process.name,
            "target": self.target,
            "time_scale": self.time_scale,
            "noise_conditioned": self.noise_conditioned,
        }

    def factor(self, s: ArrayLike) -> np.ndarray:
        """r(s): loss in target units = r · loss in x0 units (per level)."""
        s = _arr(s)
        if self.target == "edm":
            return 1.0 / edm_coefficients(s, self.sigma_data)[1] ** 2
        return conversion_factor(self.process, self.target, self.process.t_of_s(s))

    # ---- the coefficients, in torch on x's device

    def coefficients(self, s: ArrayLike, x: torch.Tensor) -> Coefficients:
        """c_skip, c_out, c_in, c_noise at levels s (B,) for inputs x (B, …): torch tensors on x's
        device in the promoted dtype of s and x (float64 levels keep float64 coefficients, except on a
        device without float64)."""
        s = torch.as_tensor(s)
        dtype = torch.promote_types(s.dtype, x.dtype) if s.is_floating_point() else x.dtype
        if dtype == torch.float64:
            dtype = wide_dtype(x.device)
        s = s.to(device=x.device, dtype=dtype).reshape(-1)
        if self.target == "edm":
            c_skip, c_out, c_in = edm_coefficients(s, self.sigma_data)
            noise = torch.log(s) / 4.0 * self.time_scale
        else:
            p = self.process
            t = p.t_of_s(s)
            c_in, noise = p.alpha(t), t * self.time_scale
            one = torch.ones_like(s)
            if self.target == "x0":
                c_skip, c_out = torch.zeros_like(s), one
            elif self.target == "eps":
                c_skip, c_out = one, -s
            elif self.target == "score":
                c_skip, c_out = one, s * p.sigma(t)
            elif self.target == "v":
                a2, sig = c_in * c_in, p.sigma(t)
                c_skip, c_out = a2 / (a2 + sig * sig), -sig / (a2 + sig * sig)
            else:  # flow: u = α̇ x0 + σ̇ ε, so x0 = (u − (σ̇/s)·x̃) / (α̇ − σ̇/s)
                da, ds = p.dalpha(t), p.dsigma(t)
                c_out = 1.0 / (da - ds / s)
                c_skip = -(ds / s) * c_out
        if not self.noise_conditioned:
            noise = torch.zeros_like(s)
        shape = (-1, *([1] * (x.ndim - 1)))
        return Coefficients(c_skip.reshape(shape), c_out.reshape(shape), c_in.reshape(shape), noise)

    # ---- VE form ↔ network input

    def inputs(self, x: torch.Tensor, s: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
        """(network input, time input) in x's dtype for VE-form x̃ (B, …) at levels s (B,); the time
        input is all zeros for a noise-unconditioned network."""
        c = self.coefficients(s, x)
        return x * c.c_in.to(x.dtype), c.c_noise.to(x.dtype)

    def sigma_of_time(self, t_in: torch.Tensor) -> torch.Tensor:
        """The VE level s a time input stands for (inverse of ``inputs``' time), on t_in's device."""
        if not self.noise_conditioned:
            raise DifflensError("a noise-unconditioned network's time input carries no noise level")
        t = t_in.detach().to(wide_dtype(t_in.device)) / self.time_scale
        return torch.exp(4.0 * t) if self.target == "edm" else self.process.s_of_t(t)

    def ve_input(self, x_in: torch.Tensor, s: ArrayLike) -> torch.Tensor:
        """VE-form x̃ from a network input at level s (inverse of ``inputs``' x)."""
        return x_in / self.coefficients(s, x_in).c_in.to(x_in.dtype)

    # ---- target ↔ x0

    def to_x0(self, y: torch.Tensor, x: torch.Tensor, s: ArrayLike) -> torch.Tensor:
        """x0 estimate c_skip·x̃ + c_out·y from a target prediction y, given the VE-form x̃ and s
        (computed in the coefficients' precision, returned in x's dtype)."""
        c = self.coefficients(s, x)
        w = torch.promote_types(c.c_out.dtype, y.dtype)
        return (c.c_skip.to(w) * x.to(w) + c.c_out.to(w) * y.to(w)).to(x.dtype)

    def target_of(self, x0: torch.Tensor, x: torch.Tensor, s: ArrayLike) -> torch.Tensor:
        """The true target y = (x0 − c_skip·x̃)/c_out for clean x0 and its VE-form noisy x̃ at level s."""
        c = self.coefficients(s, x)
        w = torch.promote_types(c.c_out.dtype, x0.dtype)
        return ((x0.to(w) - c.c_skip.to(w) * x.to(w)) / c.c_out.to(w)).to(x.dtype)
