"""EDM's log-normal schedule vs Xu et al.'s optimal-loss schedule, same model and budget, on two data sets
and two processes.

Schedules (docs/method.md, "Training schedules"):
* ``edm``          EDM's log-normal ln σ ~ N(−1.2, 1.2²), unit weight on the network's own loss;
* ``x0-adaptive``  the optimal-loss schedule in x0 units with the critical-σ term, adaptive (library defaults);
* ``x0-fixed``     the same schedule fixed from a pilot: the ``edm`` run of seed 0 (same budget) measured by
                   ``analysis.schedule_run.run_schedule`` (what ``difflens schedule --model PILOT`` runs),
                   whose schedule.json every seed then trains with;
* ``f-units``      the earlier difflens variant: the schedule in the training target's units (EDM's F for
                   ``--process edm``, the flow velocity for ``fm``), w_max = 10, no critical-σ term.

Processes: ``edm`` (VE, EDM preconditioning, target ``edm``) and ``fm`` (flow matching α = 1 − t, σ = t,
target ``flow``; its levels are the VE-equivalent s = σ/α, so the same schedules and the same sampler apply).

Per run: the per-level excess of the held-out loss over J* (x0 units per dimension, ``diagnose_model``),
samples from the EDM Heun sampler (18 levels, 80 → 0.002, ``diffusion.samplers``), and their Fréchet
distance to the training split and to the held-out split in the top-32 PCA directions of the training
split (``analysis.features``, as ``difflens memorization --fd-ratio``); on digits also in the features of a
small digit classifier trained here. Everything is cached per run (eval.json), so a re-run only
re-aggregates (use a new --out for other settings). Writes results.json, per_level.csv and summary.md to --out.

    python examples/schedule_comparison.py --out runs/sched --data digits,lfw --process edm,fm --seeds 3

(examples/README.md lists the exact commands behind its tables: digits 1000 steps, lfw 500, lfw fm at --width 640.)
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from difflens.analysis import diagnose as dg
from difflens.analysis.features import PCAFeature, frechet_distance
from difflens.analysis.optimal_loss import recipe_quadrature
from difflens.analysis.schedule_run import run_schedule
from difflens.diffusion.samplers import edm_sigmas, initial_noise, sample
from difflens.models import load_denoiser
from difflens.models.train import TrainConfig, split_data, train
from difflens.report import write_csv, write_json

LEVELS = np.geomspace(0.01, 80.0, 10)
TARGET = {"edm": "edm", "fm": "flow"}
SCHEDULES = ("edm", "x0-adaptive", "x0-fixed", "f-units")
BANDS = (0.0, 0.1, 1.0, 10.0, math.inf)  # where the training levels fell (fractions of all drawn σ)


class Classifier(torch.nn.Module):
    def __init__(self, dim: int = 64, width: int = 128, feat: int = 64):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(dim, width), torch.nn.ReLU(), torch.nn.Linear(width, feat), torch.nn.ReLU()
        )
        self.head = torch.nn.Linear(feat, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(x: torch.Tensor, y: torch.Tensor, steps: int = 1500, seed: int = 0) -> Classifier:
    """A small MLP digit classifier; its penultimate layer is a second feature space for digits."""
    torch.manual_seed(seed)
    net = Classifier(dim=x.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        xb = x[idx] + 0.05 * torch.randn(128, x.shape[1], generator=g)  # a little robustness to noise
        loss = torch.nn.functional.cross_entropy(net(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def config(args, data: str, process: str, schedule: str, seed: int, recipe: Path | None) -> TrainConfig:
    """The run's TrainConfig: everything but the schedule is shared."""
    base = {
        "data": data,
        "process": process,
        "target": TARGET[process],
        "width": args.width,
        "steps": args.steps,
        "seed": seed,
        "log_every": 100,
        "ckpt_every": args.steps,
    }
    opts = {
        "edm": {"schedule": "edm"},
        "x0-adaptive": {"schedule": "optimal-loss"},  # library defaults: units x0, w_max 1e3, bump on
        "x0-fixed": {"schedule": str(recipe)},
        "f-units": {"schedule": "optimal-loss", "units": "target", "w_max": 10.0, "bump": False},
    }[schedule]
    return TrainConfig(**base, **opts)


def level_mass(run: Path, critical: float) -> dict:
    """Fractions of all σ the run drew for training, per band and below the critical σ (metrics.jsonl)."""
    total, below = np.zeros(len(BANDS) - 1), 0.0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        for lv in json.loads(line)["levels"]:
            total[np.searchsorted(BANDS, lv["sigma"], side="right") - 1] += lv["count"]
            below += lv["count"] * (lv["sigma"] < critical)
    n = total.sum()
    return {"bands": (total / n).tolist(), "below_critical": below / n}


