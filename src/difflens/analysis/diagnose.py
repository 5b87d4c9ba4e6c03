"""Diagnose a model against the optimal loss: per level, how far above the lowest possible loss it is.

For each noise level s: the model's loss on training images and on held-out images (noise fixed
per image, shared across levels and checkpoints), the optimal loss J*(s) of the training set
(difflens.optimal_loss), the excess J_θ − J* and the excess ratio (J_θ − J*)/J*, in x0 units and in
any target's units; totals weighted by the model's training recipe; across checkpoints, the excess
over training time. ``report_html`` bundles the plots and a plain-language verdict in one file.
"""

from __future__ import annotations

import base64
import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from difflens.analysis.optimal_loss import optimal_loss_curve, weighted_total
from difflens.data import Dataset
from difflens.diffusion.precond import Parametrization
from difflens.diffusion.processes import TARGETS, get_process
from difflens.errors import DifflensError
from difflens.models.adapters import denoise_batched
from difflens.report import plt, save_figure


@dataclass
class DiagLevel:
    """One noise level. Losses per dimension; ``*_x0`` in x0 units, the rest in target units."""

    sigma: float
    factor: float  # r(s): target units = r · x0 units
    optimal: float
    optimal_stderr: float
    train: float
    train_stderr: float
    held: float | None
    held_stderr: float | None
    excess: float
    excess_stderr: float
    excess_ratio: float
    gap: float | None  # (held − train) / train
    optimal_x0: float
    train_x0: float
    held_x0: float | None


