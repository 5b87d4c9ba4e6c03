"""Generalization gap per noise level (Kaiser & Kollmann 2026).

The math: docs/method.md, "Memorization and generalization gap".

E_split(s) = mean over images y of the error of D(y + s·n, s) against y, with the noise n fixed per
image (and per draw) across all levels and all checkpoints, so differences between levels and
between checkpoints are not Monte-Carlo noise. G(s) = (E_val(s) − E_train(s)) / E_train(s).
Errors are per-dimension squared (``mse``, as a training loss) or unsquared L2 (``l2``, the toy
model's choice), averaged over ``draws`` noise draws per image.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from difflens.data import Dataset, as_dataset, check_same_layout
from difflens.errors import DifflensError

ERRORS = ("mse", "l2")


def fixed_noise(n: int, dim: int, draws: int = 1, seed: int = 0, stream: int = 0) -> torch.Tensor:
    """(draws, n, D) standard normal noise, a pure function of (seed, stream): the same for every level
    and every checkpoint evaluated with that seed (stream 0 = train, 1 = val)."""
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stream]).generate_state(1)[0]))
    return torch.randn(draws, n, dim, generator=gen, dtype=torch.float32)


@torch.no_grad()
def level_errors(
    denoiser: Callable,
    images: torch.Tensor,
    noise: torch.Tensor,
    sigma: float,
    *,
    error: str = "mse",
    batch: int = 1024,
) -> torch.Tensor:
    """Per-image error at one level, averaged over the noise draws (draws, n, D): (n,) float64."""
    if error not in ERRORS:
        raise DifflensError(f"unknown error {error!r}; choose one of {', '.join(ERRORS)}")
    y_all = images.float()[None].expand(len(noise), -1, -1).reshape(-1, images.shape[1])
    x_all = y_all + float(sigma) * noise.reshape(-1, images.shape[1])
    errs = []
    for i in range(0, len(y_all), batch):
        y = y_all[i : i + batch]
        out = torch.as_tensor(denoiser(x_all[i : i + batch], float(sigma))).double()
        if out.shape != y.shape:
            raise DifflensError(f"the denoiser returned shape {tuple(out.shape)} for input {tuple(y.shape)}")
        diff = out - y.double()
        errs.append((diff * diff).mean(1) if error == "mse" else torch.linalg.vector_norm(diff, dim=1))
    return torch.cat(errs).reshape(len(noise), len(images)).mean(0)


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


def _split_images(split, max_images: int | None, seed: int, stream: int) -> torch.Tensor:
    ds = as_dataset(split)
    if max_images is None or max_images >= ds.n:
        return ds.rows(0, ds.n)
    idx = np.sort(np.random.default_rng([seed, stream]).choice(ds.n, max_images, replace=False))
    return ds.take(idx)


def generalization_gap(
    denoisers: dict[str, Callable] | Callable,
    train,
    val,
    sigmas,
    *,
    draws: int = 1,
    error: str = "mse",
    seed: int = 0,
    max_images: int | None = None,
    paired: bool = True,
    batch: int = 1024,
    on_level: Callable[[str, int], None] | None = None,
) -> list[GapCurve]:
    """G(s) for one denoiser or several (e.g. checkpoints, in training order), all with the same noise
    per image. ``train``/``val`` are Datasets or (n, D) arrays; ``max_images`` subsamples each split
    (seeded). ``paired``: image i of val gets the same noise as image i of train (common random
    numbers: the noise draws cancel from G instead of adding Monte-Carlo error)."""
    if not isinstance(denoisers, dict):
        denoisers = {"denoiser": denoisers}
    if draws < 1:
        raise DifflensError(f"draws must be ≥ 1, got {draws}")
    sig = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if sig.size == 0 or np.any(sig <= 0) or not np.all(np.isfinite(sig)):
        raise DifflensError("noise levels must be finite and > 0")
    if isinstance(train, Dataset) and isinstance(val, Dataset):
        check_same_layout(val.shape, train.shape, "val samples", "training samples")
    y_tr = _split_images(train, max_images, seed, 0)
    y_va = _split_images(val, max_images, seed, 1)
    if y_tr.shape[1] != y_va.shape[1]:
        raise DifflensError(f"train and val samples differ in size ({y_tr.shape[1]} vs {y_va.shape[1]})")
    if paired:
        noise = fixed_noise(max(len(y_tr), len(y_va)), y_tr.shape[1], draws, seed, 0)
        n_tr, n_va = noise[:, : len(y_tr)], noise[:, : len(y_va)]
    else:
        n_tr = fixed_noise(len(y_tr), y_tr.shape[1], draws, seed, 0)
        n_va = fixed_noise(len(y_va), y_va.shape[1], draws, seed, 1)
    curves = []
    for label, den in denoisers.items():
        rows = []
        for k, s in enumerate(sig):
            et = level_errors(den, y_tr, n_tr, s, error=error, batch=batch)
            ev = level_errors(den, y_va, n_va, s, error=error, batch=batch)
            rows.append((et.mean().item(), ev.mean().item(), _se(et), _se(ev)))
            if on_level is not None:
                on_level(label, k)
        cols = list(zip(*rows, strict=True))
        curves.append(GapCurve(label, sig.tolist(), *map(list, cols), error, draws))
    return curves


def _se(v: torch.Tensor) -> float:
    return float(v.std(unbiased=True) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def plot_gap(curves: list[GapCurve], path, *, title: str = "", legend_title: str = "") -> None:
    """E_train/E_val (left) and G(s) (right) against s for each curve."""
    from difflens.report import plt, save_figure

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


def plot_gap_over_time(curves: list[GapCurve], path, *, title: str = "") -> None:
    """Across checkpoints (in the given order): the peak gap and the level where it peaks."""
    from difflens.report import plt, save_figure

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


def _is_factory(obj) -> bool:
    """A class or a callable that takes no required arguments builds the object."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return False
    return not any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def load_callable(spec: str) -> Callable:
    """``py:MODULE:NAME`` → the callable it names, or what it builds if NAME is a zero-argument
    factory (a class or function with no required arguments), importable from the Python path."""
    if not spec.startswith("py:"):
        raise DifflensError(f"expected py:MODULE:NAME, got {spec!r}")
    module, _, name = spec[3:].rpartition(":")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise DifflensError(f"cannot import {spec[3:]!r} ({exc})") from None
    if _is_factory(obj):
        obj = obj()
    if not callable(obj):
        raise DifflensError(f"{spec[3:]!r} is not callable")
    return obj