def evaluate(run: Path, ctx: dict, args, seed: int) -> dict:
    """Per-level excess (x0 units), FDs of Heun samples, and where the schedule drew its levels."""
    model = load_denoiser(str(run))
    res = dg.diagnose_model(
        model.denoiser,
        ctx["train"],
        ctx["held"],
        LEVELS,
        units=model.param,
        quad=recipe_quadrature("edm", model.param.process, model.param.target),
        images=args.images,
        optimal=ctx["optimal"],
    )
    grid = edm_sigmas(18)
    x = sample(model.denoiser, initial_noise(args.samples, ctx["train"].dim, 80.0, 100 + seed), grid, seed=seed)
    x = x.samples.float()
    out = {
        "train_excess_x0": [lv["train_x0"] - lv["optimal_x0"] for lv in res["levels"]],
        "held_excess_x0": [lv["held_x0"] - lv["optimal_x0"] for lv in res["levels"]],
        "fd_train": frechet_distance(x, ctx["x_train"], ctx["pca"]),
        "fd_held": frechet_distance(x, ctx["x_held"], ctx["pca"]),
        "finite": float(torch.isfinite(x).all(1).float().mean()),
        "mass": level_mass(run, ctx["critical"]),
        "seconds": json.loads((run / "train.json").read_text())["seconds"],
    }
    if ctx["clf"] is not None:
        with torch.no_grad():
            out["fd_clf"] = frechet_distance(ctx["clf"].body(x), ctx["clf_train"])
    return out


def prepare(args, data: str) -> dict:
    """The split, J* at the diagnosis levels, the data's critical σ, the PCA map and (digits) the classifier."""
    train_ds, held_ds = split_data(TrainConfig(data=data))
    x_train, x_held = train_ds.rows(0, train_ds.n), held_ds.rows(0, held_ds.n)
    optimal = dg.optimal_levels(train_ds, LEVELS, samples=2048, seed=0)
    pca = PCAFeature(train_ds, 32)
    ctx = {"train": train_ds, "held": held_ds, "x_train": x_train, "x_held": x_held, "optimal": optimal, "pca": pca}
    ctx |= {"critical": optimal[2]["critical_sigma"], "clf": None, "refs": {"pca": pca.describe()}}
    pick = np.random.default_rng(0).choice(train_ds.n, size=min(args.samples, train_ds.n), replace=False)
    ctx["refs"] |= {
        "n_train": train_ds.n,
        "n_held": held_ds.n,
        "fd_held_vs_train": frechet_distance(x_held, x_train, pca),
        "fd_train_subset_vs_train": frechet_distance(x_train[pick], x_train, pca),
        "fd_train_subset_vs_held": frechet_distance(x_train[pick], x_held, pca),
        "subset": len(pick),
    }
    if train_ds.labels is not None and data == "digits":
        clf = train_classifier(x_train, torch.as_tensor(train_ds.labels, dtype=torch.long))
        with torch.no_grad():
            ctx["clf"], ctx["clf_train"] = clf, clf.body(x_train)
            ctx["refs"]["clf_accuracy"] = float((clf(x_held).argmax(1).numpy() == held_ds.labels).mean())
            ctx["refs"]["fd_clf_held_vs_train"] = frechet_distance(clf.body(x_held), ctx["clf_train"])
    return ctx


def run_all(args, data: str, process: str, ctx: dict) -> tuple[list[dict], dict]:
    """Train (unless cached) and evaluate every schedule × seed; the x0-fixed recipe comes from the edm seed-0 pilot."""
    root = args.out / data / process
    runs, recipe_info = [], {}
    for schedule in args.schedules:
        recipe = None
        if schedule == "x0-fixed":
            pilot = root / "edm_seed0"
            if not (pilot / "model.safetensors").exists():
                train(config(args, data, process, "edm", 0, None), pilot)
            recipe = root / "x0-fixed-recipe" / "schedule.json"
            if not recipe.exists():
                rec = run_schedule(
                    recipe.parent, {}, data=data, holdout=0.1, model=str(pilot), process=process, target=TARGET[process]
                )
                recipe_info = {"critical_sigma": rec["params"]["critical_sigma"], "levels": rec["levels"]}
            else:
                rec = json.loads(recipe.read_text())
                recipe_info = {"critical_sigma": rec["params"]["critical_sigma"], "levels": rec["levels"]}
        for seed in range(args.seeds):
            run = root / f"{schedule}_seed{seed}"
            cache = run / "eval.json"
            if not cache.exists():
                if not (run / "train.json").exists():
                    if run.exists():
                        shutil.rmtree(run)
                    train(config(args, data, process, schedule, seed, recipe), run)
                write_json(cache, evaluate(run, ctx, args, seed))
            r = {"data": data, "process": process, "schedule": schedule, "seed": seed, **json.loads(cache.read_text())}
            runs.append(r)
            print(
                f"{data:6s} {process:3s} {schedule:11s} seed {seed}: FD train {r['fd_train']:.3f} "
                f"held {r['fd_held']:.3f} ({r['seconds']:.0f} s train)",
                flush=True,
            )
    return runs, recipe_info