def fixed_noise(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """One standard normal draw per image, reused at every level and for every checkpoint."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn((n, *shape), generator=g)


def per_level_errors(denoiser, x0: torch.Tensor, noise: torch.Tensor, sigmas, batch_size: int = 512) -> np.ndarray:
    """(levels, images) per-dimension squared error ‖D(x0 + s·n, s) − x0‖²/D in x0 units."""
    out = np.empty((len(sigmas), len(x0)))
    for i, s in enumerate(sigmas):
        est = denoise_batched(denoiser, x0 + float(s) * noise, float(s), batch_size)
        out[i] = ((est.double() - x0.double()) ** 2).reshape(len(x0), -1).mean(1).numpy()
    return out


def _mean_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = values.shape[1]
    se = values.std(1, ddof=1) / math.sqrt(n) if n > 1 else np.full(len(values), np.nan)
    return values.mean(1), se


def pick_images(data: Dataset, limit: int | None, seed: int) -> torch.Tensor:
    """Up to ``limit`` images of a split (a seeded random subset when there are more)."""
    if limit is None or limit >= data.n:
        return data.rows(0, data.n)
    idx = np.sort(np.random.default_rng(seed).choice(data.n, size=limit, replace=False))
    return data.take(idx)


def optimal_levels(train: Dataset, sigmas, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """J*_x0 and its standard error at the levels (full estimator), plus the curve summary."""
    curve = optimal_loss_curve(train, sigmas, samples=samples, seed=seed)
    j = np.array([lv.optimal_loss_x0 for lv in curve.levels])
    se = np.array([lv.stderr_x0 for lv in curve.levels])
    return j, se, {"critical_sigma": curve.critical_sigma, "data_variance": curve.data_variance}


def build_levels(sigmas, factor, opt, opt_se, train_err, held_err) -> list[DiagLevel]:
    """Per-level rows from J*_x0 and per-image errors (levels × images, x0 units)."""
    tr, tr_se = _mean_se(train_err)
    he, he_se = _mean_se(held_err) if held_err is not None else (None, None)
    levels = []
    for i, s in enumerate(sigmas):
        r = float(factor[i])
        ex = tr[i] - opt[i]
        levels.append(
            DiagLevel(
                sigma=float(s),
                factor=r,
                optimal=r * opt[i],
                optimal_stderr=r * opt_se[i],
                train=r * tr[i],
                train_stderr=r * tr_se[i],
                held=None if he is None else r * he[i],
                held_stderr=None if he is None else r * he_se[i],
                excess=r * ex,
                excess_stderr=r * math.hypot(tr_se[i], opt_se[i]),
                excess_ratio=ex / opt[i] if opt[i] > 0 else math.inf,
                gap=None if he is None or tr[i] <= 0 else (he[i] - tr[i]) / tr[i],
                optimal_x0=float(opt[i]),
                train_x0=float(tr[i]),
                held_x0=None if he is None else float(he[i]),
            )
        )
    return levels


def totals(levels: list[DiagLevel], quad) -> dict:
    """Recipe-weighted totals of the model (train, held-out) and optimal losses, and their excess.

    ``quad`` = (s, mass, λ) with λ applied to x0-unit losses (see optimal_loss.recipe_quadrature)."""
    s = np.array([lv.sigma for lv in levels])

    def tot(vals, errs):
        return weighted_total(s, np.asarray(vals, dtype=np.float64), np.asarray(errs, dtype=np.float64), quad)

    fac = np.array([lv.factor for lv in levels])
    opt = tot([lv.optimal_x0 for lv in levels], [lv.optimal_stderr / lv.factor for lv in levels])
    trn = tot([lv.train_x0 for lv in levels], [lv.train_stderr / f for lv, f in zip(levels, fac, strict=True)])
    out = {"optimal": opt, "train": trn, "excess": trn["value"] - opt["value"]}
    out["excess_ratio"] = out["excess"] / opt["value"] if opt["value"] > 0 else math.inf
    if levels[0].held_x0 is not None:
        out["held"] = tot([lv.held_x0 for lv in levels], [lv.held_stderr / lv.factor for lv in levels])
    return out


def diagnose_model(
    denoiser,
    train: Dataset,
    held: Dataset | None,
    sigmas,
    *,
    units: Parametrization,
    quad,
    images: int | None = 1024,
    samples: int = 1024,
    seed: int = 0,
    batch_size: int = 512,
    optimal: tuple | None = None,
    units_text: str | None = None,
) -> dict:
    """The full per-level diagnosis of one denoiser (see module doc). ``units_text`` says which units
    the losses are in and where they came from (``Units.text``); by default just the units."""
    sigmas = np.sort(np.asarray(sigmas, dtype=np.float64))
    opt, opt_se, info = optimal if optimal is not None else optimal_levels(train, sigmas, samples, seed)
    x_tr = pick_images(train, images, seed)
    train_err = per_level_errors(denoiser, x_tr, fixed_noise(len(x_tr), (train.dim,), seed), sigmas, batch_size)
    held_err = None
    if held is not None:
        x_he = pick_images(held, images, seed)
        held_err = per_level_errors(denoiser, x_he, fixed_noise(len(x_he), (held.dim,), seed + 1), sigmas, batch_size)
    levels = build_levels(sigmas, units.factor(sigmas), opt, opt_se, train_err, held_err)
    return {
        "units": {**units.describe(), "description": units_text or describe_units(units)},
        "levels": [asdict(lv) for lv in levels],
        "totals": totals(levels, quad),
        "train_images": len(x_tr),
        "held_images": None if held is None else int(held_err.shape[1]),
        **info,
    }


def excess_history(models, train: Dataset, sigmas, units: Parametrization, optimal, **kw) -> dict:
    """Train excess J_θ − J* (target units) per level for a list of (step, denoiser), same noise."""
    opt = optimal[0]
    x_tr = pick_images(train, kw.get("images"), kw.get("seed", 0))
    noise = fixed_noise(len(x_tr), (train.dim,), kw.get("seed", 0))
    fac = units.factor(sigmas)
    rows = []
    for _, den in models:
        err = per_level_errors(den, x_tr, noise, sigmas, kw.get("batch_size", 512)).mean(1)
        rows.append((fac * (err - opt)).tolist())
    return {"steps": [st for st, _ in models], "sigmas": [float(s) for s in sigmas], "excess": rows}


TARGET_NAMES = {"x0": "x0", "eps": "ε", "score": "score", "v": "v", "flow": "flow", "edm": "EDM F"}


def units_phrase(process: str, target: str) -> str:
    """'ε units of vp'."""
    return f"{TARGET_NAMES.get(target, target)} units of {process}"


def describe_units(param: Parametrization, source: str | None = None) -> str:
    """'losses in ε units of vp (from the run's checkpoint)': the units of a table of losses."""
    text = f"losses in {units_phrase(param.process.name, param.target)}"
    return f"{text} ({source})" if source else text


