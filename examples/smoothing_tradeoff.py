"""Score smoothing trade-off: memorization vs sample quality for closed-form samplers on digits.

Samples with the exact empirical score (T = 1), temperature-smoothed scores over a range of T (at
all levels, and only below a collapse level s_c with T(s) = max(s_c/s, 1)), and the unconditioned
mixture p_MN (predictor–corrector sampler), on the digits training split and on a 64-image subset
(where collapse is strongest). Per variant: memorization ratio (d1/d2 < 1/3), median distance to
the nearest training image, the end-to-end expansion factor γ_ex, and two quality figures against
held-out digits: the Fréchet distance in a 16-dim PCA space fitted on held-out digits (lower is
better) and the mean confidence of a logistic-regression digit classifier (higher = more
recognizable); and, as a diversity check, how many distinct training images are nearest to the
samples. Writes tradeoff.json, tradeoff.png and one sample grid per dataset.

    PYTHONPATH=src python examples/smoothing_tradeoff.py --out runs/smoothing-tradeoff [--samples 64 --steps 24]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy import linalg
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression

from difflens import data, report
from difflens.analysis import smoothing
from difflens.analysis.memorization import memorization, to_image
from difflens.diffusion import samplers
from difflens.report import plt, save_figure


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets."""
    ma, mb = a.mean(0), b.mean(0)
    eye = 1e-6 * np.eye(a.shape[1])  # samples collapsed onto a few images have a singular covariance
    ca, cb = np.cov(a, rowvar=False) + eye, np.cov(b, rowvar=False) + eye
    root = linalg.sqrtm(ca @ cb).real
    return float(((ma - mb) ** 2).sum() + np.trace(ca + cb - 2 * root))


def sample_metrics(x: np.ndarray, mem, pca, held_feat: np.ndarray, clf) -> dict:
    """Memorization, novelty and quality figures of one set of samples (shared with training_variants)."""
    return {
        "memorization_ratio": mem.memorization_ratio,
        "median_nn_distance": float(np.median(mem.d1)),
        "distinct_nearest": len(np.unique(mem.index)),
        "frechet_pca16": frechet(pca.transform(x), held_feat),
        "classifier_confidence": float(clf.predict_proba(x).max(1).mean()),
    }


def variants(temperatures, collapse_levels) -> list[dict]:
    out = [{"name": f"T={t:g}", "kind": "temperature", "T": t} for t in temperatures]
    out += [{"name": f"s_c={c:g}", "kind": "collapse", "sc": c} for c in collapse_levels]
    out += [{"name": f"p_MN ({m})", "kind": "unconditioned", "method": m} for m in ("heun", "sde", "pc")]
    return out


