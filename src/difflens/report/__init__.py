"""Writing results: JSON, CSV and PNG, each written whole or not at all (temp file, then rename)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from difflens.errors import DifflensError  # noqa: E402


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _clean(obj):
    """JSON has no NaN/Inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    _atomic_write(Path(path), (json.dumps(_clean(obj), indent=2) + "\n").encode())


def write_csv(path: Path, rows: Iterable[dict]) -> None:
    rows = list(rows)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _atomic_write(Path(path), buf.getvalue().encode())


def save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    _atomic_write(Path(path), buf.getvalue())


class LevelLog:
    """Per-level results appended as they finish (JSON lines after a header of the run's settings),
    so an interrupted run loses at most the level in progress and ``--resume`` continues it."""

    def __init__(self, path: Path, config: dict, resume: bool):
        self.path = Path(path)
        self.done: dict[int, dict] = {}
        if resume and self.path.exists():
            lines = self.path.read_text().splitlines()
            header = json.loads(lines[0]) if lines else None
            if header != _clean(config):
                raise DifflensError(
                    f"cannot resume: the settings differ from the interrupted run in {self.path.parent} "
                    "(run without --resume to start over)"
                )
            for line in lines[1:]:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut short by the interruption
                self.done[rec["index"]] = rec["level"]
            self.path.write_text(
                "\n".join([lines[0], *(json.dumps(self._rec(i, v)) for i, v in self.done.items())]) + "\n"
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(_clean(config)) + "\n")

    @staticmethod
    def _rec(index: int, level: dict) -> dict:
        return {"index": index, "level": level}

    def append(self, index: int, level: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(_clean(self._rec(index, level))) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def plot_optimal_loss(curve: dict, path: Path) -> None:
    """J* vs σ (log axis) with ±2 s.e. bands: linear scale (left) and log scale (right)."""
    lv = curve["levels"]
    s = [x["sigma"] for x in lv]
    y = [x["optimal_loss"] for x in lv]
    e = [2 * (x["stderr"] if x["stderr"] is not None and math.isfinite(x["stderr"]) else 0.0) for x in lv]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    unit = "per dim" if curve["reduction"] == "mean" else "summed"
    name = curve["dataset"]["spec"]
    for ax, log in zip(axes, (False, True), strict=True):
        ax.plot(s, y, "o-", ms=3, color="C0", label=f"J* ({curve['estimator']})")
        ax.fill_between(
            s,
            [a - b for a, b in zip(y, e, strict=True)],
            [a + b for a, b in zip(y, e, strict=True)],
            color="C0",
            alpha=0.25,
            label="±2 s.e.",
        )
        if curve["target"] == "x0":
            ax.axhline(curve["data_variance"], color="gray", ls="--", lw=1, label="data variance")
        if curve.get("critical_sigma"):
            ax.axvline(
                curve["critical_sigma"], color="C3", ls=":", lw=1, label=f"critical σ ≈ {curve['critical_sigma']:.3g}"
            )
        ax.set_xscale("log")
        if log:
            positive = [v for v in y if v > 0]
            if positive:
                ax.set_yscale("log")
                ax.set_ylim(bottom=max(min(positive), max(positive) * 1e-8) / 2)
        ax.set_xlabel("noise level σ (VE-equivalent s = σ_t/α_t)")
        ax.set_ylabel(f"optimal loss, target {curve['target']} ({unit})")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Optimal loss on {name} (N={curve['dataset']['n']}, D={curve['dataset']['dim']}), "
        f"process {curve['process']}, M={curve['samples']}"
    )
    save_figure(fig, path)
