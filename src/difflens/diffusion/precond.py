"""Preconditioning in one place: the VE form (x̃ = x0 + s·ε, s) ↔ a network's own input and target.

A network trained on process (α_t, σ_t) sees x_t = α_t·x0 + σ_t·ε = α_t·x̃ and a time input; it
predicts a target y (docs/method.md, "Preconditioning").
``Parametrization`` maps a VE-form query to the network's input,
the network's output back to x0, and x0 to the target (for training losses). The EDM target ``edm``
is Karras et al.'s F with c_in, c_noise, c_skip, c_out, defined directly on s (any process).
Every adapter, the trainer and the diagnosis go through this class, nothing else converts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from difflens.diffusion.processes import EDM, SIGMA_DATA, TARGETS, Process, conversion_factor, get_process
from difflens.errors import DifflensError


@dataclass(frozen=True)
class DiscreteVP(Process):
    """A discrete DDPM schedule (ᾱ_k, k = 0…K−1) with a fractional timestep t: log-SNR is linear in
    t between steps and extrapolated beyond them, so s_of_t(t_of_s(s)) = s for every s."""

    alphas_cumprod: tuple[float, ...] = field(default=())
    name = "ddpm-discrete"

    def _lam(self) -> np.ndarray:
        ac = np.asarray(self.alphas_cumprod, dtype=np.float64)
        return np.log(ac) - np.log1p(-ac)  # log SNR = log(ᾱ/(1−ᾱ)), decreasing in k

    def s_of_t(self, t):
        lam = self._lam()
        k = np.arange(len(lam), dtype=np.float64)
        t = np.asarray(t, dtype=np.float64)
        inner = np.interp(t, k, lam)
        lo = lam[0] + (t - 0) * (lam[1] - lam[0])
        hi = lam[-1] + (t - k[-1]) * (lam[-1] - lam[-2])
        lam_t = np.where(t < 0, lo, np.where(t > k[-1], hi, inner))
        return np.exp(-0.5 * lam_t)

    def t_of_s(self, s):
        lam = self._lam()
        k = np.arange(len(lam), dtype=np.float64)
        target = -2.0 * np.log(np.asarray(s, dtype=np.float64))
        inner = np.interp(target, lam[::-1], k[::-1])
        lo = (target - lam[0]) / (lam[1] - lam[0])
        hi = k[-1] + (target - lam[-1]) / (lam[-1] - lam[-2])
        return np.where(target > lam[0], lo, np.where(target < lam[-1], hi, inner))

    def alpha(self, t):
        return 1.0 / np.sqrt(1.0 + self.s_of_t(t) ** 2)

    def sigma(self, t):
        return self.s_of_t(t) * self.alpha(t)


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

    # ---- coefficients, as (B, 1, …) float64 tensors broadcastable against x

    def _coef(self, values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float64).reshape(-1, *([1] * (like.ndim - 1)))

    def _proc(self, s: torch.Tensor):
        s_np = s.detach().double().cpu().numpy()
        t = self.process.t_of_s(s_np)
        return s_np, t

    def _edm(self, s_np: np.ndarray):
        sd = self.sigma_data
        c_skip = sd**2 / (s_np**2 + sd**2)
        c_out = s_np * sd / np.sqrt(s_np**2 + sd**2)
        c_in = 1.0 / np.sqrt(s_np**2 + sd**2)
        return c_skip, c_out, c_in

    def factor(self, s) -> np.ndarray:
        """r(s): loss in target units = r · loss in x0 units (per level)."""
        s_np = np.asarray(s, dtype=np.float64)
        if self.target == "edm":
            return 1.0 / self._edm(s_np)[1] ** 2
        return conversion_factor(self.process, self.target, self.process.t_of_s(s_np))

    # ---- VE form → network input

    def inputs(self, x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(network input, time input) for VE-form x̃ (B, …) at levels s (B,); the time input is all
        zeros for a noise-unconditioned network."""
        s_np, t = self._proc(s)
        if self.target == "edm":
            scale, time = self._edm(s_np)[2], np.log(s_np) / 4.0 * self.time_scale
        else:
            scale, time = self.process.alpha(t), t * self.time_scale
        if not self.noise_conditioned:
            time = np.zeros_like(s_np)
        return x * self._coef(scale, x).to(x.dtype), torch.as_tensor(time, dtype=x.dtype)

    def sigma_of_time(self, t_in: torch.Tensor) -> torch.Tensor:
        """The VE level s a time input stands for (inverse of ``inputs``' time)."""
        if not self.noise_conditioned:
            raise DifflensError("a noise-unconditioned network's time input carries no noise level")
        t = t_in.detach().double().cpu().numpy() / self.time_scale
        s = np.exp(4.0 * t) if self.target == "edm" else self.process.s_of_t(t)
        return torch.as_tensor(s, dtype=torch.float64)

    def ve_input(self, x_in: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """VE-form x̃ from a network input at level s (inverse of ``inputs``' x)."""
        s_np, t = self._proc(s)
        scale = self._edm(s_np)[2] if self.target == "edm" else self.process.alpha(t)
        return x_in / self._coef(scale, x_in).to(x_in.dtype)

    # ---- target ↔ x0

    def to_x0(self, y: torch.Tensor, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """x0 estimate from a target prediction y, given the VE-form x̃ and s."""
        s_np, t = self._proc(s)
        c = lambda v: self._coef(v, x)  # noqa: E731
        yd, xd = y.double(), x.double()
        if self.target == "x0":
            out = yd
        elif self.target == "edm":
            c_skip, c_out, _ = self._edm(s_np)
            out = c(c_skip) * xd + c(c_out) * yd
        else:
            p = self.process
            a, sig = p.alpha(t), p.sigma(t)
            if self.target == "eps":
                out = xd - c(s_np) * yd
            elif self.target == "score":
                out = xd + c(s_np * sig) * yd
            elif self.target == "v":
                out = (c(a * a) * xd - c(sig) * yd) / c(a * a + sig * sig)
            else:  # flow: u = α̇ x0 + σ̇ ε
                da, ds = p.dalpha(t), p.dsigma(t)
                out = (yd - c(ds / s_np) * xd) / c(da - ds / s_np)
        return out.to(x.dtype)

    def target_of(self, x0: torch.Tensor, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The true target y for clean x0 and its VE-form noisy version x̃ at level s."""
        s_np, t = self._proc(s)
        c = lambda v: self._coef(v, x)  # noqa: E731
        x0d, xd = x0.double(), x.double()
        eps = (xd - x0d) / c(s_np)
        if self.target == "x0":
            out = x0d
        elif self.target == "edm":
            c_skip, c_out, _ = self._edm(s_np)
            out = (x0d - c(c_skip) * xd) / c(c_out)
        elif self.target == "eps":
            out = eps
        else:
            p = self.process
            a, sig = p.alpha(t), p.sigma(t)
            if self.target == "score":
                out = -eps / c(sig)
            elif self.target == "v":
                out = c(a) * eps - c(sig) * x0d
            else:
                out = c(p.dalpha(t)) * x0d + c(p.dsigma(t)) * eps
        return out.to(x.dtype)
