"""Scaling-law fits on the loss and on the excess loss (Xu et al.; docs/method.md, "Scaling laws").

Three models of loss J against compute or parameter count C:

* ``plain``  — J = β·C^α               (least squares in log–log)
* ``excess`` — J − J* = β·C^α          (J* the optimal loss: known, subtracted)
* ``offset`` — J = E + β·C^α           (E free, fitted in log J by nonlinear least squares)

Each fit reports α, β (and E) with confidence intervals from the t distribution, R² of the log–log
fit and the Pearson correlation of log(J − offset) with log C: the straighter the law, the closer
both are to 1 (Xu et al. find subtracting J* raises it, e.g. 0.82 → 0.94 at high noise).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from scipy import optimize, stats

from difflens.analysis import diagnose as dg
from difflens.diffusion.precond import Parametrization
from difflens.errors import DifflensError
from difflens.models import load_denoiser
from difflens.models.train import TrainConfig, split_data
from difflens.report import plt, save_figure


@dataclass
class PowerFit:
    kind: str
    n: int
    alpha: float
    alpha_ci: tuple[float, float]
    beta: float
    beta_ci: tuple[float, float]
    offset: float  # E (offset fit), mean J* (excess fit) or 0
    offset_ci: tuple[float, float] | None
    r2: float  # R² of the fit in log space
    corr: float  # Pearson correlation of log(J − offset) and log C

    def predict(self, c: npt.ArrayLike) -> np.ndarray:
        """The fitted loss J(C) (for ``excess``, with the mean J* added back)."""
        return self.offset + self.beta * np.asarray(c, dtype=np.float64) ** self.alpha

    def to_dict(self) -> dict:
        return asdict(self)


def _check(c, j) -> tuple[np.ndarray, np.ndarray]:
    c, j = np.asarray(c, dtype=np.float64).reshape(-1), np.asarray(j, dtype=np.float64).reshape(-1)
    if c.shape != j.shape:
        raise DifflensError(f"need one loss per compute value, got {c.size} and {j.size}")
    if c.size < 3:
        raise DifflensError(f"a power-law fit needs at least 3 points, got {c.size}")
    if not (np.all(np.isfinite(c)) and np.all(c > 0) and np.all(np.isfinite(j))):
        raise DifflensError("compute values must be finite and > 0 and losses finite")
    return c, j


def _loglog(kind: str, c: np.ndarray, y: np.ndarray, offset: float, level: float = 0.95) -> PowerFit:
    if np.any(y <= 0):
        what = "J − J*" if kind == "excess" else "the loss"
        raise DifflensError(f"{what} must be > 0 at every point for a log–log fit (min {y.min():.3g})")
    lx, ly = np.log(c), np.log(y)
    res = stats.linregress(lx, ly)
    n = len(c)
    q = stats.t.ppf(0.5 + level / 2, n - 2) if n > 2 else math.nan
    return PowerFit(
        kind=kind,
        n=n,
        alpha=float(res.slope),
        alpha_ci=(float(res.slope - q * res.stderr), float(res.slope + q * res.stderr)),
        beta=float(math.exp(res.intercept)),
        beta_ci=(
            float(math.exp(res.intercept - q * res.intercept_stderr)),
            float(math.exp(res.intercept + q * res.intercept_stderr)),
        ),
        offset=offset,
        offset_ci=None,
        r2=float(res.rvalue**2),
        corr=float(res.rvalue),
    )


def fit_plain(c: npt.ArrayLike, j: npt.ArrayLike, level: float = 0.95) -> PowerFit:
    """J = β·C^α by least squares in log–log."""
    c, j = _check(c, j)
    return _loglog("plain", c, j, 0.0, level)


def fit_excess(c: npt.ArrayLike, j: npt.ArrayLike, optimal: npt.ArrayLike, level: float = 0.95) -> PowerFit:
    """J − J* = β·C^α; ``optimal`` is J* (a scalar, or one value per point)."""
    c, j = _check(c, j)
    opt = np.broadcast_to(np.asarray(optimal, dtype=np.float64), j.shape)
    return _loglog("excess", c, j - opt, float(opt.mean()), level)


def fit_offset(c: npt.ArrayLike, j: npt.ArrayLike, level: float = 0.95) -> PowerFit:
    """J = E + β·C^α with E ∈ [0, min J) free, least squares on log J (needs ≥ 4 points)."""
    c, j = _check(c, j)
    if len(c) < 4:
        raise DifflensError("the free-offset fit J = E + β·C^α needs at least 4 points")
    if np.any(j <= 0):
        raise DifflensError("losses must be > 0 for the free-offset fit")
    start = fit_plain(c, j)
    lc = np.log(c)
    scale = float(np.exp(lc.mean()))  # fit in C / scale: better conditioned

    def model(x, log_b, a, e):
        return np.log(e + np.exp(log_b + a * (x - math.log(scale))))

    p0 = [math.log(start.beta) + start.alpha * math.log(scale), start.alpha, 0.1 * j.min()]
    hi_e = j.min() * (1 - 1e-9)
    try:
        popt, pcov = optimize.curve_fit(
            model, lc, np.log(j), p0=p0, bounds=([-np.inf, -np.inf, 0.0], [np.inf, np.inf, hi_e]), maxfev=20000
        )
    except (RuntimeError, ValueError) as exc:
        raise DifflensError(f"the free-offset fit did not converge ({exc})") from None
    log_b, a, e = popt
    n = len(c)
    q = stats.t.ppf(0.5 + level / 2, max(n - 3, 1))
    se = np.sqrt(np.clip(np.diag(pcov), 0, np.inf)) if np.all(np.isfinite(pcov)) else np.full(3, np.nan)
    resid = np.log(j) - model(lc, *popt)
    r2 = 1 - float(resid @ resid) / float(((np.log(j) - np.log(j).mean()) ** 2).sum())
    log_beta = log_b - a * math.log(scale)
    with np.errstate(over="ignore"):  # a flat direction can make the interval unbounded: report inf
        beta, beta_lo, beta_hi = np.exp([log_beta, log_beta - q * se[0], log_beta + q * se[0]])
    corr = float(stats.pearsonr(lc, np.log(j - e))[0]) if np.all(j - e > 0) else math.nan
    return PowerFit(
        kind="offset",
        n=n,
        alpha=float(a),
        alpha_ci=(float(a - q * se[1]), float(a + q * se[1])),
        beta=float(beta),
        beta_ci=(float(beta_lo), float(beta_hi)),
        offset=float(e),
        offset_ci=(float(max(e - q * se[2], 0.0)), float(e + q * se[2])),
        r2=float(r2),
        corr=corr,
    )


# ---------------------------------------------------------------- tables


X_COLUMNS = ("compute", "params", "C", "flops", "steps")


def read_table(path: Path) -> tuple[str, list[dict]]:
    """Rows {x, loss, sigma?, optimal?} from a CSV with a compute column (compute, params, C, flops
    or steps), a loss column and optionally sigma (noise level) and optimal (J*)."""
    path = Path(path)
    if not path.is_file():
        raise DifflensError(f"table {path}: no such file")
    with path.open() as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        xcol = next((c for c in X_COLUMNS if c in cols), None)
        if xcol is None or "loss" not in cols:
            raise DifflensError(f"table {path}: need a loss column and one of {', '.join(X_COLUMNS)}; found {cols}")
        rows = []
        try:
            for r in reader:
                row = {"x": float(r[xcol]), "loss": float(r["loss"])}
                for opt in ("sigma", "optimal"):
                    if r.get(opt) not in (None, ""):
                        row[opt] = float(r[opt])
                rows.append(row)
        except ValueError as exc:
            raise DifflensError(f"table {path}: non-numeric value ({exc})") from None
    if not rows:
        raise DifflensError(f"table {path}: no rows")
    return xcol, rows


def fit_groups(rows: list[dict], optimal_of: Callable[[float | None], float | None] | None = None) -> list[dict]:
    """Fit all three laws per noise level (rows with ``sigma``) or once for the whole table.

    J* comes from an ``optimal`` column, else from ``optimal_of(sigma or None)`` when given."""
    groups: dict[float | None, list[dict]] = {}
    for r in rows:
        groups.setdefault(r.get("sigma"), []).append(r)
    out = []
    for key in sorted(groups, key=lambda k: -1 if k is None else k):
        g = groups[key]
        c = np.array([r["x"] for r in g])
        j = np.array([r["loss"] for r in g])
        res = {"sigma": key, "n": len(g), "x": c.tolist(), "loss": j.tolist(), "fits": {}, "errors": {}}
        if all("optimal" in r for r in g):
            opt = np.array([r["optimal"] for r in g])
        elif optimal_of is not None and (j_star := optimal_of(key)) is not None:
            opt = np.full(len(g), float(j_star))
        else:
            opt = None
        res["optimal"] = None if opt is None else opt.tolist()
        attempts = {"plain": (fit_plain, ()), "offset": (fit_offset, ())}
        if opt is not None:
            attempts["excess"] = (fit_excess, (opt,))
        for name, (fn, extra) in attempts.items():
            try:
                res["fits"][name] = fn(c, j, *extra).to_dict()
            except DifflensError as exc:
                res["errors"][name] = str(exc)
        out.append(res)
    return out


def table_from_runs(
    paths: Iterable[str | Path],
    sigmas: npt.ArrayLike,
    *,
    x: str = "params",
    images: int | None = 1024,
    samples: int = 1024,
    seed: int = 0,
    on_run: Callable[[], None] | None = None,
    device: torch.device | str | None = None,
) -> tuple[str, list[dict]]:
    """Rows {x, loss, sigma, optimal} from difflens run folders: each run's training loss per level
    (x0 units, fixed noise per image, on its own training split) with J* of that split, and a row
    without sigma for its recipe-weighted total. ``x`` is params or compute (6·params·steps·batch).
    Models and the kernel run on ``device`` (default cpu)."""

    if x not in ("params", "compute"):
        raise DifflensError(f"x must be params or compute, got {x!r}")
    sigmas = np.sort(np.asarray(sigmas, dtype=np.float64))
    optimal_cache: dict[str, tuple] = {}
    rows = []
    for path in paths:
        model = load_denoiser(str(path), device=device or "cpu")
        if model.info.get("kind") != "difflens":
            raise DifflensError(f"{path}: not a difflens run (scaling from runs needs their training settings)")
        cfg = TrainConfig(**model.info["config"])
        train_ds, _ = split_data(cfg)
        key = train_ds.stats.hash
        if key not in optimal_cache:
            optimal_cache[key] = dg.optimal_levels(train_ds, sigmas, samples, seed, device)
        quad = dg.model_recipe(model.info, model.param)[0]
        res = dg.diagnose_model(
            model.denoiser,
            train_ds,
            None,
            sigmas,
            units=Parametrization.of("edm", "x0"),
            quad=quad,
            images=images,
            seed=seed,
            optimal=optimal_cache[key],
            device=device,
        )
        params = model.info["parameters"]
        c = float(params if x == "params" else 6.0 * params * cfg.steps * cfg.batch)
        rows += [
            {"x": c, "loss": lv["train_x0"], "sigma": lv["sigma"], "optimal": lv["optimal_x0"]} for lv in res["levels"]
        ]
        rows.append({"x": c, "loss": res["totals"]["train"]["value"], "optimal": res["totals"]["optimal"]["value"]})
        if on_run is not None:
            on_run()
    return x, rows


MAX_PANELS = 24  # beyond this the figure is unreadable; scaling.json keeps every group


def plot_fits(groups: list[dict], path: Path, xlabel: str) -> list[dict]:
    """Log–log panels per group: J with the plain fit, J − J* with the excess fit (and the offset fit).

    With more than ``MAX_PANELS`` groups, evenly spaced ones are drawn (first and last included) and a
    line under the figure names how many were left out; returns the groups left out of the plot."""
    keep = (
        np.unique(np.linspace(0, len(groups) - 1, MAX_PANELS).round().astype(int)) if len(groups) > MAX_PANELS else None
    )
    left_out = [] if keep is None else [g for i, g in enumerate(groups) if i not in set(keep.tolist())]
    groups = groups if keep is None else [groups[i] for i in keep]
    cols = min(3, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax, g in zip(axes.flat, groups, strict=False):
        c, j = np.array(g["x"]), np.array(g["loss"])
        grid = np.geomspace(c.min(), c.max(), 100)
        ax.loglog(c, j, "o", color="C0", label="J")
        fits = g["fits"]
        if "plain" in fits:
            f = fits["plain"]
            ax.loglog(grid, f["beta"] * grid ** f["alpha"], "-", color="C0", label=f"βC^α, r={f['corr']:.3f}")
        if "offset" in fits:
            f = fits["offset"]
            ax.loglog(grid, f["offset"] + f["beta"] * grid ** f["alpha"], ":", color="C2", label="E+βC^α")
        if "excess" in fits:
            f, opt = fits["excess"], np.array(g["optimal"])
            ex = j - opt
            ok = ex > 0
            ax.loglog(c[ok], ex[ok], "s", color="C3", label="J − J*")
            ax.loglog(grid, f["beta"] * grid ** f["alpha"], "-", color="C3", label=f"excess fit, r={f['corr']:.3f}")
        ax.set_title("total" if g["sigma"] is None else f"σ = {g['sigma']:.3g}", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    fig.tight_layout()
    if left_out:
        fig.text(
            0.5,
            0.0,
            f"{len(left_out)} of {len(groups) + len(left_out)} groups not drawn ("
            + ", ".join("total" if g["sigma"] is None else f"σ={g['sigma']:.3g}" for g in left_out)
            + "); all are in scaling.json",
            ha="center",
            va="top",
            fontsize=8,
            wrap=True,
        )
    save_figure(fig, path)
    return left_out
