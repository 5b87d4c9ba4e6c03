"""EDM's default noise schedule vs Xu et al.'s optimal-loss schedule on digits, same model and budget.

For each schedule and seed: train the reference MLP (difflens.train), then measure
* per-level excess over the optimal loss on training and held-out images (difflens.diagnose), and
* sample quality: a Fréchet distance between samples (EDM Heun sampler) and the digits, in the
  penultimate-layer features of a small digits classifier trained here on the training split.

Usage (about 1 minute per run on one core with the defaults):
    python examples/schedule_comparison.py --out runs/schedule_comparison [--seeds 3 --steps 1500]
Writes results.json, per_level.csv and comparison.png in --out and prints a summary table.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from scipy import linalg

from difflens.analysis import diagnose as dg
from difflens.analysis.optimal_loss import recipe_quadrature
from difflens.models import load_denoiser
from difflens.models.train import TrainConfig, split_data, train
from difflens.report import plt, save_figure, write_csv, write_json

LEVELS = np.geomspace(0.01, 40.0, 12)


class Classifier(torch.nn.Module):
    def __init__(self, dim: int = 64, width: int = 128, feat: int = 64):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(dim, width), torch.nn.ReLU(), torch.nn.Linear(width, feat), torch.nn.ReLU()
        )
        self.head = torch.nn.Linear(feat, 10)

    def forward(self, x):
        return self.head(self.body(x))


def train_classifier(x: torch.Tensor, y: torch.Tensor, steps: int = 1500, seed: int = 0) -> Classifier:
    """A small MLP digit classifier; its penultimate layer is the feature space of the distance."""
    torch.manual_seed(seed)
    net = Classifier()
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


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets."""
    ma, mb = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(ca @ cb)
    return float(((ma - mb) ** 2).sum() + np.trace(ca + cb - 2 * np.real(root)))


