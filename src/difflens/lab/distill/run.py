"""One distillation experiment end to end (``distill toy|restore|policy``): training with a progress
callback, then NAME.csv, NAME.png and NAME.json (written last: its presence means the run completed).
``run_sweep`` (``--sweep``): the regime map — the experiment once per (n, unlabeled/n, width, seed),
distilled − baseline per cell, in sweep.json and the heat map sweep.png. An experiment that traced Pareto
fronts (its ``pareto`` entry) also gets pareto.png."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from difflens import report
from difflens.analysis.run_support import Interrupted, Progress, no_progress
from difflens.errors import DifflensError
from difflens.lab.distill import report as drep
from difflens.lab.distill.core import SpecialistCache
from difflens.lab.distill.policy import PolicyConfig, run_policy
from difflens.lab.distill.restore import DIGITS, RestoreConfig, run_restore
from difflens.lab.distill.toy import ToyConfig, run_toy

# experiment: (runner, metrics (key → label), plot options)
EXPERIMENTS: dict[str, tuple[Callable, dict[str, str], dict]] = {
    "toy": (run_toy, {"excess_risk": "excess DSM risk", "w2": "W2 to truth", "kl": "KL to truth"}, {}),
    "restore": (run_restore, {"psnr": "PSNR (dB)", "ssim": "SSIM"}, {}),
    "policy": (
        run_policy,
        {"success": "success rate", "return": "mean return"},
        {"xlabel": "demonstrations per task"},
    ),
}
CONFIGS = {"toy": ToyConfig, "restore": RestoreConfig, "policy": PolicyConfig}
LOWER_IS_BETTER = {"excess_risk", "w2", "kl"}


def run_distill(
    name: str,
    cfg: ToyConfig | RestoreConfig | PolicyConfig,
    out: Path,
    *,
    threads: int = 1,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> tuple[dict, dict[str, str]]:
    """Run experiment ``name`` on ``threads`` CPU threads, seeded by ``cfg.seed``, its nets on ``device``
    (default cpu); returns (result, metrics)."""
    if threads < 1:
        raise DifflensError(f"--threads must be ≥ 1, got {threads}")
    runner, metrics, plot_kw = EXPERIMENTS[name]
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    advance = progress(f"distill {name}: training steps", cfg.units())
    result = runner(cfg, progress=advance, device=device or "cpu")
    if result.get("pareto"):
        drep.plot_pareto(result["pareto"], out / "pareto.png", metrics, LOWER_IS_BETTER)
    if name == "toy":
        plot_kw = {"log_y": tuple(metrics), "floors": {m: [f[m] for f in result["floor"]] for m in ("w2", "kl")}}
    report.write_csv(out / f"{name}.csv", drep.summary_rows(result, tuple(metrics)))
    drep.plot_vs_pairs(result, metrics, out / f"{name}.png", **plot_kw)
    report.write_json(out / f"{name}.json", result)
    return result, metrics


@dataclass
class SweepGrid:
    """The regime grid of ``--sweep``: paired samples per task n (demonstrations per task for the
    policy), unlabeled conditions per task as multiples of n, generalist widths, seeds 0..seeds−1, and
    the generalist's training steps per cell (the specialists' steps scaled by the same factor; 0: the
    experiment's own). Small by default; every cell reruns the experiment at that (n, N, width, seed)."""

    sweep_pairs: tuple[int, ...] = (8, 64)
    sweep_ratios: tuple[int, ...] = (4, 32)
    sweep_widths: tuple[int, ...] = (32, 128, 512)
    sweep_seeds: int = 3
    sweep_steps: int = 0

    def check(self) -> None:
        """Positive values and a non-empty grid (DifflensError otherwise)."""
        if min((*self.sweep_pairs, *self.sweep_ratios, *self.sweep_widths, self.sweep_seeds), default=0) < 1:
            raise DifflensError("--sweep-pairs, --sweep-ratios, --sweep-widths and --sweep-seeds need positive values")
        if not (self.sweep_pairs and self.sweep_ratios and self.sweep_widths):
            raise DifflensError("the sweep grid needs at least one n, one ratio and one width")
        if self.sweep_steps < 0:
            raise DifflensError(f"--sweep-steps must be ≥ 0, got {self.sweep_steps}")

    def budget(self, cfg: ToyConfig | RestoreConfig | PolicyConfig) -> ToyConfig | RestoreConfig | PolicyConfig:
        """``cfg`` with the sweep's training steps: ``sweep_steps`` for the generalists and the specialists'
        steps scaled by the same factor (unchanged if ``sweep_steps`` is 0)."""
        if not self.sweep_steps:
            return cfg
        spec = max(1, round(cfg.specialist_steps * self.sweep_steps / cfg.steps)) if cfg.specialist_steps else 0
        return replace(cfg, steps=self.sweep_steps, specialist_steps=spec)


@dataclass
class RestoreSweep(SweepGrid):
    """The restoration sweep's defaults: n + N fits in the 1500 training images at every cell."""

    sweep_pairs: tuple[int, ...] = (8, 64)
    sweep_ratios: tuple[int, ...] = (2, 16)
    sweep_steps: int = 800


@dataclass
class PolicySweep(SweepGrid):
    """The policy sweep's defaults: n counts demonstrations (an expert episode is about 21 state-action
    pairs), so N/n = 16 is about 0.75 unlabeled states per paired one and 256 about 12."""

    sweep_pairs: tuple[int, ...] = (2, 16)
    sweep_ratios: tuple[int, ...] = (16, 256)
    sweep_steps: int = 1000


