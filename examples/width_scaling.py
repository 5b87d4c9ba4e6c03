"""Width scaling on digits: does subtracting the optimal loss straighten the power law?

Trains a family of reference MLPs of growing width (same steps and batch, so compute ∝ parameters),
measures each one's training loss per noise level (fixed noise per image) and its EDM-weighted total,
then fits J = β·C^α and J − J* = β·C^α per level and in total (difflens.scaling).

Usage (about 1 minute per width on one core with the defaults):
    python examples/width_scaling.py --out runs/width_scaling [--widths 8,16,32,64,128,256 --steps 1500]
Writes table.csv (params, loss, sigma, optimal: also readable by `difflens scaling`), fits.json and
scaling.png, and prints the log–log correlations of both fits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from difflens.analysis import diagnose as dg
from difflens.analysis.optimal_loss import recipe_quadrature
from difflens.analysis.scaling import fit_groups, plot_fits
from difflens.models import load_denoiser
from difflens.models.train import TrainConfig, split_data, train
from difflens.report import write_csv, write_json

LEVELS = np.array([0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/width_scaling"))
    ap.add_argument("--widths", default="8,16,32,64,128,256")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]

    base = TrainConfig(steps=args.steps, seed=args.seed, log_every=100, ckpt_every=args.steps)
    train_ds, _ = split_data(base)
    optimal = dg.optimal_levels(train_ds, LEVELS, samples=2048, seed=0)
    rows = []
    for w in widths:
        out = args.out / f"width{w}"
        summary = train(TrainConfig(**{**base.__dict__, "width": w}), out)
        model = load_denoiser(str(out))
        quad = recipe_quadrature("edm", model.param.process, "edm")  # EDM-weighted: F-loss units
        res = dg.diagnose_model(
            model.denoiser, train_ds, None, LEVELS, units=model.param, quad=quad, images=None, optimal=optimal
        )
        c = summary["parameters"]
        for lv in res["levels"]:
            rows.append({"params": c, "loss": lv["train_x0"], "sigma": lv["sigma"], "optimal": lv["optimal_x0"]})
        tot = res["totals"]
        rows.append({"params": c, "loss": tot["train"]["value"], "sigma": None, "optimal": tot["optimal"]["value"]})
        print(
            f"width {w:4d}: {c:8d} parameters, EDM-weighted train loss {tot['train']['value']:.4f} "
            f"(optimal {tot['optimal']['value']:.4f}), {summary['seconds']:.0f} s"
        )

    write_csv(args.out / "table.csv", rows)
    fit_rows = [{"x": r["params"], "loss": r["loss"], "optimal": r["optimal"], "sigma": r["sigma"]} for r in rows]
    for r in fit_rows:
        if r["sigma"] is None:
            del r["sigma"]
    groups = fit_groups(fit_rows)
    write_json(args.out / "fits.json", {"widths": widths, "groups": groups})
    plot_fits(groups, args.out / "scaling.png", "parameters")
    print(f"{'σ':>8s} {'J*':>9s} {'corr plain':>11s} {'α plain':>8s} {'corr excess':>12s} {'α excess':>9s}")
    for g in groups:
        p, e = g["fits"].get("plain"), g["fits"].get("excess")
        name = "total" if g["sigma"] is None else f"{g['sigma']:.3g}"
        excess = f"{e['corr']:12.3f} {e['alpha']:9.3f}" if e else f"{'J ≤ J* at some width':>22s}"
        print(f"{name:>8s} {g['optimal'][0]:9.4g} {p['corr']:11.3f} {p['alpha']:8.3f} {excess}")


if __name__ == "__main__":
    main()
