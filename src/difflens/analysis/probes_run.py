"""The ``probes`` run: early-stopped sampler outputs and reconstructions of noisy train / held-out images
against the training set, by 1-NN cosine similarity and Fréchet distance
(docs/method.md, "Feature-space measures")."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from difflens import report
from difflens.analysis import features, probes
from difflens.analysis import gap as gap_mod
from difflens.analysis.diagnose_run import resolve_split
from difflens.analysis.run_support import Progress, no_progress, open_data
from difflens.data import check_same_layout
from difflens.diffusion import samplers
from difflens.models import load_denoiser
from difflens.models.load import default_shape


def run_probes(
    out: Path,
    *,
    model: str = "oracle",
    data: str | None = None,
    holdout: float | None = None,
    split_seed: int | None = None,
    val: str | None = None,
    trust_pickle: bool = False,
    sampler: str = "euler",
    steps: int = 32,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    stops: int = 8,
    num_samples: int = 64,
    images: int = 64,
    feature: str | None = "pca",
    scale: str = "auto",
    seed: int = 0,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> dict:
    """Probes at ``stops`` sampler steps spread over an EDM grid; writes probes.{json,png}. The model (or
    the oracle's kernel) and the sampler run on ``device`` (default cpu)."""
    device = device or torch.device("cpu")
    closed = gap_mod.is_closed_form(model)
    loaded = None if closed else load_denoiser(model, trust_pickle=trust_pickle, device=device)
    cfg = (loaded.info.get("config") if loaded else None) or {}
    if val:
        train, _ = resolve_split(data, scale, 0, None, cfg)
        held = open_data(val, scale)
    else:
        train, held = resolve_split(data, scale, holdout, split_seed, cfg, default_holdout=0.2, default_seed=seed)
    check_same_layout(held.shape, train.shape, "held-out data", "training data")
    if loaded is not None:
        den = loaded.denoiser
        if getattr(den, "shape", 1) is None:
            den.shape = default_shape(train.shape)
        check_same_layout(getattr(den, "shape", None) or (), train.shape, "model inputs", "data")
    else:
        den = gap_mod.resolve_denoiser(model, train, device)
    fmap, fdesc = features.resolve_feature(feature, train)
    sig = samplers.edm_sigmas(steps, sigma_min, sigma_max)
    at = probes.stop_steps(steps, stops)
    advance = progress("stops", len(at))
    levels = probes.early_stop_probes(
        den, train, held, sig, at, samples=num_samples, images=images, method=sampler, feature=fmap, seed=seed,
        on_stop=lambda _: advance(1), device=device,
    )  # fmt: skip
    probes.plot_probes(levels, out / "probes.png", title=f"early-stopped probes: {model} on {train.spec}")
    result = {
        "model": model,
        "train": train.summary(),
        "held_out": held.summary(),
        "feature": fdesc,
        "sampler": sampler,
        "steps": steps,
        "sigma_min": sigma_min,
        "sigma_max": sigma_max,
        "samples": num_samples,
        "images": images,
        "seed": seed,
        "levels": [asdict(lv) for lv in levels],
    }
    report.write_json(out / "probes.json", result)
    return result
