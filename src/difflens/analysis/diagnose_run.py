"""The ``diagnose`` run: which model, which data and split, which loss units, then the diagnosis.

Resolution order (docs/architecture.md): a difflens run folder brings its own data, split and
parametrization; explicit options override them; callables and logs fall back to edm/x0 units.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difflens.analysis import diagnose as dg
from difflens.analysis import sample_quality as sq
from difflens.analysis.optimal_loss import Levels
from difflens.analysis.run_support import Progress, no_progress
from difflens.analysis.units import resolve_units
from difflens.data import Dataset, check_same_layout
from difflens.data import load as load_data
from difflens.diffusion.precond import Parametrization
from difflens.diffusion.processes import parse_sigmas
from difflens.errors import DifflensError
from difflens.models import load_denoiser
from difflens.models.load import LoadedModel, default_shape


def checkpoint_paths(spec: str) -> list[Path]:
    """A run folder's ``ckpt_*.pt`` or the files a glob matches, in name order (at least one)."""
    folder = Path(spec)
    paths = sorted(folder.glob("ckpt_*.pt")) if folder.is_dir() else sorted(map(Path, glob.glob(spec)))
    if not paths:
        raise DifflensError(f"--checkpoints {spec}: no checkpoint files found")
    return paths


def shape_option(shape: str | None) -> tuple[int, ...] | None:
    """``--shape 1,8,8`` as a tuple."""
    try:
        return tuple(int(v) for v in shape.split(",")) if shape else None
    except ValueError:
        raise DifflensError(f"--shape must be a comma list of integers like 1,8,8, got {shape!r}") from None


def open_model(
    model: str, *, prediction_type: str | None = None, device: torch.device | None = None, **options: Any
) -> LoadedModel:
    """``load_denoiser`` on ``device`` (default cpu), with ``prediction_type`` passed only when given."""
    extra = {"prediction_type": prediction_type} if prediction_type else {}
    return load_denoiser(model, **options, **extra, device=device or "cpu")


def resolve_split(
    data: str | None,
    scale: str,
    holdout: float | None,
    split_seed: int | None,
    cfg: dict,
    default_holdout: float | None = None,
    default_seed: int = 0,
) -> tuple[Dataset, Dataset | None]:
    """(train, held-out) from explicit options, else a run's config, else the defaults."""
    ds = load_data(data or cfg.get("data", "digits"), scale if data else cfg.get("scale", scale))
    hold = holdout if holdout is not None else (cfg.get("holdout") or default_holdout)
    split = split_seed if split_seed is not None else cfg.get("split_seed", default_seed)
    return ds.split(hold, split) if hold else (ds, None)


def checkpoint_history(
    paths: Sequence[Path],
    train_ds: Dataset,
    grid: Levels,
    units: Parametrization,
    optimal: tuple[np.ndarray, np.ndarray, dict],
    advance: Callable[[int], None],
    quality: dict | None,
    **kw: Any,
) -> dict:
    """{"history": excess per checkpoint and level} and, with ``quality`` (feature, samples), the
    checkpoints' sample quality and its per-level correlation with the excess (sample_quality.py)."""
    models: list[tuple[int, Any]] = []
    for p in paths:
        m = load_denoiser(str(p), data=train_ds, device=kw["device"])
        models.append((int(m.info.get("step", len(models))), m.denoiser))
        advance(1)
    out = {"history": dg.excess_history(models, train_ds, grid, units, optimal, **kw)}
    advance(1)
    if quality is not None:
        out["sample_quality"] = sq.sample_quality(
            models, train_ds, out["history"], seed=kw["seed"], device=kw["device"], **quality
        )
    return out


def write_diagnosis(result: dict, out: Path, title: str) -> list[Path]:
    """``diagnose.write_outputs`` plus sample_quality.png when the result has a sample-quality part."""
    extra = [Path(out) / "sample_quality.png"] if "sample_quality" in result else []
    for path in extra:
        sq.plot_correlation(result["sample_quality"], result["history"]["excess"], path)
    return [*dg.write_outputs(result, out, title), *extra]