@dataclass(frozen=True)
class Units:
    """The units a diagnosis reports in (``report``), the model's own (``own``: its training loss, in
    which recipe totals are weighted), where each came from, and warnings about the choice."""

    report: Parametrization
    own: Parametrization
    source: str
    own_source: str
    warnings: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """One line for the verdict, the report and diagnose.json."""
        text = describe_units(self.report, self.source)
        if (self.report.process.name, self.report.target) != (self.own.process.name, self.own.target):
            own = units_phrase(self.own.process.name, self.own.target)
            text += f"; recipe totals in the model's own {own} ({self.own_source})"
        return text


MODEL_SOURCES = {"difflens": "from the run's checkpoint", "diffusers": "from the diffusers scheduler config"}


def resolve_units(
    model_param: Parametrization | None = None,
    model_kind: str | None = None,
    logged: dict | None = None,
    process: str | None = None,
    target: str | None = None,
) -> Units:
    """Which units a diagnosis uses. A difflens run or a diffusers model knows its own; a metrics.jsonl
    records its own (``logged``, see ``log_units``) unless --process/--target are given; anything else
    uses --process/--target (default edm, x0). For runs and diffusers models --process/--target only
    change the reporting units, never the model's own."""
    given = "from --process/--target"
    warnings = []
    if model_param is not None and model_kind in MODEL_SOURCES:
        own, own_source = model_param, MODEL_SOURCES[model_kind]
    elif model_param is not None and (process or target):
        own, own_source = model_param, given
    elif logged and not (process or target):
        own, own_source = Parametrization.of(logged["process"], logged["target"]), "from the log's header"
    else:
        own = Parametrization.of(process or "edm", target or "x0")
        own_source = given if process or target else "the default, edm and x0: give --process/--target if not"
        if logged and (logged.get("process"), logged.get("target")) != (own.process.name, own.target):
            warnings.append(
                f"the log records {units_phrase(logged['process'], logged['target'])}, "
                f"but --process/--target say {own.process.name}/{own.target}: using the latter"
            )
    report, source = own, own_source
    if model_kind in MODEL_SOURCES and (process or target):
        proc = get_process(process) if process else own.process
        report, source = Parametrization(proc, target or own.target), given
    return Units(report, own, source, own_source, tuple(warnings))


def model_recipe(info: dict, param: Parametrization, recipe: str | None = None):
    """((s, mass, λ_x0), name) of a model's training recipe, for weighted totals: a difflens run's own
    schedule (with its final state), else ``recipe`` (edm, uniform-t or a CSV; default the process's,
    see optimal_loss.DEFAULT_RECIPES, with uniform timesteps for a discrete DDPM schedule). The totals
    are in the model's own target units (``param``): its training loss."""
    from difflens.analysis.optimal_loss import default_recipe, recipe_quadrature
    from difflens.diffusion import schedules as sched
    from difflens.diffusion.precond import DiscreteVP

    desc = info.get("schedule")
    if recipe is None and desc is not None:
        schedule = sched.from_description(desc, param.process)
        if info.get("schedule_state") and hasattr(schedule, "load_state_dict"):
            schedule.load_state_dict(info["schedule_state"])
        s, mass, weight = schedule.quadrature()
        return (s, mass, weight * param.factor(s)), desc["name"]
    discrete = isinstance(param.process, DiscreteVP)
    recipe = recipe or default_recipe(param.process)
    if discrete and recipe == "uniform-t":
        s = param.process.s_of_t(np.arange(len(param.process.alphas_cumprod), dtype=np.float64))
        return (s, np.full(len(s), 1.0 / len(s)), param.factor(s)), "uniform timesteps"
    return recipe_quadrature(recipe, param.process, param.target), recipe


# ---------------------------------------------------------------- logs instead of models