@torch.no_grad()
def heun_sample(denoiser, n: int, dim: int, steps: int = 18, seed: int = 0, rho: float = 7.0) -> torch.Tensor:
    """EDM's deterministic Heun sampler from σ = 80 to 0.002 (Karras et al., Algorithm 1, no churn)."""
    i = np.arange(steps)
    s = (80.0 ** (1 / rho) + i / (steps - 1) * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    s = np.append(s, 0.0)
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) * s[0]
    for k in range(steps):
        d = (x - denoiser(x, s[k])) / s[k]
        x_next = x + (s[k + 1] - s[k]) * d
        if s[k + 1] > 0:
            d2 = (x_next - denoiser(x_next, s[k + 1])) / s[k + 1]
            x_next = x + (s[k + 1] - s[k]) * 0.5 * (d + d2)
        x = x_next
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/schedule_comparison"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--w-max", type=float, default=10.0, help="optimal-loss schedule: weight cap")
    ap.add_argument("--sigma-min", type=float, default=0.002, help="optimal-loss schedule: lowest σ")
    ap.add_argument("--schedules", default="edm,optimal-loss", help="which schedules to train")
    ap.add_argument("--samples", type=int, default=1000, help="generated samples per run for the distance")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    base = TrainConfig(width=args.width, steps=args.steps, log_every=100, ckpt_every=args.steps)
    train_ds, held_ds = split_data(base)
    x_train, x_held = train_ds.rows(0, train_ds.n), held_ds.rows(0, held_ds.n)
    clf = train_classifier(x_train, torch.as_tensor(train_ds.labels, dtype=torch.long))
    acc = float((clf(x_held).argmax(1).numpy() == held_ds.labels).mean())
    with torch.no_grad():
        feat_train, feat_held = clf.body(x_train).numpy(), clf.body(x_held).numpy()
    fd_floor = frechet(feat_held, feat_train)
    pick = np.random.default_rng(0).choice(train_ds.n, size=min(args.samples, train_ds.n), replace=False)
    fd_copy = frechet(feat_train[pick], feat_train)  # a perfect copier with as many samples as the models
    print(
        f"classifier held-out accuracy {acc:.3f}; FD(held-out images, training images) = {fd_floor:.3f}; "
        f"FD({len(pick)} training images, training images) = {fd_copy:.3f}"
    )
    optimal = dg.optimal_levels(train_ds, LEVELS, samples=2048, seed=0)

    runs = []
    schedules = args.schedules.split(",")
    for schedule in schedules:
        for seed in range(args.seeds):
            opts = {"schedule": schedule, "seed": seed, "w_max": args.w_max, "sigma_min": args.sigma_min}
            cfg = TrainConfig(**{**base.__dict__, **opts})
            out = args.out / f"{schedule}_seed{seed}"
            summary = train(cfg, out)
            model = load_denoiser(str(out))
            units = model.param
            quad = recipe_quadrature("edm", units.process, "edm")  # EDM-weighted: F-loss units
            res = dg.diagnose_model(
                model.denoiser, train_ds, held_ds, LEVELS, units=units, quad=quad, images=None, optimal=optimal
            )
            samples = heun_sample(model.denoiser, args.samples, train_ds.dim, seed=100 + seed)
            with torch.no_grad():
                fd = frechet(clf.body(samples).numpy(), feat_train)
            runs.append(
                {
                    "schedule": schedule,
                    "seed": seed,
                    "seconds": summary["seconds"],
                    "fd": fd,
                    "train_excess_x0": [lv["train_x0"] - lv["optimal_x0"] for lv in res["levels"]],
                    "held_excess_x0": [lv["held_x0"] - lv["optimal_x0"] for lv in res["levels"]],
                    "edm_total": res["totals"],
                }
            )
            print(
                f"{schedule:13s} seed {seed}: FD {fd:.3f}, "
                f"EDM-weighted held-out loss {res['totals']['held']['value']:.4f}"
            )

    rows = []
    for i, s in enumerate(LEVELS):
        row = {"sigma": float(s), "optimal_x0": float(optimal[0][i])}
        for schedule in schedules:
            held = [r["held_excess_x0"][i] for r in runs if r["schedule"] == schedule]
            row[f"{schedule}_held_excess"] = float(np.mean(held))
            row[f"{schedule}_held_excess_sd"] = float(np.std(held, ddof=1)) if len(held) > 1 else math.nan
        rows.append(row)
    summary = {}
    for schedule in schedules:
        rs = [r for r in runs if r["schedule"] == schedule]
        fds = [r["fd"] for r in rs]
        held = [r["edm_total"]["held"]["value"] for r in rs]
        summary[schedule] = {
            "fd_mean": float(np.mean(fds)),
            "fd_sd": float(np.std(fds, ddof=1)) if len(fds) > 1 else math.nan,
            "edm_weighted_held_loss_mean": float(np.mean(held)),
            "edm_weighted_held_loss_sd": float(np.std(held, ddof=1)) if len(held) > 1 else math.nan,
        }
    write_csv(args.out / "per_level.csv", rows)
    write_json(
        args.out / "results.json",
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "classifier_accuracy": acc,
            "fd_held_vs_train": fd_floor,
            "fd_train_subset_vs_train": fd_copy,
            "levels": LEVELS.tolist(),
            "summary": summary,
            "runs": runs,
        },
    )

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for schedule, color in zip(schedules, ("C0", "C3"), strict=False):
        mean = np.array([r[f"{schedule}_held_excess"] for r in rows])
        sd = np.array([r[f"{schedule}_held_excess_sd"] for r in rows])
        axes[0].plot(LEVELS, mean, "o-", color=color, ms=3, label=schedule)
        axes[0].fill_between(LEVELS, mean - sd, mean + sd, color=color, alpha=0.2)
        fds = [r["fd"] for r in runs if r["schedule"] == schedule]
        axes[1].scatter([schedule] * len(fds), fds, color=color)
    axes[1].axhline(fd_floor, color="gray", ls="--", label=f"{held_ds.n} held-out vs training images")
    axes[1].axhline(fd_copy, color="gray", ls=":", label=f"{len(pick)} training images vs all")
    axes[0].set_xscale("log")
    all_excess = np.array([r[f"{s}_held_excess"] for r in rows for s in schedules])
    if np.all(all_excess > 0):
        axes[0].set_yscale("log")
    else:
        axes[0].set_yscale("symlog", linthresh=1e-4)
    axes[0].set_xlabel("noise level σ")
    axes[0].set_ylabel("held-out loss − J* (x0 units, per dim)")
    axes[0].legend()
    axes[1].set_ylabel("Fréchet distance (classifier features)")
    axes[1].legend()
    fig.suptitle(f"digits, MLP width {args.width}, {args.steps} steps, {args.seeds} seeds")
    save_figure(fig, args.out / "comparison.png")
    print(json.dumps(summary, indent=2))
    print("per-level held-out excess (x0 units, mean over seeds):")
    for r in rows:
        cols = "  ".join(f"{s} {r[f'{s}_held_excess']:.4g}" for s in schedules)
        print(f"  σ={r['sigma']:8.3g}  J*={r['optimal_x0']:.4g}  {cols}")


if __name__ == "__main__":
    main()
