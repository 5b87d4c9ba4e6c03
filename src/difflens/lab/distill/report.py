"""Plots and summary tables of the distillation experiments (PNG via ``difflens.report.save_figure``)."""

from __future__ import annotations

from collections.abc import Container
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from difflens.report import save_figure

COLORS = {"specialist": "C0", "baseline": "C3", "distilled": "C2", "distilled+relabel": "C4", "oracle": "k"}


def summary_rows(result: dict, metrics: tuple[str, ...]) -> list[dict]:
    """One flat row per (run, task): the run's settings and the task's metrics (same columns for all rows)."""
    rows = []
    for run in result["runs"]:
        for k, t in enumerate(run["tasks"]):
            row = {key: run.get(key) for key in ("method", "n", "unlabeled", "width", "params")}
            row["task"] = k
            row["pairs"] = run["pairs"][k] if "pairs" in run else run.get("n")
            rows.append({**row, **{m: t.get(m) for m in metrics}})
    return rows


def _variant(run: dict) -> str:
    parts = [run["method"]]
    if run.get("unlabeled") is not None:
        parts.append(f"N={run['unlabeled']}")
    if run.get("width") is not None and run["method"] != "specialist":
        parts.append(f"w={run['width']}")
    return " ".join(parts)


def plot_vs_pairs(
    result: dict,
    metrics: dict[str, str],
    path: Path,
    *,
    xlabel: str = "paired samples per task n",
    log_y: tuple[str, ...] = (),
    floors: dict[str, list[float]] | None = None,
) -> None:
    """Per-task metric vs n, one line per method variant; runs without n (oracle, expert) as lines across."""
    runs = result["runs"]
    k = len(runs[0]["tasks"])
    fig, axes = plt.subplots(
        len(metrics), k, figsize=(3.6 * k, 3.0 * len(metrics)), squeeze=False, layout="constrained"
    )
    variants = list(dict.fromkeys(_variant(r) for r in runs))
    names = result.get("task_names") or [f"task {i}" for i in range(k)]
    for row, (metric, label) in enumerate(metrics.items()):
        for task in range(k):
            ax = axes[row][task]
            for i, var in enumerate(variants):
                sel = [r for r in runs if _variant(r) == var]
                color = COLORS.get(sel[0]["method"], f"C{5 + i % 5}")
                earlier = [v for v in variants[:i] if v.split()[0] == sel[0]["method"]]
                style = ("-", "--", "-.", ":")[len(earlier) % 4]
                if sel[0].get("n") is None:
                    ax.axhline(sel[0]["tasks"][task][metric], color=color, ls=":", lw=1.2, label=var)
                    continue
                sel.sort(key=lambda r: r["n"])
                ax.plot(
                    [r["n"] for r in sel],
                    [r["tasks"][task][metric] for r in sel],
                    style,
                    marker="o",
                    ms=3,
                    color=color,
                    label=var,
                )
            if floors and metric in floors:
                ax.axhline(floors[metric][task], color="gray", ls="-.", lw=1, label="finite-sample floor")
            ax.set_xscale("log", base=2)
            if metric in log_y:
                ax.set_yscale("log")
            ax.set_title(f"task {task}: {names[task]}" if result.get("task_names") else names[task], fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(label, fontsize=8)
            ax.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"difflens distill {result['experiment']}: per-task metrics vs n", fontsize=10)
    save_figure(fig, path)