def read_loss_log(path: Path, process) -> list[dict]:
    """Rows {step, sigma, loss} from a CSV (columns sigma or t, loss[, step]) or a difflens
    metrics.jsonl (per-level train loss per log line)."""
    path = Path(path)
    if not path.is_file():
        raise DifflensError(f"log {path}: no such file")
    rows = []
    if path.suffix == ".jsonl":
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            rows += [{"step": rec["step"], "sigma": lv["sigma"], "loss": lv["loss"]} for lv in rec.get("levels", [])]
    else:
        with path.open() as fh:
            reader = csv.DictReader(fh)
            cols = set(reader.fieldnames or [])
            if "loss" not in cols or not cols & {"sigma", "t"}:
                raise DifflensError(f"log {path}: need columns loss and sigma (or t), found {sorted(cols)}")
            try:
                for r in reader:
                    s = float(r["sigma"]) if r.get("sigma") not in (None, "") else float(process.s_of_t(float(r["t"])))
                    rows.append({"step": int(float(r.get("step") or 0)), "sigma": s, "loss": float(r["loss"])})
            except ValueError as exc:
                raise DifflensError(f"log {path}: non-numeric value ({exc})") from None
    rows = [r for r in rows if math.isfinite(r["sigma"]) and r["sigma"] > 0 and math.isfinite(r["loss"])]
    if not rows:
        raise DifflensError(f"log {path}: no usable rows (sigma > 0 and finite loss)")
    return rows


def log_units(path: Path) -> dict | None:
    """The loss units ({process, target}) a difflens metrics.jsonl records, else None."""
    path = Path(path)
    if path.suffix != ".jsonl" or not path.is_file():
        return None
    with path.open() as fh:
        first = fh.readline()
    try:
        units = json.loads(first).get("units")
    except (json.JSONDecodeError, AttributeError):
        return None
    return units if isinstance(units, dict) else None


def log_unit_warnings(
    sigmas: np.ndarray, loss: np.ndarray, opt: np.ndarray, opt_se: np.ndarray, variance: float, units: Parametrization
) -> list[str]:
    """Warnings when logged losses (``units``) are impossible there: below J* (no model beats it on its
    training data) by more than half of J* and 4 s.e., or over 100× the data variance (an x0 loss above
    the variance is worse than predicting the mean), each at several levels. Names the target whose
    units fit the log best (closest to J* in log ratio) when another fits."""

    def problems(param: Parametrization) -> tuple[int, int]:
        x0 = loss / param.factor(sigmas)
        return int(np.sum(x0 < 0.5 * opt - 4 * opt_se)), int(np.sum(x0 > 100 * variance))

    several = max(2, math.ceil(0.2 * len(sigmas)))
    below, above = problems(units)
    if below < several and above < several:
        return []
    what = []
    if below >= several:
        what.append(f"below J* by over half and 4 s.e. at {below} of {len(sigmas)} levels")
    if above >= several:
        what.append(f"over 100× the data variance at {above} of {len(sigmas)} levels")
    stated = units_phrase(units.process.name, units.target)
    ok = (opt > 1e-3 * variance) & (loss > 0)  # where J* is not ~0, the log ratio to J* measures the fit
    fits = []
    for target in TARGETS:
        cand = Parametrization(units.process, target)
        if target != units.target and max(problems(cand)) < several:
            ratio = loss[ok] / cand.factor(sigmas[ok]) / opt[ok]
            fits.append((float(np.abs(np.log(ratio)).mean()) if ok.any() else 0.0, target))
    head = f"log losses are impossible in {stated} ({'; '.join(what)})"
    if fits:
        best = TARGET_NAMES[min(fits)[1]]
        return [f"{head}: they look like {best} units, not {TARGET_NAMES[units.target]} (check --process/--target)"]
    return [f"{head}: check the log's units (--process/--target) and that the data match the model's"]