def run_diagnose(
    out: Path,
    *,
    model: str | None = None,
    from_log: Path | None = None,
    checkpoints: str | None = None,
    checkpoint: Path | None = None,
    data: str | None = None,
    scale: str = "auto",
    holdout: float | None = None,
    split_seed: int | None = None,
    process: str | None = None,
    target: str | None = None,
    time_scale: float | None = None,
    shape: str | None = None,
    scheduler: Path | None = None,
    prediction_type: str | None = None,
    trust_pickle: bool = False,
    recipe: str | None = None,
    sigmas: str = "0.002:80:24",
    images: int = 1024,
    queries_per_level: int = 1024,
    batch_size: int = 512,
    seed: int = 0,
    sample_quality: bool = False,
    feature: str = "pca",
    quality_samples: int = 512,
    device: torch.device | None = None,
    progress: Progress = no_progress,
    say: Callable[[str], None] = print,
) -> tuple[dict, list[Path]]:
    """Model (or logged) loss vs the optimal loss per level; writes diagnose.{json,csv,html,png} to ``out``.
    With ``sample_quality``, also the per-level correlation of checkpoints' excess with their samples'
    Fréchet distance (sample_quality.png). Models and the kernel run on ``device`` (default cpu)."""
    device = device or torch.device("cpu")
    if (model is None) == (from_log is None):
        raise DifflensError("give exactly one of --model or --from-log")
    grid = np.sort(parse_sigmas(sigmas))
    paths = checkpoint_paths(checkpoints) if checkpoints and from_log is None else []
    if sample_quality and not paths:
        raise DifflensError("--sample-quality needs --model and --checkpoints (a run's checkpoints to compare)")
    opts = {"process": process, "target": target, "time_scale": time_scale, "shape": shape_option(shape)}
    loaded = None
    if model is not None and model != "oracle":
        loaded = open_model(
            model,
            checkpoint=checkpoint,
            scheduler=scheduler,
            trust_pickle=trust_pickle,
            prediction_type=prediction_type,
            device=device,
            **opts,
        )
    cfg = loaded.info.get("config", {}) if loaded else {}
    train_ds, held_ds = resolve_split(data, scale, holdout, split_seed, cfg)
    if model == "oracle":
        loaded = load_denoiser("oracle", data=train_ds, device=device)
    elif loaded is not None and loaded.denoiser.shape is None:
        loaded.denoiser.shape = default_shape(train_ds.shape)
    if loaded is not None:
        check_same_layout(getattr(loaded.denoiser, "shape", None) or (), train_ds.shape, "model inputs", "data")
    if loaded is not None and loaded.info.get("data") and loaded.info["data"]["hash"] != train_ds.stats.hash:
        say("[yellow]warning:[/] these training data differ from the run's (other data spec or split)")
    chosen = resolve_units(
        loaded.param if loaded else None,
        loaded.info.get("kind") if loaded else None,
        dg.log_units(from_log) if from_log else None,
        process,
        target,
    )
    units = chosen.report
    for warning in chosen.warnings:
        say(f"[yellow]warning:[/] {warning}")
    quad, recipe_name = dg.model_recipe(loaded.info if loaded else {}, chosen.own, recipe)
    say(f"[bold]{train_ds.spec}[/]: N={train_ds.n}, held-out {held_ds.n if held_ds else 0}; {len(grid)} levels")
    if from_log is not None:
        rows = dg.read_loss_log(from_log, units.process)
        result = dg.diagnose_log(
            rows, train_ds, units, quad, queries_per_level, seed, units_text=chosen.text, device=device
        )
        for warning in result.get("warnings", []):
            say(f"[yellow]warning:[/] {warning}")
        title = f"{from_log.name} vs the optimal loss of {train_ds.spec}"
    else:
        steps = 2 + (len(paths) + 1 if paths else 0)
        advance = progress("optimal loss, model, checkpoints", steps)
        optimal = dg.optimal_levels(train_ds, grid, queries_per_level, seed, device)
        advance(1)
        result = dg.diagnose_model(
            loaded.denoiser,
            train_ds,
            held_ds,
            grid,
            units=units,
            quad=quad,
            images=images,
            seed=seed,
            batch_size=batch_size,
            optimal=optimal,
            units_text=chosen.text,
            device=device,
        )
        advance(1)
        if paths:
            quality = {"feature": feature, "samples": quality_samples} if sample_quality else None
            kw = {"images": images, "seed": seed, "batch_size": batch_size, "device": device}
            result.update(checkpoint_history(paths, train_ds, grid, units, optimal, advance, quality, **kw))
        title = f"{model} vs the optimal loss of {train_ds.spec}"
    result.update({"model": loaded.info if loaded else None, "recipe": recipe_name, "log": from_log and str(from_log)})
    return result, write_diagnosis(result, out, title)