def run(args) -> dict:
    digits = data.load("digits")
    train, held = digits.split(0.2, args.seed)
    x_train, x_held = train.rows(0, train.n).numpy(), held.rows(0, held.n).numpy()
    pca = PCA(16, random_state=0).fit(x_held)
    clf = LogisticRegression(max_iter=2000).fit(x_train, train.labels)
    held_feat = pca.transform(x_held)
    pick = np.sort(np.random.default_rng(args.seed).choice(train.n, 64, replace=False))
    sets = {"digits": train, "digits[64]": train.subset(pick, "[64]")}
    sig = samplers.edm_sigmas(args.steps, 0.002, 80.0)
    x_init = samplers.initial_noise(args.samples, train.dim, 80.0, args.seed)
    results, grids = {}, {}
    for set_name, ds in sets.items():
        rows = []
        for v in variants(args.temperatures, args.collapse):
            if v["kind"] == "unconditioned":
                den = smoothing.UnconditionedMixture(ds, np.geomspace(0.002, 80.0, 24))
                method = v["method"]
            else:
                den = smoothing.EmpiricalDenoiser(ds, v.get("T", 1.0), v.get("sc"))
                method = "heun"
            traj = samplers.sample(den, x_init, sig, method=method, seed=args.seed, record=True)
            x = traj.samples.float().numpy()
            mem = memorization(x, ds)
            gamma = smoothing.summarize_expansion(smoothing.expansion_factor(den, traj), sig)
            row = {
                "variant": v["name"],
                **{k: v[k] for k in ("T", "sc") if k in v},
                **sample_metrics(x, mem, pca, held_feat, clf),
                "log10_gamma_ex_end_to_end": gamma[-1]["median_log10_cumulative"],
                "max_gamma_ex_step": max(g["max"] for g in gamma),
            }
            rows.append(row)
            grids.setdefault(set_name, []).append((v["name"], x[:12]))
            print(
                f"{set_name:11s} {v['name']:10s} memorized {row['memorization_ratio']:6.1%}  "
                f"NN {row['median_nn_distance']:6.3f}  FD {row['frechet_pca16']:7.2f}  "
                f"conf {row['classifier_confidence']:.3f}  log10 γ_ex {row['log10_gamma_ex_end_to_end']:+.2f} "
                f"(max step {row['max_gamma_ex_step']:.3g})",
                flush=True,
            )
        results[set_name] = rows
    ref = {"frechet_pca16_train_vs_held": frechet(pca.transform(x_train), held_feat)}
    ref["classifier_confidence_held"] = float(clf.predict_proba(x_held).max(1).mean())
    out = Path(args.out)
    plot_tradeoff(results, ref, out / "tradeoff.png")
    for set_name, grid in grids.items():
        plot_grid(grid, train.shape, out / f"samples_{set_name.replace('[', '_').replace(']', '')}.png", set_name)
    result = {
        "settings": {"samples": args.samples, "steps": args.steps, "seed": args.seed},
        "reference": ref,
        "results": results,
    }
    report.write_json(out / "tradeoff.json", result)
    return result


def plot_tradeoff(results: dict, ref: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    for i, (name, rows) in enumerate(results.items()):
        temp = [r for r in rows if "T" in r]
        ts = [r["T"] for r in temp]
        axes[0].plot(ts, [r["memorization_ratio"] for r in temp], "o-", color=f"C{i}", label=f"{name}")
        axes[1].plot(ts, [r["frechet_pca16"] for r in temp], "o-", color=f"C{i}", label=f"{name}")
        axes[3].plot(ts, [r["distinct_nearest"] for r in temp], "o-", color=f"C{i}", label=f"{name}")
        for r in rows:
            marker = "o" if "T" in r else ("s" if "sc" in r else "*")
            axes[2].plot(r["memorization_ratio"], r["frechet_pca16"], marker, color=f"C{i}", ms=7)
            axes[2].annotate(r["variant"], (r["memorization_ratio"], r["frechet_pca16"]), fontsize=6)
    axes[1].axhline(ref["frechet_pca16_train_vs_held"], color="gray", ls="--", lw=1, label="training images")
    for ax in (axes[0], axes[1], axes[3]):
        ax.set_xscale("log")
        ax.set_xlabel("temperature T (all levels)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("memorization ratio (d1/d2 < 1/3)")
    axes[1].set_ylabel("Fréchet distance, PCA-16 (vs held-out)")
    axes[2].set_xlabel("memorization ratio")
    axes[2].set_ylabel("Fréchet distance, PCA-16")
    axes[2].set_yscale("log")
    axes[2].set_title("trade-off (o: T, s: s_c schedule, *: p_MN)", fontsize=9)
    axes[3].set_ylabel("distinct nearest training images (diversity)")
    for ax in axes:
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_grid(grid: list, shape, path: Path, title: str) -> None:
    cols = len(grid[0][1])
    fig, axes = plt.subplots(len(grid), cols, figsize=(cols * 0.8, len(grid) * 0.85 + 0.4), squeeze=False)
    for r, (name, xs) in enumerate(grid):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(xs):
                ax.imshow(to_image(xs[c], shape, -1.0, 1.0), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"samples on {title}", fontsize=9)
    save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/smoothing-tradeoff")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--temperatures", type=float, nargs="+", default=[1, 10, 1e2, 1e3, 1e4, 1e5, 1e6])
    p.add_argument("--collapse", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    p.add_argument("--seed", type=int, default=0)
    torch.set_num_threads(1)
    run(p.parse_args())


if __name__ == "__main__":
    main()
