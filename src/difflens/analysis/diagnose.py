"""Diagnose a model against the optimal loss: per level, how far above the lowest possible loss it is.

For each noise level s: the model's loss on training images and on held-out images (noise fixed
per image, shared across levels and checkpoints: ``model_error``), the optimal loss J*(s) of the training set
(difflens.optimal_loss), the excess J_θ − J* and the excess ratio (J_θ − J*)/J*, in x0 units and in
any target's units; totals weighted by the model's training recipe; across checkpoints, the excess
over training time. ``write_outputs`` writes the tables, the plots (``report.plots``) and an HTML
page (``report.html``) with a plain-language verdict.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflens.analysis.model_error import HELD, TRAIN, split_errors
from difflens.analysis.optimal_loss import (
    Levels,
    Quadrature,
    default_recipe,
    optimal_loss_curve,
    recipe_quadrature,
    weighted_total,
)
from difflens.analysis.units import TARGET_NAMES, describe_units, units_phrase
from difflens.data import Dataset
from difflens.diffusion import schedules as sched
from difflens.diffusion.denoiser import Denoiser
from difflens.diffusion.precond import DiscreteVP, Parametrization
from difflens.diffusion.processes import TARGETS, Process
from difflens.errors import DifflensError
from difflens.report import plot_excess, plot_heatmap, plot_losses, report_html, write_csv, write_json, write_text


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


def _mean_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = values.shape[1]
    se = values.std(1, ddof=1) / math.sqrt(n) if n > 1 else np.full(len(values), np.nan)
    return values.mean(1), se


def optimal_levels(
    train: Dataset, sigmas: Levels, samples: int, seed: int, device: torch.device | str | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """J*_x0 and its standard error at the levels (full estimator, the kernel on ``device``), plus the
    curve summary."""
    curve = optimal_loss_curve(train, sigmas, samples=samples, seed=seed, device=device)
    j = np.array([lv.optimal_loss_x0 for lv in curve.levels])
    se = np.array([lv.stderr_x0 for lv in curve.levels])
    return j, se, {"critical_sigma": curve.critical_sigma, "data_variance": curve.data_variance}


def build_levels(
    sigmas: Levels,
    factor: np.ndarray,
    opt: np.ndarray,
    opt_se: np.ndarray,
    train_err: np.ndarray,
    held_err: np.ndarray | None,
) -> list[DiagLevel]:
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


def totals(levels: list[DiagLevel], quad: Quadrature) -> dict:
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
    denoiser: Denoiser,
    train: Dataset,
    held: Dataset | None,
    sigmas: Levels,
    *,
    units: Parametrization,
    quad: Quadrature,
    images: int | None = 1024,
    samples: int = 1024,
    seed: int = 0,
    batch_size: int = 512,
    optimal: tuple | None = None,
    units_text: str | None = None,
    device: torch.device | str | None = None,
) -> dict:
    """The full per-level diagnosis of one denoiser (see module doc). ``units_text`` says which units
    the losses are in and where they came from (``Units.text``); by default just the units. The
    denoiser and the kernel run on ``device`` (images and noise are drawn on the CPU)."""
    sigmas = np.sort(np.asarray(sigmas, dtype=np.float64))
    opt, opt_se, info = optimal if optimal is not None else optimal_levels(train, sigmas, samples, seed, device)
    kw = {"images": images, "seed": seed, "batch": batch_size, "device": device}
    train_err = split_errors(denoiser, train, sigmas, stream=TRAIN, **kw)
    held_err = None
    if held is not None:
        held_err = split_errors(denoiser, held, sigmas, stream=HELD, **kw)
    levels = build_levels(sigmas, units.factor(sigmas), opt, opt_se, train_err, held_err)
    return {
        "units": {**units.describe(), "description": units_text or describe_units(units)},
        "levels": [asdict(lv) for lv in levels],
        "totals": totals(levels, quad),
        "train_images": int(train_err.shape[1]),
        "held_images": None if held is None else int(held_err.shape[1]),
        **info,
    }


def excess_history(
    models: list[tuple[int, Denoiser]],
    train: Dataset,
    sigmas: Levels,
    units: Parametrization,
    optimal: tuple[np.ndarray, np.ndarray, dict],
    **kw: Any,
) -> dict:
    """Train excess J_θ − J* (target units) per level for a list of (step, denoiser), with the images
    and noise of ``diagnose_model``'s training split (``kw``: images, seed, batch_size, device)."""
    opt = optimal[0]
    fac = units.factor(sigmas)
    rows = []
    for _, den in models:
        err = split_errors(
            den,
            train,
            sigmas,
            images=kw.get("images"),
            seed=kw.get("seed", 0),
            batch=kw.get("batch_size", 512),
            device=kw.get("device"),
        ).mean(1)
        rows.append((fac * (err - opt)).tolist())
    return {"steps": [st for st, _ in models], "sigmas": [float(s) for s in sigmas], "excess": rows}


def model_recipe(info: dict, param: Parametrization, recipe: str | None = None) -> tuple[Quadrature, str]:
    """((s, mass, λ_x0), name) of a model's training recipe, for weighted totals: a difflens run's own
    schedule (with its final state), else ``recipe`` (edm, uniform-t or a CSV; default the process's,
    see optimal_loss.DEFAULT_RECIPES, with uniform timesteps for a discrete DDPM schedule). The totals
    are in the model's own target units (``param``): its training loss."""

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


def read_loss_log(path: Path, process: Process) -> list[dict]:
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
    quad: Quadrature,
    samples: int,
    seed: int,
    units_text: str | None = None,
    device: torch.device | str | None = None,
) -> dict:
    """Logged per-level losses (target units) against the optimal loss at the logged levels (the kernel
    on ``device``).

    The overlay uses each level's loss at the last step that logged it; all steps go to the map.
    ``warnings`` lists signs that the log is not in ``units`` (``log_unit_warnings``)."""
    sigmas = np.unique([r["sigma"] for r in rows])
    opt, opt_se, info = optimal_levels(train, sigmas, samples, seed, device)
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


# ---------------------------------------------------------------- verdict and outputs


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


def write_outputs(result: dict, out: Path, title: str) -> list[Path]:
    """diagnose.json, diagnose.csv, loss.png, excess.png, heatmap.png (with a history) and
    report.html (self-contained); JSON last, so its presence means the run completed."""
    out = Path(out)
    result["verdict"] = verdict(result)
    pngs = [out / "loss.png", out / "excess.png"]
    plot_losses(result, pngs[0], title)
    plot_excess(result, pngs[1])
    hist = result.get("history")
    if hist and len(hist["steps"]) > 1:
        pngs.append(out / "heatmap.png")
        plot_heatmap(hist["steps"], hist["sigmas"], hist["excess"], pngs[-1], result["units"]["target"])
    write_csv(out / "diagnose.csv", result["levels"])
    write_text(out / "report.html", report_html(result, pngs, title))
    write_json(out / "diagnose.json", result)
    return [out / "diagnose.json", out / "diagnose.csv", *pngs, out / "report.html"]