def plot_pareto(
    pareto: dict, path: Path, metrics: dict[str, str], lower_is_better: Container[str] = frozenset()
) -> None:
    """The distilled and the baseline generalists' Pareto fronts, one panel per metric present in the
    points: for two tasks task 0's metric against task 1's (a line through the weight grid, λ_0 marked
    at the ends); for more tasks each task's metric at each weight vector."""
    fronts = pareto["fronts"]
    first = next(iter(fronts.values()))[0]["metrics"][0]
    shown = {m: label for m, label in metrics.items() if m in first}
    k = len(pareto["weights"][0])
    fig, axes = plt.subplots(1, len(shown), figsize=(4.6 * len(shown), 4.0), squeeze=False, layout="constrained")
    for ax, (m, label) in zip(axes[0], shown.items(), strict=True):
        for name, pts in fronts.items():
            color = COLORS.get(name, "C5")
            if k == 2:
                xs, ys = [p["metrics"][0][m] for p in pts], [p["metrics"][1][m] for p in pts]
                ax.plot(xs, ys, "o-", ms=4, color=color, label=name)
                for i in (0, len(pts) - 1):
                    ax.annotate(f"λ₀={pts[i]['weights'][0]:.2f}", (xs[i], ys[i]), fontsize=6, color=color)
                ax.set_xlabel(f"task 0: {label}", fontsize=8)
                ax.set_ylabel(f"task 1: {label}", fontsize=8)
                continue
            for task in range(k):
                style = ("-", "--", "-.", ":")[task % 4]
                ys = [p["metrics"][task][m] for p in pts]
                ax.plot(ys, style, marker="o", ms=3, color=color, label=f"{name} t{task}")
            ax.set_xlabel("weight vector (index in the grid)", fontsize=8)
            ax.set_ylabel(label, fontsize=8)
        better = "lower" if m in lower_is_better else "higher"
        ax.set_title(f"{label} ({better} is better)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Pareto fronts at n={pareto['n']} ({pareto['kind']} scalarization, {len(pareto['weights'])} weights)",
        fontsize=10,
    )
    save_figure(fig, path)


def plot_sweep(sweep: dict, path: Path) -> None:
    """Heat maps of distilled − baseline (mean over tasks, mean over seeds; ± the seeds' standard
    deviation in each cell): one row per metric, one column per generalist width, n down, N/n across.
    Colours are oriented so that green means distillation is better (red: worse)."""
    grid, metrics = sweep["grid"], sweep["metrics"]
    ns, ratios, widths = grid["sweep_pairs"], grid["sweep_ratios"], grid["sweep_widths"]
    rows = {(r["n"], r["ratio"], r["width"], r["metric"]): r for r in sweep["summary"]}
    fig, axes = plt.subplots(
        len(metrics),
        len(widths),
        figsize=(2.0 + 1.6 * len(ratios) * len(widths), 1.0 + 1.1 * len(ns) * len(metrics)),
        squeeze=False,
        layout="constrained",
    )
    for i, (m, label) in enumerate(metrics.items()):
        sign = -1.0 if m in sweep["lower_is_better"] else 1.0
        mean = np.array([[[rows[(n, r, w, m)]["mean"] for r in ratios] for n in ns] for w in widths])
        lim = float(np.nanmax(np.abs(np.where(np.isfinite(mean), mean, np.nan)), initial=0.0)) or 1.0
        for j, w in enumerate(widths):
            ax = axes[i][j]
            img = ax.imshow(sign * mean[j], cmap="RdYlGn", vmin=-lim, vmax=lim, aspect="auto")
            for a, n in enumerate(ns):
                for b, r in enumerate(ratios):
                    cell = rows[(n, r, w, m)]
                    sd = "" if not np.isfinite(cell["sd"]) else f"\n±{cell['sd']:.2g}"
                    ax.text(b, a, f"{cell['mean']:+.2g}{sd}", ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(ratios)), [f"{r}×" for r in ratios], fontsize=7)
            ax.set_yticks(range(len(ns)), [str(n) for n in ns], fontsize=7)
            ax.set_xlabel("unlabeled N / n", fontsize=8)
            ax.set_ylabel("n per task", fontsize=8)
            ax.set_title(f"{label}, width {w}", fontsize=8)
        gain = "baseline − distilled" if sign < 0 else "distilled − baseline"
        fig.colorbar(img, ax=axes[i].tolist(), shrink=0.8).set_label(gain, fontsize=7)
    seeds = grid["sweep_seeds"]
    fig.suptitle(
        f"difflens distill {sweep['experiment']}: distilled − baseline (mean over tasks), mean ± sd over {seeds} "
        "seeds; green: distillation better",
        fontsize=9,
    )
    save_figure(fig, path)