def is_closed_form(spec: str) -> bool:
    """Specs :func:`resolve_denoiser` builds itself (the rest are trained models)."""
    return spec == "oracle" or spec.startswith(("oracle:", "py:"))


def resolve_denoiser(spec: str, train: Dataset) -> Callable:
    """A denoiser from a spec: ``oracle[:T=…,sc=…,k=…]`` (the empirical optimal denoiser of ``train``,
    optionally smoothed) or ``py:MODULE:NAME`` (see :func:`load_callable`; a callable
    ``(x (B, D), sigma) -> x0_hat``, e.g. a trained model wrapped by an adapter)."""
    from difflens import data as data_mod
    from difflens.analysis.smoothing import EmpiricalDenoiser

    if spec.startswith("py:"):
        return load_callable(spec)
    name, _, params = spec.partition(":")
    if name != "oracle":
        raise DifflensError(f"unknown denoiser {spec!r}: use oracle[:T=…,sc=…,k=…] or py:MODULE:NAME")
    p = data_mod.parse_params(params, spec)
    unknown = set(p) - {"T", "sc", "k"}
    if unknown:
        raise DifflensError(f"{spec}: unknown oracle parameter(s) {', '.join(sorted(unknown))} (use T, sc, k)")
    return EmpiricalDenoiser(train, p.get("T", 1.0), p.get("sc"), p.get("k"))