def diagnose_log(
    rows: list[dict],
    train: Dataset,
    units: Parametrization,
    quad,
    samples: int,
    seed: int,
    units_text: str | None = None,
) -> dict:
    """Logged per-level losses (target units) against the optimal loss at the logged levels.

    The overlay uses each level's loss at the last step that logged it; all steps go to the map.
    ``warnings`` lists signs that the log is not in ``units`` (``log_unit_warnings``)."""
    sigmas = np.unique([r["sigma"] for r in rows])
    opt, opt_se, info = optimal_levels(train, sigmas, samples, seed)
    fac = units.factor(sigmas)
    last: dict[float, tuple[int, float]] = {}
    for r in rows:
        if r["sigma"] not in last or r["step"] >= last[r["sigma"]][0]:
            last[r["sigma"]] = (r["step"], r["loss"])
    model_x0 = np.array([[last[s][1] / f] for s, f in zip(sigmas, fac, strict=True)])
    levels = build_levels(sigmas, fac, opt, opt_se, np.repeat(model_x0, 2, axis=1), None)
    for lv in levels:  # a logged value has no standard error of its own
        lv.train_stderr = math.nan
        lv.excess_stderr = lv.optimal_stderr
    steps = sorted({r["step"] for r in rows})
    grid = np.full((len(steps), len(sigmas)), np.nan)
    for r in rows:
        i, j = steps.index(r["step"]), int(np.searchsorted(sigmas, r["sigma"]))
        grid[i, j] = r["loss"] - fac[j] * opt[j]
    logged = np.array([last[s][1] for s in sigmas])
    return {
        "units": {**units.describe(), "description": units_text or describe_units(units)},
        "levels": [asdict(lv) for lv in levels],
        "totals": totals(levels, quad),
        "history": {"steps": steps, "sigmas": sigmas.tolist(), "excess": grid.tolist()},
        "warnings": log_unit_warnings(sigmas, logged, opt, opt_se, info["data_variance"], units),
        **info,
    }


# ---------------------------------------------------------------- plots, verdict, HTML


def plot_losses(result: dict, path: Path, title: str) -> None:
    """Loss vs σ (log axis): optimal curve, model on train and held-out, excess shaded."""
    lv = result["levels"]
    s = np.array([x["sigma"] for x in lv])
    opt = np.array([x["optimal"] for x in lv])
    trn = np.array([x["train"] for x in lv])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, log in zip(axes, (False, True), strict=True):
        ax.plot(s, opt, "k-", lw=2, label="optimal J*")
        ax.plot(s, trn, "o-", ms=3, color="C0", label="model, train")
        if lv[0]["held"] is not None:
            ax.plot(s, [x["held"] for x in lv], "s--", ms=3, color="C1", label="model, held-out")
        ax.fill_between(s, opt, trn, where=trn >= opt, color="C3", alpha=0.2, label="excess (train − J*)")
        if result.get("critical_sigma"):
            ax.axvline(result["critical_sigma"], color="gray", ls=":", lw=1, label="critical σ")
        ax.set_xscale("log")
        if log and np.all(trn > 0):
            ax.set_yscale("log")
            ax.set_ylim(bottom=max(trn.min() * 1e-3, opt.max() * 1e-6))
        ax.set_xlabel("noise level σ (VE-equivalent)")
        ax.set_ylabel(f"loss per dim, target {result['units']['target']} ({result['units']['process']})")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_excess_ratio(result: dict, path: Path) -> None:
    lv = [x for x in result["levels"] if x["excess_ratio"] is not None and math.isfinite(x["excess_ratio"])]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot([x["sigma"] for x in lv], [max(x["excess_ratio"], 1e-4) for x in lv], "o-", ms=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axhline(1.0, color="gray", ls="--", lw=1, label="excess = optimal")
    ax.set_xlabel("noise level σ")
    ax.set_ylabel("excess ratio (J_θ − J*) / J*  (train)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_heatmap(steps, sigmas, excess, path: Path, units: str) -> None:
    """Excess loss over training time (rows: checkpoints/steps) and noise level (columns)."""
    from matplotlib.colors import LogNorm

    grid = np.asarray(excess, dtype=np.float64)
    positive = grid[np.isfinite(grid) & (grid > 0)]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(steps) + 2.5))
    if positive.size:
        norm = LogNorm(vmin=max(positive.min(), positive.max() * 1e-6), vmax=positive.max())
        img = ax.imshow(np.where(grid > 0, grid, np.nan), aspect="auto", origin="lower", cmap="magma", norm=norm)
        fig.colorbar(img, ax=ax, label=f"excess loss J_θ − J* ({units}); ≤ 0 blank")
    ticks = np.linspace(0, len(sigmas) - 1, min(8, len(sigmas))).astype(int)
    ax.set_xticks(ticks, [f"{sigmas[i]:.3g}" for i in ticks])
    rows = np.linspace(0, len(steps) - 1, min(12, len(steps))).astype(int)
    ax.set_yticks(rows, [str(steps[i]) for i in rows])
    ax.set_xlabel("noise level σ")
    ax.set_ylabel("training step")
    save_figure(fig, path)


