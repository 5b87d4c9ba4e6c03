"""Training variants against memorization: baseline vs noise-unconditioned vs smoothed targets.

Trains the same small MLP with the same budget on a seeded 64-image subset of the digits training
split (where the empirical optimal denoiser collapses hardest), as

* ``baseline`` — the reference EDM recipe;
* ``unconditioned`` — ``noise_unconditioned``: the network's time input is constant (EDM's
  c_in/c_skip/c_out still use σ);
* ``smooth s_c=…, T=…`` — ``smooth_below``/``smooth_temperature``: samples with σ < s_c regress on the
  kernel's E_T(σ)[x0 | x̃], T(σ) = T·max(s_c/σ, 1), instead of x0;

then samples each (EDM Heun) from the same initial noise and reports the memorization ratio
(d1/d2 < 1/3 against the 64 images), the median nearest-neighbour distance, how many distinct
training images are nearest, and two quality figures against the held-out digits (Fréchet distance
in a PCA-16 space fitted on held-out digits, lower is better; mean confidence of a logistic-regression
digit classifier, higher = more recognizable) — the same figures as ``smoothing_tradeoff.py``.
Writes variants.json, samples.png and one run folder per variant and seed.

    PYTHONPATH=src python examples/training_variants.py --out runs/training-variants [--steps 4000 --seeds 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from smoothing_tradeoff import frechet, plot_grid, sample_metrics

from difflens import data, report
from difflens.analysis.memorization import memorization
from difflens.diffusion import samplers
from difflens.models import load_denoiser
from difflens.models.train import TrainConfig, train


def variants(smooth: list[str]) -> list[dict]:
    """Name and TrainConfig overrides per variant; ``smooth`` entries are 'S_C' or 'S_C:T'."""
    out = [{"name": "baseline"}, {"name": "unconditioned", "noise_unconditioned": True}]
    for spec in smooth:
        sc, _, t = spec.partition(":")
        out.append(
            {"name": f"smooth s_c={sc}, T={t or 1}", "smooth_below": float(sc), "smooth_temperature": float(t or 1)}
        )
    return out


def run(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    digits = data.load("digits")
    train_ds, held = digits.split(0.2, args.split_seed)
    x_train, x_held = train_ds.rows(0, train_ds.n).numpy(), held.rows(0, held.n).numpy()
    pca = PCA(16, random_state=0).fit(x_held)
    clf = LogisticRegression(max_iter=2000).fit(x_train, train_ds.labels)
    held_feat = pca.transform(x_held)
    pick = np.sort(np.random.default_rng(args.split_seed).choice(train_ds.n, args.subset, replace=False))
    subset = train_ds.subset(pick, f"[{args.subset}]")
    sub_path = out / f"digits_subset{args.subset}.npy"
    np.save(sub_path, subset.rows(0, subset.n).numpy().reshape(subset.n, *train_ds.shape).astype(np.float32))
    sig = samplers.edm_sigmas(args.sample_steps, 0.002, 80.0)
    rows, grid = [], []
    for v in variants(args.smooth):
        per_seed = []
        for seed in range(args.seeds):
            cfg = TrainConfig(
                data=str(sub_path),
                holdout=0.0,
                width=args.width,
                depth=3,
                steps=args.steps,
                batch=args.batch,
                seed=seed,
                log_every=500,
                ckpt_every=args.steps,
                **{k: val for k, val in v.items() if k != "name"},
            )
            run_dir = out / f"{v['name'].replace(' ', '').replace(',', '_').replace('=', '')}_seed{seed}"
            summary = train(cfg, run_dir, threads=1)
            den = load_denoiser(str(run_dir)).denoiser
            x_init = samplers.initial_noise(args.samples, subset.dim, 80.0, 1000 + seed)
            x = samplers.sample(den, x_init, sig, method="heun").samples.float().numpy()
            mem = memorization(x, subset)
            per_seed.append(
                {
                    "seed": seed,
                    "train_seconds": summary["seconds"],
                    **sample_metrics(x, mem, pca, held_feat, clf),
                }
            )
            if seed == 0:
                grid.append((v["name"], x[:12]))
        keys = [k for k in per_seed[0] if k not in ("seed", "train_seconds")]
        row = {
            "variant": v["name"],
            **{k: val for k, val in v.items() if k != "name"},
            **{k: float(np.mean([p[k] for p in per_seed])) for k in keys},
            **{f"{k}_sd": float(np.std([p[k] for p in per_seed])) for k in keys},
            "seeds": per_seed,
        }
        rows.append(row)
        print(
            f"{v['name']:22s} memorized {row['memorization_ratio']:6.1%}  NN {row['median_nn_distance']:6.3f}  "
            f"distinct {row['distinct_nearest']:5.1f}  FD {row['frechet_pca16']:6.2f}  "
            f"conf {row['classifier_confidence']:.3f}",
            flush=True,
        )
    ref = {
        "frechet_pca16_subset_vs_held": frechet(pca.transform(subset.rows(0, subset.n).numpy()), held_feat),
        "frechet_pca16_train_vs_held": frechet(pca.transform(x_train), held_feat),
        "classifier_confidence_held": float(clf.predict_proba(x_held).max(1).mean()),
    }
    grid.insert(0, ("training subset", subset.rows(0, 12).numpy()))
    plot_grid(grid, train_ds.shape, out / "samples.png", f"digits[{args.subset}], MLP width {args.width}")
    result = {
        "settings": {k: getattr(args, k) for k in ("subset", "width", "steps", "batch", "seeds", "samples")}
        | {"sampler": f"heun, {args.sample_steps} steps, σ 80 → 0.002", "split_seed": args.split_seed},
        "reference": ref,
        "results": rows,
    }
    report.write_json(out / "variants.json", result)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/training-variants")
    p.add_argument("--subset", type=int, default=64, help="training images (seeded subset of the digits split)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seeds", type=int, default=1, help="training seeds per variant (0…seeds−1)")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--sample-steps", type=int, default=18)
    p.add_argument("--smooth", nargs="+", default=["1", "10"], help="smoothed-target variants, 'S_C' or 'S_C:T'")
    p.add_argument("--split-seed", type=int, default=0)
    torch.set_num_threads(1)
    run(p.parse_args())


if __name__ == "__main__":
    main()
