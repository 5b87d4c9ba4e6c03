"""Forward processes x_t = α(t)·x0 + σ(t)·ε, prediction targets and their loss conversion factors.

Every optimal quantity depends on the process only through the VE-equivalent noise level
s = σ/α. A process is a tiny class giving α, σ, their time derivatives and the inverse t(s);
a target is one row of ``TARGETS`` giving the factor r with J^target = r · J^x0
(docs/method.md, "Processes and targets").
Every formula takes NumPy values (computed in float64) or torch tensors (computed in torch on their
device and dtype), so the preconditioning of a model's forward pass never leaves the model's device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from difflens.errors import DifflensError

ArrayLike = float | np.ndarray | torch.Tensor


def _xp(t: ArrayLike):
    """The array namespace of t: torch for tensors, else NumPy (sqrt, exp, log, log1p, cos, sin, arccos, …)."""
    return torch if torch.is_tensor(t) else np


def _arr(t: ArrayLike):
    """t as a float array: a tensor as it is (its device and dtype), anything else as NumPy float64."""
    return t if torch.is_tensor(t) else np.asarray(t, dtype=np.float64)


class Process:
    """α(t), σ(t), their derivatives and t(s). Subclasses fill in the formulas; t is a float array
    (NumPy, or a torch tensor computed on its device)."""

    name = ""

    def alpha(self, t: ArrayLike) -> ArrayLike:
        raise NotImplementedError

    def sigma(self, t: ArrayLike) -> ArrayLike:
        raise NotImplementedError

    def dalpha(self, t: ArrayLike) -> ArrayLike:
        raise NotImplementedError

    def dsigma(self, t: ArrayLike) -> ArrayLike:
        raise NotImplementedError

    def t_of_s(self, s: ArrayLike) -> ArrayLike:
        raise NotImplementedError

    def s_of_t(self, t: ArrayLike) -> ArrayLike:
        """VE-equivalent noise level s = σ/α."""
        return self.sigma(t) / self.alpha(t)


class _UnitAlpha(Process):
    """Processes that only add noise (α = 1): x_t is already in VE form."""

    def alpha(self, t: ArrayLike) -> ArrayLike:
        return _xp(t).ones_like(_arr(t))

    def dalpha(self, t: ArrayLike) -> ArrayLike:
        return _xp(t).zeros_like(_arr(t))


@dataclass(frozen=True)
class VE(_UnitAlpha):
    """Variance exploding (NCSN): α = 1, σ(t) geometric from sigma_min (t=0) to sigma_max (t=1)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    name = "ve"

    def sigma(self, t: ArrayLike) -> ArrayLike:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _arr(t)

    def dsigma(self, t: ArrayLike) -> ArrayLike:
        return self.sigma(t) * math.log(self.sigma_max / self.sigma_min)

    def t_of_s(self, s: ArrayLike) -> ArrayLike:
        return _xp(s).log(_arr(s) / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


class _VPBase(Process):
    """Variance preserving: α = √ᾱ, σ = √(1−ᾱ); subclasses give ᾱ(t) and dᾱ/dt on t ∈ (0, 1]."""

    def abar(self, t: ArrayLike) -> ArrayLike:
        raise NotImplementedError

    def dabar(self, t: ArrayLike) -> ArrayLike:
        raise NotImplementedError

    def alpha(self, t: ArrayLike) -> ArrayLike:
        return _xp(t).sqrt(self.abar(t))

    def sigma(self, t: ArrayLike) -> ArrayLike:
        return _xp(t).sqrt(1.0 - self.abar(t))

    def dalpha(self, t: ArrayLike) -> ArrayLike:
        return self.dabar(t) / (2.0 * self.alpha(t))

    def dsigma(self, t: ArrayLike) -> ArrayLike:
        return -self.dabar(t) / (2.0 * self.sigma(t))


@dataclass(frozen=True)
class VPLinear(_VPBase):
    """DDPM's linear β from 1e-4 to 0.02 over 1000 steps, in continuous time (β(t) = 0.1 … 20)."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    name = "vp"

    def abar(self, t: ArrayLike) -> ArrayLike:
        t = _arr(t)
        return _xp(t).exp(-self.beta_min * t - 0.5 * (self.beta_max - self.beta_min) * t**2)

    def dabar(self, t: ArrayLike) -> ArrayLike:
        t = _arr(t)
        return -(self.beta_min + (self.beta_max - self.beta_min) * t) * self.abar(t)

    def t_of_s(self, s: ArrayLike) -> ArrayLike:
        xp = _xp(s)
        log_inv_abar = xp.log1p(_arr(s) ** 2)  # ᾱ = 1/(1+s²)
        d = self.beta_max - self.beta_min
        return (-self.beta_min + xp.sqrt(self.beta_min**2 + 2.0 * d * log_inv_abar)) / d


@dataclass(frozen=True)
class VPCosine(_VPBase):
    """Nichol & Dhariwal's cosine ᾱ(t) = f(t)/f(0), f(t) = cos²(π/2 · (t+o)/(1+o))."""

    offset: float = 0.008
    name = "vp-cosine"

    def _f(self, t):
        return _xp(t).cos(0.5 * np.pi * (_arr(t) + self.offset) / (1 + self.offset)) ** 2

    def abar(self, t: ArrayLike) -> ArrayLike:
        return self._f(t) / self._f(0.0)

    def dabar(self, t: ArrayLike) -> ArrayLike:
        u = 0.5 * np.pi * (_arr(t) + self.offset) / (1 + self.offset)
        return -_xp(t).sin(2 * u) * 0.5 * np.pi / (1 + self.offset) / self._f(0.0)

    def t_of_s(self, s: ArrayLike) -> ArrayLike:
        xp = _xp(s)
        root = xp.sqrt(self._f(0.0) / (1.0 + _arr(s) ** 2))
        return (1 + self.offset) * xp.arccos(root) * 2.0 / np.pi - self.offset


@dataclass(frozen=True)
class EDM(_UnitAlpha):
    """Karras et al.: α = 1, σ = t."""

    name = "edm"

    def sigma(self, t: ArrayLike) -> ArrayLike:
        return _arr(t)

    def dsigma(self, t: ArrayLike) -> ArrayLike:
        return _xp(t).ones_like(_arr(t))

    def t_of_s(self, s: ArrayLike) -> ArrayLike:
        return _arr(s)


@dataclass(frozen=True)
class FlowMatching(Process):
    """Flow matching / rectified flow: α = 1 − t, σ = t."""

    name = "fm"

    def alpha(self, t: ArrayLike) -> ArrayLike:
        return 1.0 - _arr(t)

    def dalpha(self, t: ArrayLike) -> ArrayLike:
        return -_xp(t).ones_like(_arr(t))

    def sigma(self, t: ArrayLike) -> ArrayLike:
        return _arr(t)

    def dsigma(self, t: ArrayLike) -> ArrayLike:
        return _xp(t).ones_like(_arr(t))

    def t_of_s(self, s: ArrayLike) -> ArrayLike:
        s = _arr(s)
        return s / (1.0 + s)


PROCESSES: dict[str, Callable[[], Process]] = {
    "ve": VE,
    "vp": VPLinear,
    "vp-cosine": VPCosine,
    "edm": EDM,
    "fm": FlowMatching,
}

SIGMA_DATA = 0.5  # EDM's σ_data, used by the EDM F target and the EDM training recipe


def edm_coefficients(s: ArrayLike, sigma_data: float = SIGMA_DATA) -> tuple[ArrayLike, ArrayLike, ArrayLike]:
    """EDM's preconditioning (Karras et al. 2022, Table 1) at VE level s: (c_skip, c_out, c_in), with
    x0 = c_skip·x̃ + c_out·F(c_in·x̃, ln(s)/4). In s's namespace (NumPy float64, or torch on s's device)."""
    s = _arr(s)
    sd2 = sigma_data**2
    root = _xp(s).sqrt(s**2 + sd2)
    return sd2 / (s**2 + sd2), s * sigma_data / root, 1 / root


def edm_c_out(s: ArrayLike, sigma_data: float = SIGMA_DATA) -> ArrayLike:
    """c_out(s) = s·σ_d/√(s² + σ_d²): an x0 error δ is an error δ/c_out in the units of EDM's F."""
    return edm_coefficients(s, sigma_data)[1]


# J^target_t = r_t · J^x0_t. Each row: (process, t) -> r (docs/method.md, "Processes and targets").
TARGETS: dict[str, Callable[[Process, ArrayLike], ArrayLike]] = {
    "x0": lambda p, t: _xp(t).ones_like(t),
    "eps": lambda p, t: (p.alpha(t) / p.sigma(t)) ** 2,
    "score": lambda p, t: p.alpha(t) ** 2 / p.sigma(t) ** 4,
    "v": lambda p, t: (p.alpha(t) ** 2 + p.sigma(t) ** 2) ** 2 / p.sigma(t) ** 2,
    "flow": lambda p, t: ((p.alpha(t) * p.dsigma(t) - p.dalpha(t) * p.sigma(t)) / p.sigma(t)) ** 2,
    "edm": lambda p, t: 1.0 / edm_c_out(p.s_of_t(t)) ** 2,
}


def get_process(name: str) -> Process:
    try:
        return PROCESSES[name]()
    except KeyError:
        raise DifflensError(f"unknown process {name!r}; choose one of {', '.join(PROCESSES)}") from None


def conversion_factor(process: Process | str, target: str, t: ArrayLike) -> np.ndarray:
    """r_t such that a loss on `target` equals r_t times the x0 loss at time t."""
    if isinstance(process, str):
        process = get_process(process)
    if target not in TARGETS:
        raise DifflensError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    return TARGETS[target](process, np.asarray(t, dtype=np.float64))


def sigma_grid(lo: float = 0.002, hi: float = 80.0, n: int = 64) -> np.ndarray:
    """Log-spaced VE-equivalent noise levels (the default grid of the optimal-loss curve)."""
    if not (lo > 0 and hi > lo and n >= 1):
        raise DifflensError(f"bad noise grid: need 0 < lo < hi and n ≥ 1, got lo={lo}, hi={hi}, n={n}")
    return np.geomspace(lo, hi, n) if n > 1 else np.array([lo], dtype=np.float64)


def parse_sigmas(spec: str) -> np.ndarray:
    """'0.002:80:64' (log grid lo:hi:n) or a comma list '0.1,1,10'. All levels must be finite and > 0."""
    try:  # parse only: a bad bound or count is reported as such below, not as a parse error
        grid = [t(v) for t, v in zip((float, float, int), spec.split(":"), strict=True)] if ":" in spec else None
        values = np.array([float(v) for v in spec.split(",") if v.strip()] if grid is None else grid[:2], np.float64)
    except ValueError:
        raise DifflensError(f"cannot parse noise levels {spec!r}: use LO:HI:N or a comma list") from None
    if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise DifflensError(f"noise levels must be finite and > 0, got {spec!r}")
    return sigma_grid(*grid) if grid is not None else values
