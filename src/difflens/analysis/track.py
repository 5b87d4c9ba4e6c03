"""A drop-in monitor for any training loop: per-level loss, optimal loss J* and excess J − J* from the
per-sample (σ or t, loss) pairs the loop already has (docs/method.md, "Monitoring a training loop").

    monitor = ExcessLossMonitor(optimal=curve, process="vp", target="eps", path="excess.csv")
    # … inside the training loop:
    per_sample = ((net(x_t, t) - eps) ** 2).mean(dim=(1, 2, 3))     # the loop's own loss, unreduced
    monitor.observe(per_sample, t=t)                                  # or sigma=s (VE-equivalent level)
    if step % 100 == 0:
        monitor.flush(step)                                           # one CSV row per level seen
    monitor.close()                                                   # or use it as a context manager

The loss is in the loop's target units of its process; J* there is r(s)·J*_x0(s) with J*_x0 linear in
ln s between the curve's levels (as in the recipe totals), so the excess is exact per sample. Samples
outside the curve's range have no J* and are counted in ``skipped``, not guessed. With ``tensorboard=DIR``
(the 'tensorboard' extra) each flush also writes scalars ``excess/``, ``loss/`` and ``optimal/`` per level
(tag suffix ``sigma_{σ:.4g}``) at the flushed step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from difflens import report
from difflens.analysis.optimal_loss import Curve
from difflens.diffusion.precond import Parametrization
from difflens.errors import DifflensError, require


def optimal_levels_x0(
    optimal: Curve | Mapping[str, Any] | str | Path | tuple[npt.ArrayLike, npt.ArrayLike],
) -> tuple[np.ndarray, np.ndarray]:
    """(levels ascending, J*_x0) from a ``Curve``, its dict / optimal_loss.json (a path), or a pair of arrays."""
    if isinstance(optimal, str | Path):
        path = Path(optimal)
        try:
            optimal = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DifflensError(f"optimal loss {path}: cannot read it ({e})") from None
        if not isinstance(optimal, Mapping):
            raise DifflensError(f"optimal loss {path}: not an optimal_loss.json (no JSON object)")
    if isinstance(optimal, Curve):
        optimal = optimal.to_dict()
    sigmas: npt.ArrayLike
    values: npt.ArrayLike
    if isinstance(optimal, Mapping):
        levels = optimal.get("levels")
        if not levels or not all(isinstance(lv, Mapping) and "optimal_loss_x0" in lv for lv in levels):
            raise DifflensError("optimal loss: need levels with sigma and optimal_loss_x0 (an optimal_loss.json)")
        sigmas, values = [lv["sigma"] for lv in levels], [lv["optimal_loss_x0"] for lv in levels]
    else:
        try:
            sigmas, values = optimal
        except (TypeError, ValueError):
            raise DifflensError("optimal loss: give a Curve, optimal_loss.json, or (sigmas, J*_x0)") from None
    s, j = np.asarray(sigmas, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if s.ndim != 1 or s.shape != j.shape or len(s) < 2 or not (np.all(np.isfinite(j)) and np.all(s > 0)):
        raise DifflensError("optimal loss: need ≥ 2 levels > 0 with finite J*_x0 of the same length")
    order = np.argsort(s)
    if np.any(np.diff(s[order]) <= 0):
        raise DifflensError("optimal loss: noise levels must be distinct")
    return s[order], j[order]


class ExcessLossMonitor:
    """Per-level loss, J* and excess of a training loop, accumulated from per-sample pairs and written
    to CSV at each ``flush`` (every row so far, rewritten whole: report's atomic writers) and, with
    ``tensorboard``, to a TensorBoard event file in that folder.

    ``optimal``: the optimal-loss curve of the training set (see ``optimal_levels_x0``); ``process`` and
    ``target``: the loop's, which fix its loss units and, for ``t`` inputs, s(t)."""

    def __init__(
        self,
        optimal: Curve | Mapping[str, Any] | str | Path | tuple[npt.ArrayLike, npt.ArrayLike],
        process: str = "edm",
        target: str = "x0",
        path: str | Path | None = None,
        tensorboard: str | Path | None = None,
    ):
        self.sigmas, self.optimal_x0 = optimal_levels_x0(optimal)
        self.writer = None
        if tensorboard is not None:
            if len({self.tag(s) for s in self.sigmas}) < len(self.sigmas):
                raise DifflensError("optimal loss: levels closer than 4 significant digits share a TensorBoard tag")
            tb = require("torch.utils.tensorboard", "tensorboard", "ExcessLossMonitor(tensorboard=...)")
            self.writer = tb.SummaryWriter(log_dir=str(tensorboard))
        self.param = Parametrization.of(process, target)
        self.path = Path(path) if path is not None else None
        n = len(self.sigmas)
        log_s = np.log(self.sigmas)
        self._edges = np.concatenate([[log_s[0]], 0.5 * (log_s[1:] + log_s[:-1]), [log_s[-1]]])
        self._loss, self._optimal = np.zeros(n), np.zeros(n)
        self._count = np.zeros(n, dtype=np.int64)
        self.skipped = 0
        self.rows: list[dict] = []

    def optimal_at(self, sigma: npt.ArrayLike) -> np.ndarray:
        """J*(s) in the loop's target units: r(s)·J*_x0(s), J*_x0 linear in ln s between levels."""
        s = np.asarray(sigma, dtype=np.float64)
        j_x0 = np.interp(np.log(s), np.log(self.sigmas), self.optimal_x0)
        return np.asarray(self.param.factor(s), dtype=np.float64) * j_x0

    def observe(
        self,
        losses: torch.Tensor | npt.ArrayLike,
        sigma: torch.Tensor | npt.ArrayLike | None = None,
        t: torch.Tensor | npt.ArrayLike | None = None,
    ) -> None:
        """Add per-sample losses (target units, unweighted, mean over dimensions) at their levels: give
        exactly one of ``sigma`` (VE-equivalent s) or ``t`` (the process's time)."""
        if (sigma is None) == (t is None):
            raise DifflensError("observe: give exactly one of sigma or t")
        v = torch.as_tensor(losses).detach().double().cpu().numpy().reshape(-1)
        level = sigma if sigma is not None else self.param.process.s_of_t(torch.as_tensor(t).double().cpu().numpy())
        s = np.broadcast_to(torch.as_tensor(level).detach().double().cpu().numpy().reshape(-1), v.shape)
        if not np.all(np.isfinite(v)):
            raise DifflensError("observe: non-finite losses")
        lo, hi = self.sigmas[0] * (1 - 1e-12), self.sigmas[-1] * (1 + 1e-12)
        inside = np.isfinite(s) & (s >= lo) & (s <= hi)
        self.skipped += int((~inside).sum())
        s, v = s[inside], v[inside]
        k = np.clip(np.searchsorted(self._edges, np.log(s), side="right") - 1, 0, len(self.sigmas) - 1)
        np.add.at(self._loss, k, v)
        np.add.at(self._optimal, k, self.optimal_at(s))
        np.add.at(self._count, k, 1)

    def flush(self, step: int) -> list[dict]:
        """Rows {step, sigma, count, loss, optimal, excess} of the levels seen since the last flush (the
        excess is mean(loss − J*) over the level's samples), appended to ``rows``, the CSV and TensorBoard."""
        new = []
        for k in np.flatnonzero(self._count):
            n = int(self._count[k])
            loss, opt = self._loss[k] / n, self._optimal[k] / n
            new.append({"step": int(step), "sigma": float(self.sigmas[k]), "count": n, "loss": loss, "optimal": opt})
            new[-1]["excess"] = loss - opt
        self._loss[:], self._optimal[:], self._count[:] = 0.0, 0.0, 0
        self.rows += new
        if self.path is not None and self.rows:
            report.write_csv(self.path, self.rows)
        if self.writer is not None:
            for r in new:
                for key in ("excess", "loss", "optimal"):
                    self.writer.add_scalar(f"{key}/{self.tag(r['sigma'])}", r[key], global_step=r["step"])
            self.writer.flush()
        return new

    @staticmethod
    def tag(sigma: float) -> str:
        """The TensorBoard tag suffix of a level: ``sigma_{σ:.4g}``."""
        return f"sigma_{sigma:.4g}"

    def close(self) -> None:
        """Close the TensorBoard writer (the CSV is complete after every flush)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> ExcessLossMonitor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def excess(self) -> dict[float, float]:
        """The last excess logged at each level."""
        return {r["sigma"]: r["excess"] for r in self.rows if math.isfinite(r["excess"])}