GRIDS = {"toy": SweepGrid, "restore": RestoreSweep, "policy": PolicySweep}


def _cell_config(name: str, cfg, n: int, unlabeled: int, width: int, seed: int):
    """The experiment's config reduced to one cell: baseline and distilled only (no oracle, Pareto or
    relabelling, whose costs the map does not need)."""
    if name == "toy":
        return replace(cfg, pairs=(n,), unlabeled=(unlabeled,), widths=(width,), seed=seed, pareto=0, oracle=False)
    if name == "restore":
        return replace(cfg, pairs=(n,), unlabeled=unlabeled, width=width, seed=seed, pareto=0, oracle=False)
    return replace(cfg, demos=(n,), unlabeled=unlabeled, width=width, seed=seed, pareto=0, relabel_rounds=0)


def _per_task(result: dict, method: str) -> list[dict]:
    return next(r["tasks"] for r in result["runs"] if r["method"] == method)


def sweep_summary(cells: list[dict], metrics: Collection[str]) -> list[dict]:
    """Mean and standard deviation over seeds (ddof 1; NaN with one seed) of distilled − baseline (the
    mean over tasks) per (n, ratio, width, metric)."""
    out = []
    keys = list(dict.fromkeys((c["n"], c["ratio"], c["width"]) for c in cells))
    for n, ratio, width in keys:
        sel = [c for c in cells if (c["n"], c["ratio"], c["width"]) == (n, ratio, width)]
        for m in metrics:
            d = np.array([c["diff"][m] for c in sel], dtype=np.float64)
            sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
            out.append({"n": n, "ratio": ratio, "width": width, "metric": m, "mean": float(d.mean()), "sd": sd})
    return out


def run_sweep(
    name: str,
    cfg: ToyConfig | RestoreConfig | PolicyConfig,
    grid: SweepGrid,
    out: Path,
    *,
    threads: int = 1,
    device: torch.device | None = None,
    progress: Progress = no_progress,
    resume: bool = False,
) -> dict:
    """Experiment ``name`` at every cell of ``grid`` (nets on ``device``); per cell the per-task metrics of
    the baseline and the distilled generalist and their difference (mean over tasks). Each finished cell
    is appended to cells.jsonl, so an interrupted sweep continues with ``resume``; at the end, sweep.json
    and sweep.png."""
    if threads < 1:
        raise DifflensError(f"--threads must be ≥ 1, got {threads}")
    grid.check()
    cfg = grid.budget(cfg)
    runner, metrics, _ = EXPERIMENTS[name]
    torch.set_num_threads(threads)
    plan = [
        (n, r, w, s)
        for s in range(grid.sweep_seeds)
        for n in grid.sweep_pairs
        for r in grid.sweep_ratios
        for w in grid.sweep_widths
    ]
    configs = [_cell_config(name, cfg, n, r * n, w, s) for n, r, w, s in plan]
    for c in configs:  # every cell's settings are valid before any training
        c.check(DIGITS - c.test) if name == "restore" else c.check()
    settings = {
        "experiment": name,
        "config": asdict(cfg),  # nested dataclasses (policy tasks) become dicts too
        "grid": asdict(grid),
    }
    out.mkdir(parents=True, exist_ok=True)
    log = report.LevelLog(out / "cells.jsonl", settings, resume)
    # the specialists of an (n, seed) and the baseline of an (n, width, seed) are fitted once and reused
    # by the sweep's other cells (docs/method.md, "Sweep cache"), so their training steps count once
    seen_specs, seen_base, total = set(), set(), 0
    for i, ((n, _, w, s), c) in enumerate(zip(plan, configs, strict=True)):
        if i in log.done:  # finished before an interruption: nothing to train
            continue
        total += c.units()
        if (n, s) in seen_specs:
            total -= c.units() - replace(c, specialist_steps=0).units()
        if (n, w, s) in seen_base:
            total -= c.steps
        seen_specs.add((n, s))
        seen_base.add((n, w, s))
    advance = progress(f"distill {name} sweep: training steps", total)
    cache = SpecialistCache()
    cells = []
    try:
        for i, ((n, r, w, s), c) in enumerate(zip(plan, configs, strict=True)):
            if i in log.done:
                cells.append(log.done[i])
                continue
            torch.manual_seed(s)
            result = runner(c, progress=advance, device=device or "cpu", cache=cache)
            base, dist = _per_task(result, "baseline"), _per_task(result, "distilled")
            diff = {m: float(np.mean([d[m] - b[m] for b, d in zip(base, dist, strict=True)])) for m in metrics}
            cell = {"n": n, "ratio": r, "unlabeled": r * n, "width": w, "seed": s}
            cells.append(cell | {"baseline": base, "distilled": dist, "diff": diff})
            log.append(i, cells[-1])
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted — {len(cells)} of {len(plan)} cells kept; rerun with --resume") from None
    sweep = {
        **settings,
        "metrics": metrics,
        "lower_is_better": sorted(LOWER_IS_BETTER & set(metrics)),
        "cells": cells,
        "summary": sweep_summary(cells, metrics),
        "fits_reused": cache.hits,
    }
    drep.plot_sweep(sweep, out / "sweep.png")
    report.write_json(out / "sweep.json", sweep)
    return sweep
