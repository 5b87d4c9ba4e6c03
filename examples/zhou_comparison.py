"""Zhou et al.'s smoothing as the paper defines it, against the conditioned baseline, with one budget.

Trains the same tiny MLP, with the same steps, batch and learning rate, three ways on the training split
of a data set (the rest is held out, seeded by --split-seed):

* ``conditioned`` — difflens's default EDM denoising loss (the network sees σ);
* ``unconditioned`` — Zhou et al.'s L_u (Eq. 9): a σ-blind score network, σ uniform over 1000 geometric
  levels in [0.01, 50]; its optimum is the p_MN score;
* ``smoothed`` — Eq. 11: L_u with the Eq. 10 temperature target below σ_collapse over the K nearest
  training points of each source (pixel space). σ_collapse defaults to the data's critical σ as
  ``difflens optimal-loss`` reports it (J*_x0 reaches 1 % of its plateau); Eq. 10 as printed
  (``--smoothed-form official``: as the authors' code computes it).

With ``--arch unet`` on images of odd height or width (lfw: 25×25) the training images get one edge row
/ column appended (the U-Net halves the sides once) and the samples are cropped back before any measure.

Each model is sampled from the same initial noise with the samplers the paper uses for it (docs/method.md,
"Smoothing"): the conditioned model with EDM Heun (difflens's default, 32 steps) and with ``pc-song``
(Song et al.'s predictor–corrector on 1000 geometric levels 50 → 0.01); the σ-blind models with
``pc-song`` and with the σ*-adaptive ``sigma-star`` step (α = 0.1, difflens's default). Per model,
sampler and seed: memorized fraction (d1/d2 < 1/3 against the training split), Fréchet distance in a
PCA-32 space of the training split to the training split and to the held-out split, their ratio
(``difflens memorization --fd-ratio``), and two diversity figures — the number of distinct nearest
training images and the mean pairwise distance between samples (per √D). Writes comparison.json and
a sample grid.

    PYTHONPATH=src:examples python examples/zhou_comparison.py --out runs/zhou [--data lfw --steps 3000 --seeds 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from smoothing_tradeoff import plot_grid

from difflens import data, report
from difflens.analysis.memorization import memorization
from difflens.analysis.memorization_run import fd_ratio
from difflens.analysis.optimal_loss import optimal_loss_curve
from difflens.diffusion import samplers
from difflens.models import load_denoiser
from difflens.models.train import TrainConfig, train

COLUMNS = ("finite", "memorized", "fd_train", "fd_held", "fd_ratio", "distinct_nearest", "pairwise")
SAMPLERS = {"conditioned": ("heun", "pc-song"), "unconditioned": ("pc-song", "sigma-star")}


def grids() -> dict[str, torch.Tensor]:
    """Noise levels per sampler: EDM's 32 for Heun, the paper's 1000 geometric levels for the others."""
    geo = samplers.geometric_sigmas(1000, 0.01, 50.0)
    return {"heun": samplers.edm_sigmas(32, 0.002, 80.0), "pc-song": geo, "sigma-star": geo}


def diversity(x: np.ndarray) -> float:
    """Mean pairwise Euclidean distance between samples, per √D (0 when all samples coincide)."""
    t = torch.as_tensor(x, dtype=torch.float64)
    d = torch.cdist(t, t)
    n = len(x)
    return float(d.sum() / (n * (n - 1)) / np.sqrt(x.shape[1]))


def metrics(x: np.ndarray, train_ds, held) -> dict:
    """The figures above over the samples that stayed finite (``finite``: their fraction; NaN figures when
    fewer than two did — a sampler that diverged has no memorization or FD to report)."""
    ok = np.isfinite(x).all(1)
    if ok.sum() < 2:
        return {"finite": float(ok.mean())} | dict.fromkeys(COLUMNS[1:], float("nan"))
    x = x[ok]
    mem = memorization(x, train_ds)
    fd = fd_ratio(torch.as_tensor(x), train_ds, held, "pca")
    return {
        "finite": float(ok.mean()),
        "memorized": mem.memorization_ratio,
        "fd_train": fd["train"],
        "fd_held": fd["held_out"],
        "fd_ratio": fd["ratio"],
        "distinct_nearest": len(np.unique(mem.index)),
        "pairwise": diversity(x),
    }


def odd_sides(shape) -> tuple[int, int]:
    """(1, 1)-style flags of the image height and width that are odd (the U-Net halves them once)."""
    if shape is None or len(shape) < 2:
        raise SystemExit("--arch unet needs image data")
    return shape[-2] % 2, shape[-1] % 2


def pad_images(rows: np.ndarray, pad: tuple[int, int]) -> np.ndarray:
    """One row/column of edge pixels appended at the bottom/right where ``pad`` says (odd sides → even)."""
    if not any(pad):
        return rows
    widths = [(0, 0)] * (rows.ndim - 2) + [(0, pad[0]), (0, pad[1])]
    return np.pad(rows, widths, mode="edge")


def padded_dim(ds, pad: tuple[int, int]) -> int:
    """Values per sample the network sees (the padded image when ``pad``)."""
    if not any(pad):
        return ds.dim
    *lead, h, w = ds.shape
    return int(np.prod(lead, dtype=int)) * (h + pad[0]) * (w + pad[1])


def crop_images(x: np.ndarray, shape, pad: tuple[int, int]) -> np.ndarray:
    """Padded samples (n, D') back to the data's own (n, D): the appended row/column dropped."""
    if not any(pad):
        return x
    *lead, h, w = shape
    return x.reshape(len(x), *lead, h + pad[0], w + pad[1])[..., :h, :w].reshape(len(x), -1)


def critical_sigma(train_ds) -> float:
    """The data's critical σ as ``difflens optimal-loss`` reports it (64 queries per level suffice here)."""
    curve = optimal_loss_curve(train_ds, np.geomspace(0.02, 20.0, 25), samples=64, seed=0)
    if curve.critical_sigma is None:
        raise SystemExit("no critical σ on this grid; pass --collapse")
    return float(curve.critical_sigma)


def run(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_ds, held = data.load(args.data).split(args.holdout, args.split_seed)
    train_spec, holdout = args.data, args.holdout
    if args.subset:  # a seeded subset of the training split
        pick = np.sort(np.random.default_rng(args.split_seed).choice(train_ds.n, args.subset, replace=False))
        train_ds = train_ds.subset(pick, f"[{args.subset}]")
    pad = odd_sides(train_ds.shape) if args.arch == "unet" else (0, 0)
    if args.subset or any(pad):  # saved so that `train` reads exactly these images
        train_spec, holdout = str(out / "train_split.npy"), 0.0
        rows = train_ds.rows(0, train_ds.n).numpy().reshape(train_ds.n, *train_ds.shape)
        np.save(train_spec, pad_images(rows, pad).astype(np.float32))
    collapse = args.collapse or critical_sigma(train_ds)
    print(f"{args.data}: {train_ds.n} train / {held.n} held-out, D = {train_ds.dim}, σ_collapse = {collapse:.3g}")
    models = {
        "conditioned": {},
        "unconditioned": {"loss": "unconditioned"},
        f"smoothed (S={collapse:.2g}, K={args.k})": {
            "loss": "smoothed",
            "collapse": collapse,
            "k": args.k,
            "smoothed_form": args.smoothed_form,
        },
    }
    sig = grids()
    rows, grid = [], [("training images", train_ds.rows(0, 12).numpy())]
    for name, over in models.items():
        kind = "conditioned" if not over else "unconditioned"
        per = {m: [] for m in SAMPLERS[kind]}
        for seed in range(args.seeds):
            cfg = TrainConfig(
                data=train_spec,
                holdout=holdout,
                split_seed=args.split_seed,
                arch=args.arch,
                width=args.width,
                depth=3,
                steps=args.steps,
                batch=args.batch,
                seed=seed,
                log_every=max(args.steps // 10, 1),
                ckpt_every=args.steps,
                **over,
            )
            run_dir = out / f"{name.split(' ')[0]}_seed{seed}"
            summary = train(cfg, run_dir, threads=1)
            den = load_denoiser(str(run_dir)).denoiser
            x_init = samplers.initial_noise(args.samples, padded_dim(train_ds, pad), 80.0, 1000 + seed)
            for method in SAMPLERS[kind]:
                s = sig[method]
                t0 = time.time()
                x = samplers.sample(den, x_init * (float(s[0]) / 80.0), s, method=method, seed=seed)
                x = crop_images(x.samples.float().numpy(), train_ds.shape, pad)
                m = {"seed": seed, "train_seconds": summary["seconds"], "sample_seconds": time.time() - t0}
                per[method].append(m | metrics(x, train_ds, held))
                if seed == 0:
                    grid.append((f"{name.split(' ')[0]}, {method}", x[:12]))
                print(
                    f"  {name} seed {seed} {method}: " + ", ".join(f"{k} {v:.3g}" for k, v in per[method][-1].items())
                )
        for method, runs in per.items():
            keys = [k for k in runs[0] if k != "seed"]
            row = {"model": name, "sampler": method}
            row |= {k: float(np.mean([r[k] for r in runs])) for k in keys}
            row |= {f"{k}_sd": float(np.std([r[k] for r in runs], ddof=1)) if len(runs) > 1 else 0.0 for k in keys}
            rows.append(row | {"seeds": runs})
    n_ref = min(args.samples, train_ds.n)
    pick = np.sort(np.random.default_rng(0).choice(train_ds.n, n_ref, replace=False))
    reference = metrics(train_ds.subset(pick, "ref").rows(0, n_ref).numpy(), train_ds, held)
    if train_ds.shape is not None and len(train_ds.shape) >= 2:
        plot_grid(grid, train_ds.shape, out / "samples.png", f"{args.data}, {args.arch} width {args.width}, seed 0")
    keys = ("data", "subset", "holdout", "split_seed", "arch", "width", "steps", "batch", "seeds")
    settings = {k: getattr(args, k) for k in keys}
    result = {
        "settings": settings
        | {
            "samples": args.samples,
            "collapse": collapse,
            "k": args.k,
            "eq10_form": args.smoothed_form,
            "pad": list(pad),
        },
        "reference_training_images": reference,
        "results": rows,
    }
    report.write_json(out / "comparison.json", result)
    print_table(rows, reference)
    return result


def print_table(rows: list[dict], reference: dict) -> None:
    """Markdown table, mean ± sd over seeds."""
    cols = COLUMNS
    print("| model | sampler | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r[c]:.3g} ± {r[c + '_sd']:.2g}" for c in cols]
        print(f"| {r['model']} | {r['sampler']} | " + " | ".join(cells) + " |")
    print("| training images | — | " + " | ".join(f"{reference[c]:.3g}" for c in cols) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/zhou-comparison")
    p.add_argument("--data", default="digits")
    p.add_argument("--holdout", type=float, default=0.2)
    p.add_argument("--subset", type=int, default=None, help="train on a seeded subset of the training split")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--arch", default="mlp", choices=("mlp", "unet"))
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--collapse", type=float, default=None, help="σ_collapse [default: the data's critical σ]")
    p.add_argument("--k", type=int, default=8, help="Eq. 10 neighbours of each source")
    p.add_argument("--smoothed-form", default="paper", choices=("paper", "official"), help="Eq. 10 as printed or coded")
    torch.set_num_threads(1)
    run(p.parse_args())


if __name__ == "__main__":
    main()
