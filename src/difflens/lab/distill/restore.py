"""Image restoration on digits as a multi-task conditional problem: each degradation is a task.

Condition = (degraded image, known-pixel mask) as two 8×8 channels; target = the clean image in
[−1, 1]. Few (degraded, clean) pairs per task, many degraded-only images; restorations are one
sample of the conditional model each, scored by PSNR and SSIM against the clean test images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from difflens import data
from difflens.errors import DifflensError, require
from difflens.lab.distill.core import (
    DistillConfig,
    ModelSpec,
    SamplerSpec,
    SpecialistCache,
    budget,
    distill_generalist,
    fit_generalist,
    fit_specialists,
    generalist_fronts,
    pareto_weights,
    pseudo_label,
)
from difflens.lab.distill.train import DSMConfig, Pairs, Scalarization, derive_seed
from difflens.models.nets import count_params

SIDE = 8
DIGITS = 1797  # images in the digits set; the test split comes out of them


def degrade(kind: str, clean: torch.Tensor, generator: torch.Generator, *, strength: float = 1.0) -> torch.Tensor:
    """Conditions (n, 2, 8, 8) for clean images (n, 64): channel 0 the degraded image, channel 1 the
    known-pixel mask. kinds: noise (Gaussian, std 0.5·strength), blur (Gaussian kernel, std
    1·strength px, plus 0.02 noise), mask (a random 50 % of pixels unknown, set to 0)."""
    img = clean.reshape(-1, SIDE, SIDE).double()
    known = torch.ones_like(img)
    if kind == "noise":
        out = img + 0.5 * strength * torch.randn(img.shape, generator=generator, dtype=torch.float64)
    elif kind == "blur":
        blurred = gaussian_filter(img.numpy(), sigma=(0, strength, strength), mode="nearest")
        out = torch.from_numpy(blurred) + 0.02 * torch.randn(img.shape, generator=generator, dtype=torch.float64)
    elif kind == "mask":
        known = (torch.rand(img.shape, generator=generator, dtype=torch.float64) >= 0.5 * strength).double()
        out = img * known
    else:
        raise DifflensError(f"unknown degradation {kind!r}; choose noise, blur or mask")
    return torch.stack([out, known], dim=1).float()


def psnr_ssim(restored: torch.Tensor, clean: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-image PSNR (dB) and SSIM (7×7 window) for images in [−1, 1] (data range 2)."""
    structural_similarity = require("skimage.metrics", "images", "SSIM (distill restore)").structural_similarity
    r = restored.reshape(-1, SIDE, SIDE).double().clamp(-1, 1).numpy()
    c = clean.reshape(-1, SIDE, SIDE).double().numpy()
    mse = ((r - c) ** 2).mean(axis=(1, 2))
    psnr = 10 * np.log10(4.0 / np.maximum(mse, 1e-12))
    ssim = np.array([structural_similarity(a, b, data_range=2.0, win_size=7) for a, b in zip(r, c, strict=True)])
    return psnr, ssim


def _scores(restored: torch.Tensor, clean: torch.Tensor) -> dict:
    psnr, ssim = psnr_ssim(restored, clean)
    return {"psnr": float(psnr.mean()), "ssim": float(ssim.mean()), "psnr_se": float(psnr.std() / len(psnr) ** 0.5)}


@dataclass
class RestoreConfig(DistillConfig):
    """Digits restoration sweep over n; unlabeled = the rest of the training pool (capped at ``unlabeled``)."""

    degradations: tuple[str, ...] = ("noise", "blur", "mask")
    pairs: tuple[int, ...] = (16, 64, 256)
    unlabeled: int = 1200
    test: int = 297
    arch: str = "mlp"
    width: int = 256
    specialist_width: int = 128
    oracle: bool = True

    def check(self, pool: int) -> None:
        if not self.degradations or min(self.pairs, default=0) < 1 or self.unlabeled < 1 or self.test < 1:
            raise DifflensError("need degradations, and positive --pairs, --unlabeled and --test")
        if self.arch not in ("mlp", "conv"):
            raise DifflensError(f"unknown arch {self.arch!r}; choose mlp or conv")
        self.check_shared()
        if max(self.pairs) + self.unlabeled > pool:
            raise DifflensError(
                f"largest n ({max(self.pairs)}) + unlabeled ({self.unlabeled}) exceeds the {pool} training images"
            )

    def units(self) -> int:
        k, n = len(self.degradations), len(self.pairs)
        fronts = 2 * len(pareto_weights(2, self.pareto)) * self.steps if self.pareto and k == 2 else 0
        return n * (k * self.specialist_steps + 2 * self.steps) + (self.steps if self.oracle else 0) + fronts