def mean_sd(v) -> tuple[float, float]:
    v = np.asarray(v, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def tables(groups: list[dict], schedules) -> str:
    """Markdown: FD table and per-level held-out excess table per (data, process)."""
    lines = []
    for g in groups:
        refs = g["refs"]
        lines += [f"### {g['data']}, process {g['process']} (critical σ {g['critical_sigma']:.3g})", ""]
        clf = "clf" in g["summary"][schedules[0]]
        head = "| schedule | FD train (PCA-32) | FD held-out | " + ("FD train (classifier) | " if clf else "")
        lines += [head + "σ < 0.1 | 0.1–1 | 1–10 | > 10 | below σ* |", "|---" * (8 + clf) + "|"]
        for s in schedules:
            m = g["summary"][s]
            row = f"| {s} | " + " | ".join(f"{m[k][0]:.3g} ± {m[k][1]:.2g}" for k in ("fd_train", "fd_held")) + " | "
            if clf:
                row += f"{m['clf'][0]:.3g} ± {m['clf'][1]:.2g} | "
            row += " | ".join(f"{100 * b:.0f}%" for b in m["bands"]) + f" | {100 * m['below_critical']:.0f}% |"
            lines.append(row)
        lines += [
            f"| {refs['subset']} training images | {refs['fd_train_subset_vs_train']:.3g} | "
            f"{refs['fd_train_subset_vs_held']:.3g} | " + ("| " if clf else "") + "| | | | |",
            "",
            "| σ | J* | " + " | ".join(schedules) + " |",
            "|---" * (2 + len(schedules)) + "|",
        ]
        for i, lv in enumerate(LEVELS):
            cells = " | ".join(f"{g['summary'][s]['held_excess'][i]:.2g}" for s in schedules)
            lines.append(f"| {lv:.3g} | {g['optimal_x0'][i]:.2g} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/schedule_comparison"))
    ap.add_argument("--data", default="digits,lfw")
    ap.add_argument("--process", default="edm,fm")
    ap.add_argument("--schedules", default=",".join(SCHEDULES))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--samples", type=int, default=512, help="generated samples per run for the distances")
    ap.add_argument("--images", type=int, default=512, help="images per split and level for the per-level losses")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    args.schedules = args.schedules.split(",")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start, groups, all_runs = time.time(), [], []
    for data in args.data.split(","):
        ctx = prepare(args, data)
        print(f"{data}: critical σ {ctx['critical']:.3g}; references {json.dumps(ctx['refs'])}", flush=True)
        for process in args.process.split(","):
            runs, recipe = run_all(args, data, process, ctx)
            all_runs += runs
            summary = {}
            for s in args.schedules:
                rs = [r for r in runs if r["schedule"] == s]
                summary[s] = {
                    "fd_train": mean_sd([r["fd_train"] for r in rs]),
                    "fd_held": mean_sd([r["fd_held"] for r in rs]),
                    "held_excess": np.mean([r["held_excess_x0"] for r in rs], 0).tolist(),
                    "train_excess": np.mean([r["train_excess_x0"] for r in rs], 0).tolist(),
                    "bands": np.mean([r["mass"]["bands"] for r in rs], 0).tolist(),
                    "below_critical": float(np.mean([r["mass"]["below_critical"] for r in rs])),
                    "finite": float(np.mean([r["finite"] for r in rs])),
                }
                if "fd_clf" in rs[0]:
                    summary[s]["clf"] = mean_sd([r["fd_clf"] for r in rs])
            groups.append(
                {
                    "data": data,
                    "process": process,
                    "critical_sigma": ctx["critical"],
                    "recipe_critical_sigma": recipe.get("critical_sigma"),
                    "optimal_x0": ctx["optimal"][0].tolist(),
                    "refs": ctx["refs"],
                    "summary": summary,
                    "fixed_recipe_levels": recipe.get("levels"),
                }
            )
    rows = [
        {"data": g["data"], "process": g["process"], "sigma": float(s), "optimal_x0": g["optimal_x0"][i]}
        | {f"{k}_held_excess": g["summary"][k]["held_excess"][i] for k in args.schedules}
        for g in groups
        for i, s in enumerate(LEVELS)
    ]
    write_csv(args.out / "per_level.csv", rows)
    write_json(args.out / "results.json", {"args": {k: str(v) for k, v in vars(args).items()}, "groups": groups})
    text = tables(groups, args.schedules)
    (args.out / "summary.md").write_text(text)
    print(text)
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
