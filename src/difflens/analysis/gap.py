"""Generalization gap per noise level (Kaiser & Kollmann 2026).

The math: docs/method.md, "Memorization and generalization gap".

E_split(s) = mean over images y of the error of D(y + s·n, s) against y, with the noise n fixed per
image (and per draw) across all levels and all checkpoints (``model_error``, whose module doc gives
the seeding), so differences between levels and between checkpoints are not Monte-Carlo noise.
G(s) = (E_val(s) − E_train(s)) / E_train(s), in pixels or in the features of a network
(docs/method.md, "Feature-space measures"). Errors are per-dimension squared (``mse``, as a
training loss) or unsquared L2 (``l2``, the toy model's choice), averaged over ``draws`` noise draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from difflens.analysis.model_error import HELD, TRAIN, fixed_noise, level_errors, pick_images
from difflens.data import Dataset, check_same_layout, parse_params
from difflens.errors import DifflensError
from difflens.models.empirical import EmpiricalDenoiser
from difflens.models.load import load_callable
from difflens.report import plt, save_figure


@dataclass
class GapCurve:
    """E_train(s), E_val(s) and G(s) on a grid of levels for one denoiser (or checkpoint)."""

    label: str
    sigmas: list[float]
    e_train: list[float]
    e_val: list[float]
    se_train: list[float]
    se_val: list[float]
    error: str
    draws: int

    @property
    def gap(self) -> list[float]:
        return [
            (v - t) / t if t > 0 else (0.0 if v == t else float("inf"))
            for t, v in zip(self.e_train, self.e_val, strict=True)
        ]

    @property
    def peak_sigma(self) -> float | None:
        """The level where G is largest (+inf counts: E_train = 0 there, a perfect fit of the training set)."""
        g = np.array(self.gap)
        ok = ~np.isnan(g)
        return float(np.array(self.sigmas)[ok][np.argmax(g[ok])]) if ok.any() else None

    def to_dict(self) -> dict:
        g = self.gap
        return {
            **asdict(self),
            "gap": g,
            "peak_sigma": self.peak_sigma,
            "peak_gap": max((v for v in g if not np.isnan(v)), default=None),
        }


def generalization_gap(
    denoisers: dict[str, Callable] | Callable,
    train: Dataset | np.ndarray | torch.Tensor,
    val: Dataset | np.ndarray | torch.Tensor,
    sigmas: npt.ArrayLike,
    *,
    draws: int = 1,
    error: str = "mse",
    seed: int = 0,
    max_images: int | None = None,
    paired: bool = True,
    batch: int = 1024,
    feature: Callable | None = None,
    on_level: Callable[[str, int], None] | None = None,
    device: torch.device | str | None = None,
) -> list[GapCurve]:
    """G(s) for one denoiser or several (e.g. checkpoints, in training order), all with the same noise
    per image. ``train``/``val`` are Datasets or (n, D) arrays; ``max_images`` subsamples each split
    (seeded). ``paired``: image i of val gets the same noise as image i of train (common random
    numbers: the noise draws cancel from G instead of adding Monte-Carlo error). ``feature``: errors
    between the features of D's output and of the image (the feature-space gap; ``analysis.features``).
    The denoisers' inputs go to ``device`` (see ``model_error.level_errors``)."""
    if not isinstance(denoisers, dict):
        denoisers = {"denoiser": denoisers}
    if draws < 1:
        raise DifflensError(f"draws must be ≥ 1, got {draws}")
    sig = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if sig.size == 0 or np.any(sig <= 0) or not np.all(np.isfinite(sig)):
        raise DifflensError("noise levels must be finite and > 0")
    if isinstance(train, Dataset) and isinstance(val, Dataset):
        check_same_layout(val.shape, train.shape, "val samples", "training samples")
    y_tr = pick_images(train, max_images, seed, TRAIN)
    y_va = pick_images(val, max_images, seed, HELD)
    if y_tr.shape[1] != y_va.shape[1]:
        raise DifflensError(f"train and val samples differ in size ({y_tr.shape[1]} vs {y_va.shape[1]})")
    if paired:
        noise = fixed_noise(max(len(y_tr), len(y_va)), y_tr.shape[1], draws, seed, TRAIN)
        n_tr, n_va = noise[:, : len(y_tr)], noise[:, : len(y_va)]
    else:
        n_tr = fixed_noise(len(y_tr), y_tr.shape[1], draws, seed, TRAIN)
        n_va = fixed_noise(len(y_va), y_va.shape[1], draws, seed, HELD)
    curves = []
    for label, den in denoisers.items():
        rows = []
        for k, s in enumerate(sig):
            kw = {"error": error, "batch": batch, "feature": feature, "device": device}
            et = level_errors(den, y_tr, n_tr, s, **kw)[0]
            ev = level_errors(den, y_va, n_va, s, **kw)[0]
            rows.append((float(et.mean()), float(ev.mean()), _se(et), _se(ev)))
            if on_level is not None:
                on_level(label, k)
        cols = list(zip(*rows, strict=True))
        curves.append(GapCurve(label, sig.tolist(), *map(list, cols), error, draws))
    return curves