def verdict(result: dict) -> str:
    """One paragraph: how far from optimal the model is, where it underfits most, train vs held-out."""
    lv = result["levels"]
    tot = result["totals"]
    units = result["units"]
    text = units.get("description") or f"losses in {units_phrase(units['process'], units['target'])}"
    parts = [text[0].upper() + text[1:] + "."]
    t_opt, t_train = tot["optimal"]["value"], tot["train"]["value"]
    t_se = math.hypot(tot["optimal"]["stderr"], tot["train"]["stderr"] if math.isfinite(tot["train"]["stderr"]) else 0)
    if t_opt > 0 and abs(t_train - t_opt) <= 2 * t_se:
        parts.append(
            f"Weighted by its training recipe, the model's training loss ({t_train:.4g}) equals the optimal "
            f"({t_opt:.4g}) within Monte Carlo error: it is as good as any model can be on its training set."
        )
    elif t_opt > 0:
        parts.append(
            f"Weighted by its training recipe, the model's training loss is {t_train:.4g} against an optimal "
            f"{t_opt:.4g}: {100 * (t_train / t_opt - 1):.0f}% above the lowest achievable loss"
            + (f"; the excess is {100 * tot['excess'] / t_train:.0f}% of its loss." if t_train > 0 else ".")
        )
    s = np.array([x["sigma"] for x in lv])
    excess = np.array([x["excess"] for x in lv])  # target units: what the training loss sees
    k = int(np.nanargmax(excess)) if np.isfinite(excess).any() else 0
    ratio = lv[k]["excess_ratio"]
    ratio_text = f"{ratio + 1:.3g}×" if ratio is not None and math.isfinite(ratio) else "far above"
    parts.append(
        f"Its largest excess ({result['units']['target']} units) is at σ ≈ {s[k]:.3g}, where its loss is "
        f"{ratio_text} the optimal ({lv[k]['train']:.3g} vs {lv[k]['optimal']:.3g})."
    )
    big = [x for x in lv if x["excess"] > 2 * max(x["excess_stderr"] or 0, 1e-12) and x["excess_ratio"] > 0.1]
    if big:
        parts.append(
            f"The excess is significant (over 10% of J* and 2 s.e.) from σ ≈ {big[0]['sigma']:.3g} "
            f"to {big[-1]['sigma']:.3g}."
        )
    else:
        parts.append("Nowhere is the excess both over 10% of J* and over 2 standard errors: the model is near optimal.")
    below = [x for x in lv if x["excess"] < -3 * (x["excess_stderr"] or 0) and x["excess_stderr"]]
    if below:
        parts.append(
            f"At {len(below)} level(s) the measured loss is below J* by more than 3 s.e., which a model cannot do "
            "on its own training data: check that the data and split match the model's."
        )
    if lv[0]["held"] is not None:
        floor = 0.01 * (result.get("data_variance") or 0.0)  # relative gaps of near-zero losses mean nothing
        gaps = [(x["gap"], x["sigma"]) for x in lv if x["gap"] is not None and x["train_x0"] > floor]
        if gaps:
            g, gs = max(gaps)
            if g > 0.05:
                parts.append(
                    f"On held-out images the loss is up to {100 * g:.0f}% higher than on training images "
                    f"(at σ ≈ {gs:.3g}): the model fits its training set better than new data there."
                )
            else:
                parts.append(
                    "Held-out and training losses agree within 5% wherever the loss is above 1% of the data "
                    "variance: no sign of overfitting."
                )
    hist = result.get("history")
    if hist and len(hist["steps"]) > 1:
        grid = np.asarray(hist["excess"], dtype=np.float64)
        if np.isfinite(grid[-1]).any():
            j = int(np.nanargmax(grid[-1]))
            first, prev, last = grid[0, j], grid[-2, j], grid[-1, j]
            trend = (
                "and was still falling at the end: more training should lower it"
                if last < 0.98 * prev
                else "and had levelled off by the end"
            )
            parts.append(
                f"Over training (steps {hist['steps'][0]}–{hist['steps'][-1]}) the excess at σ ≈ "
                f"{hist['sigmas'][j]:.3g} went from {first:.3g} to {last:.3g} {trend}."
            )
    crit = result.get("critical_sigma")
    if crit:
        parts.append(
            f"Below σ ≈ {crit:.3g} the optimal loss is nearly zero (the optimal denoiser snaps to training images): "
            "only memorizing could remove the excess there, and a model that generalizes keeps it."
        )
    parts += [f"Warning: {w}." for w in result.get("warnings", [])]
    return " ".join(parts)


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def report_html(result: dict, pngs: list[Path], title: str) -> str:
    """A self-contained HTML page: verdict, totals, per-level table and the embedded plots."""
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{v:.4g}</td>" if isinstance(v, float) and math.isfinite(v) else f"<td>{'–' if v is None else v}</td>"
            for v in (
                lv["sigma"],
                lv["optimal"],
                lv["train"],
                lv["held"],
                lv["excess"],
                lv["excess_stderr"],
                lv["excess_ratio"],
                lv["gap"],
            )
        )
        + "</tr>"
        for lv in result["levels"]
    )
    t = result["totals"]
    totals_text = (
        f"optimal {t['optimal']['value']:.5g} ± {t['optimal']['stderr']:.2g}, model (train) "
        f"{t['train']['value']:.5g}, excess {t['excess']:.4g} (ratio {t['excess_ratio']:.3g}); "
        f"recipe mass inside the grid {t['optimal']['coverage']:.1%}"
    )
    figs = "".join(f"<figure>{_img(p)}</figure>" for p in pngs)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse;font-size:12px}} td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