def run_restore(
    cfg: RestoreConfig,
    progress: Callable[[int], None] | None = None,
    device: torch.device | str = "cpu",
    cache: SpecialistCache | None = None,
) -> dict:
    """Specialists, baseline and distilled generalists (and an oracle on all true pairs) per n; PSNR/SSIM.
    With two degradations and ``cfg.pareto`` > 0, the Pareto fronts of the distilled and the baseline
    generalists at the largest n. The nets train and sample on ``device``; data and scores stay on the
    CPU. ``cache``: specialist fits shared by the cells of a sweep."""

    clean = data.load("digits").rows(0, DIGITS)
    perm = torch.randperm(len(clean), generator=torch.Generator().manual_seed(derive_seed(cfg.seed, "split")))
    test_x, pool = clean[perm[: cfg.test]], clean[perm[cfg.test :]]
    cfg.check(len(pool))
    for kind in cfg.degradations:
        degrade(kind, clean[:1], torch.Generator())  # validates the names before any training
    k = len(cfg.degradations)
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "data"))
    order = [torch.randperm(len(pool), generator=g) for _ in range(k)]
    max_n = max(cfg.pairs)
    # per task: pairs = the first n of its order (nested over n), unlabeled = the next ``unlabeled`` images
    labelled = [
        Pairs(degrade(kd, pool[o[:max_n]], g), pool[o[:max_n]]) for kd, o in zip(cfg.degradations, order, strict=True)
    ]
    hidden = [pool[o[max_n : max_n + cfg.unlabeled]] for o in order]
    unlabeled = [degrade(kd, x, g) for kd, x in zip(cfg.degradations, hidden, strict=True)]
    test_c = [degrade(kd, test_x, g) for kd in cfg.degradations]
    x_shape = (SIDE * SIDE,) if cfg.arch == "mlp" else (1, SIDE, SIDE)
    sampler = SamplerSpec(steps=cfg.sampler_steps, clip=1.0)
    spec_model = ModelSpec(cfg.arch, cfg.specialist_width, cfg.specialist_depth, device)
    gen_model = ModelSpec(cfg.arch, cfg.width, cfg.depth, device)
    spec_cfg = DSMConfig(steps=cfg.specialist_steps, batch=cfg.batch)
    gen_cfg = DSMConfig(steps=cfg.steps, batch=cfg.batch)
    scal = Scalarization(cfg.scalarization)

    def shaped(p: Pairs) -> Pairs:
        return Pairs(p.cond, p.x.reshape(len(p), *x_shape))

    def metrics(model) -> list[dict]:
        out = []
        for t in range(k):
            g = torch.Generator().manual_seed(derive_seed(cfg.seed, "eval-sampler"))
            if isinstance(model, list):
                restored = model[t].sample(test_c[t], g)
            else:
                restored = sampler(model, test_c[t], t, x_shape, g)
            out.append(_scores(restored, test_x))
        return out

    runs = []
    inputs = []
    for t in range(k):
        inputs.append(_scores(test_c[t][:, 0], test_x))
    runs.append({"method": "degraded input", "n": None, "unlabeled": None, "width": None, "params": 0, "tasks": inputs})

    pareto = None

    def record(method, n, un, width, model, params, extra=None):
        run = {"method": method, "n": n, "unlabeled": un, "width": width, "params": params, "tasks": metrics(model)}
        runs.append(run | (extra or {}))

    for n in cfg.pairs:
        pairs = [shaped(p.take(slice(0, n))) for p in labelled]
        specs = fit_specialists(
            pairs,
            kind=cfg.specialist,
            model=spec_model,
            config=spec_cfg,
            sampler=sampler,
            seed=cfg.seed,
            progress=progress,
            cache=cache,
        )
        record("specialist", n, None, cfg.specialist_width, specs, specs[0].params(), {"class": cfg.specialist})
        base, _ = fit_generalist(
            pairs, model=gen_model, config=gen_cfg, scalarization=scal, seed=cfg.seed, progress=progress, cache=cache
        )
        record("baseline", n, None, cfg.width, base, count_params(base))
        pseudo = pseudo_label(specs, unlabeled, per_cond=cfg.pseudo_per_cond, seed=cfg.seed + 3)
        dist = distill_generalist(
            specs,
            unlabeled,
            pairs=pairs if cfg.mix_real else None,
            model=gen_model,
            config=gen_cfg,
            scalarization=scal,
            ideal=cfg.ideal,
            pseudo=pseudo,
            seed=cfg.seed,
            progress=progress,
        )
        record("distilled", n, cfg.unlabeled, cfg.width, dist.generalist, count_params(dist.generalist))
        runs[-1].update(ideal_point=dist.ideal, **budget(cfg.pseudo_per_cond, cfg.mix_real, dist))
        if cfg.pareto and k == 2 and n == max(cfg.pairs):
            pareto = {"n": n, "unlabeled": cfg.unlabeled, "width": cfg.width} | generalist_fronts(
                pairs,
                dist,
                scal,
                pareto_weights(2, cfg.pareto),
                metrics,
                model=gen_model,
                config=gen_cfg,
                seed=cfg.seed,
                progress=progress,
            )
    if cfg.oracle:
        full = [shaped(Pairs(c, x)) for c, x in zip(unlabeled, hidden, strict=True)]
        net, _ = fit_generalist(
            full, model=gen_model, config=gen_cfg, scalarization=scal, seed=cfg.seed, progress=progress
        )
        runs.append(
            {
                "method": "oracle",
                "n": None,
                "unlabeled": cfg.unlabeled,
                "width": cfg.width,
                "params": count_params(net),
                "tasks": metrics(net),
            }
        )
    names = list(cfg.degradations)
    return {"experiment": "restore", "config": asdict(cfg), "task_names": names, "runs": runs, "pareto": pareto}
