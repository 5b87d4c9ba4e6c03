"""Float64 references for the kernel's float32 paths, with the float32 error model that bounds their distance.

The kernel works relative to the data's mean c in float32 (docs/method.md, "The kernel"): a logit is off by up
to EPS32·(‖q − c‖·R + R²)/(s²T), R = max‖x − c‖, and every weight moves that much relatively. Tests compare a
float32 path with these float64 references within such bounds, never two float32 paths with each other.
"""

import math

import numpy as np
import torch

from difflens import kernel

EPS32 = 2.0**-23


def logit_error(q: torch.Tensor, x: torch.Tensor, s2t, data: torch.Tensor | None = None) -> torch.Tensor:
    """Per query: the bound on the float32 kernel's logit error, for queries q (B, D) over rows x (N, D) of a
    data set ``data`` (default x) whose mean c the kernel works relative to."""
    q, x = q.double(), x.double()
    c = (x if data is None else data.double()).mean(0)
    spread = (x - c).norm(dim=1).max()
    s2t = torch.as_tensor(s2t, dtype=torch.float64).reshape(-1)
    return EPS32 * ((q - c).norm(dim=1) * spread + spread**2) / s2t


def posterior_mean(
    q: torch.Tensor, x: torch.Tensor, s2t, data: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior mean over rows x in float64 (dense softmax with s²T in place of s²) and, per query, the
    bound on the float32 kernel's distance to it: the weights move by the logit error L, so the mean moves by
    ≤ 2·L·R, plus the float32 rounding of the mean itself (a few EPS32 of its size, ≤ ‖c‖ + R). ``data``: the
    data set x is a subset of (the kernel centres on its mean c), default x."""
    q64, x64 = q.double(), x.double()
    s2t = torch.as_tensor(s2t, dtype=torch.float64).reshape(-1, 1)
    w = torch.softmax(-torch.cdist(q64, x64).square() / (2 * s2t), 1)
    c = (x64 if data is None else data.double()).mean(0)
    spread = float((x64 - c).norm(dim=1).max())
    tol = 2 * logit_error(q, x, s2t, data) * spread + 4 * EPS32 * (float(c.norm()) + spread)
    return w @ x64, tol


class Float64Engine:
    """A brute-force engine: each query's posterior state over all the data at once, in float64.

    Any estimator run with it gives the float64 truth for the same seed (the kernel's float32 paths are
    compared with it, never with each other). ``logit_error`` maps each s²T seen to the largest logit error
    bound of the float32 kernel on the same queries (see ``logit_error``), and ``spread`` is R."""

    def __init__(self) -> None:
        self.logit_error: dict[float, float] = {}
        self.spread = 0.0

    def fold(self, data, job: kernel.FoldJob) -> kernel.PosteriorState:
        queries, scale, log_weights, include, exclude, center = (
            job.queries,
            job.scale,
            job.log_weights,
            job.include,
            job.exclude,
            job.center,
        )
        idx = torch.arange(data.n) if include is None else torch.as_tensor(np.asarray(include, dtype=np.int64))
        x = data.take(idx.numpy()).double() - center.double()
        q = queries.double()
        spread = float(x.norm(dim=1).max())
        self.spread = max(self.spread, spread)
        for s2t, err in zip(1 / scale, EPS32 * (q.norm(dim=1) * spread + spread**2) * scale, strict=True):
            key = float(s2t)
            self.logit_error[key] = max(self.logit_error.get(key, 0.0), float(err))
        logits = (
            -0.5 * torch.cdist(q, x).square() * scale[:, None] + 0.5 * q.square().sum(1, keepdim=True) * scale[:, None]
        )
        if log_weights is not None:
            logits = logits + log_weights[idx]
        if exclude is not None:
            logits = logits.masked_fill((exclude[:, None, :] == idx[None, :, None]).any(-1), -math.inf)
        top = logits.amax(1)
        p = torch.exp(logits - top[:, None])
        total = p.sum(1)
        mean = p @ x / total[:, None]
        m2 = (p * torch.cdist(mean, x).square()).sum(1)
        return kernel.PosteriorState(top, total, mean, m2, p.square().sum(1), idx[logits.argmax(1)])

    def level_error(self, sigma: float) -> float:
        """The logit error bound at VE level ``sigma`` (temperature 1)."""
        return max(err for s2t, err in self.logit_error.items() if math.isclose(s2t, sigma * sigma, rel_tol=1e-9))