p.verdict{{font-size:15px;background:#f4f4f4;padding:1em}}</style>
</head><body><h1>{title}</h1>
<p class="verdict">{result["verdict"]}</p>
<p><b>Totals weighted by the training recipe</b>: {totals_text}</p>
{figs}
<h2>Per level ({result["units"]["target"]} units, per dimension)</h2>
<table><tr><th>σ</th><th>optimal J*</th><th>train</th><th>held-out</th><th>excess</th><th>± s.e.</th>
<th>excess ratio</th><th>gap (held−train)/train</th></tr>{rows}</table>
</body></html>
"""


def write_outputs(result: dict, out: Path, title: str) -> list[Path]:
    """diagnose.json, diagnose.csv, loss.png, excess_ratio.png, heatmap.png (with a history) and
    report.html (self-contained); JSON last, so its presence means the run completed."""
    from difflens.report import write_csv, write_json

    out = Path(out)
    result["verdict"] = verdict(result)
    pngs = [out / "loss.png", out / "excess_ratio.png"]
    plot_losses(result, pngs[0], title)
    plot_excess_ratio(result, pngs[1])
    hist = result.get("history")
    if hist and len(hist["steps"]) > 1:
        pngs.append(out / "heatmap.png")
        plot_heatmap(hist["steps"], hist["sigmas"], hist["excess"], pngs[-1], result["units"]["target"])
    write_csv(out / "diagnose.csv", result["levels"])
    html = report_html(result, pngs, title)
    tmp = out / ".report.html.tmp"
    tmp.write_text(html)
    tmp.replace(out / "report.html")
    write_json(out / "diagnose.json", result)
    return [out / "diagnose.json", out / "diagnose.csv", *pngs, out / "report.html"]