def _se(v: np.ndarray) -> float:
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def plot_gap(curves: list[GapCurve], path: str | Path, *, title: str = "", legend_title: str = "") -> None:
    """E_train/E_val (left) and G(s) (right) against s for each curve."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for c_i, c in enumerate(curves):
        color = f"C{c_i % 10}"
        a.plot(c.sigmas, c.e_train, "-", color=color, label=f"{c.label} train")
        a.plot(c.sigmas, c.e_val, "--", color=color, label=f"{c.label} val")
        g = np.array(c.gap)
        b.plot(c.sigmas, np.where(np.isfinite(g), g, np.nan), "o-", ms=3, color=color, label=c.label)
        if c.peak_sigma is not None:
            b.axvline(c.peak_sigma, color=color, ls=":", lw=1)
    unit = "mean squared error per dim" if curves and curves[0].error == "mse" else "L2 error"
    for ax in (a, b):
        ax.set_xscale("log")
        ax.set_xlabel("noise level s")
        ax.grid(alpha=0.3, which="both")
    a.set_ylabel(unit)
    a.set_yscale("log")
    b.set_ylabel("G(s) = (E_val − E_train) / E_train")
    a.legend(fontsize=7)
    b.legend(fontsize=7, title=legend_title or None)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def plot_gap_over_time(curves: list[GapCurve], path: str | Path, *, title: str = "") -> None:
    """Across checkpoints (in the given order): the peak gap and the level where it peaks."""
    fig, a = plt.subplots(figsize=(6, 3.8))
    peaks = [c.to_dict()["peak_gap"] for c in curves]
    a.plot(range(len(curves)), [np.nan if p is None else p for p in peaks], "o-")
    a.set_xticks(range(len(curves)), [c.label for c in curves], rotation=30, fontsize=7)
    a.set_ylabel("peak G(s)")
    for i, c in enumerate(curves):
        if c.peak_sigma is not None:
            a.annotate(f"s={c.peak_sigma:.2g}", (i, peaks[i]), fontsize=7, textcoords="offset points", xytext=(3, 3))
    a.grid(alpha=0.3)
    a.set_title(title or "generalization gap over checkpoints")
    save_figure(fig, path)


def is_closed_form(spec: str) -> bool:
    """Specs :func:`resolve_denoiser` builds itself (the rest are trained models)."""
    return spec == "oracle" or spec.startswith(("oracle:", "py:"))


def resolve_denoiser(spec: str, train: Dataset, device: torch.device | str = "cpu") -> Callable:
    """A denoiser from a spec: ``oracle[:T=…,sc=…,k=…]`` (the empirical optimal denoiser of ``train``,
    optionally smoothed) or ``MODULE:NAME`` / ``file.py:NAME`` (``models.load.load_callable``; the old
    ``py:MODULE:NAME`` still works, with a warning): a callable ``(x (B, D), sigma: float) -> x0_hat``.
    The oracle's kernel runs on ``device``."""
    name, _, params = spec.partition(":")
    if name != "oracle":
        if ":" in spec:
            return load_callable(spec, "denoiser")
        raise DifflensError(f"unknown denoiser {spec!r}: use oracle[:T=…,sc=…,k=…] or MODULE:NAME / file.py:NAME")
    p = parse_params(params, spec)
    unknown = set(p) - {"T", "sc", "k"}
    if unknown:
        raise DifflensError(f"{spec}: unknown oracle parameter(s) {', '.join(sorted(unknown))} (use T, sc, k)")
    k = p.get("k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int)):
        raise DifflensError(f"{spec}: k must be a whole number of nearest training samples, got {k}")
    return EmpiricalDenoiser(train, p.get("T", 1.0), p.get("sc"), k, device=device)
