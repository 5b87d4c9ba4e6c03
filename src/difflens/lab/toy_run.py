"""The ``toy gap`` and ``toy flow`` runs on the 2-D circle (or another 2-D set): gap sweeps of the
error-prone denoiser y_δ, and sampler flows with memorization and trajectory overlap (docs/method.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from difflens import report
from difflens.analysis import memorization as mm
from difflens.analysis import trajectories
from difflens.analysis.gap import GapCurve, plot_gap
from difflens.analysis.run_support import Progress, no_progress, open_data, save_npy
from difflens.diffusion import processes, samplers
from difflens.diffusion.denoiser import Denoiser
from difflens.errors import DifflensError
from difflens.lab import toy

DENOISERS = ("optimal", "blurred", "guided")


def run_toy_gap(
    out: Path,
    values: Sequence[float] = toy.PAPER_DELTAS,
    *,
    sweep: str = "delta",
    points: int = toy.PAPER_POINTS,
    delta: float = toy.PAPER_DELTAS[0],
    delta_neg: float = 0.3,
    random: bool = False,
    radius: float = 1.0,
    draws: int = 50,
    sigmas: str | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> list[GapCurve]:
    """G(s) of y_δ swept over ``values`` of δ (in radii), the number of points or the guidance weight;
    writes toy_gap.{json,png}. ``sigmas`` None: the paper's 120 EDM levels in [2e-3, 80]·radius/10.
    The toy denoisers run on ``device`` (default cpu)."""
    grid = toy.paper_sigmas(radius) if sigmas is None else np.sort(processes.parse_sigmas(sigmas))
    advance = progress(f"{sweep} sweep", len(values) * len(grid))
    curves = toy.sweep(
        sweep,
        values,
        grid,
        points=points,
        delta=delta,
        delta_neg=delta_neg,
        random=random,
        radius=radius,
        draws=draws,
        seed=seed,
        on_level=lambda *_: advance(1),
        device=device or "cpu",
    )
    plot_gap(curves, out / "toy_gap.png", title=f"toy gap vs {sweep} (circle, M={draws})")
    config = {
        "sweep": sweep,
        "points": points,
        "delta": delta,
        "delta_neg": delta_neg,
        "delta_unit": "radius",
        "radius": radius,
        "random": random,
        "sigmas": sigmas or "paper: 120 EDM rho=7 levels in [2e-3, 80]*radius/10",
    }
    report.write_json(out / "toy_gap.json", {**config, "seed": seed, "curves": [c.to_dict() for c in curves]})
    return curves


def toy_denoiser(
    name: str,
    train: np.ndarray | torch.Tensor,
    delta: float,
    delta_neg: float,
    w: float,
    device: torch.device | str = "cpu",
) -> Denoiser:
    """One of the toy lab's denoisers (``DENOISERS``) of the points ``train``, its kernel on ``device``."""
    if name == "optimal":
        return toy.Optimal(train, device=device)
    if name == "blurred":
        return toy.Blurred(train, delta, device)
    if name == "guided":
        return toy.Guided(toy.Blurred(train, delta, device), toy.Blurred(train, delta_neg, device), w)
    raise DifflensError(f"unknown toy denoiser {name!r}; choose one of {', '.join(DENOISERS)}")


def run_toy_flow(
    out: Path,
    levels: list[float],
    *,
    denoiser: str = "blurred",
    points: int = toy.PAPER_POINTS,
    data: str | None = None,
    delta: float = toy.PAPER_DELTAS[0],
    delta_neg: float = 0.3,
    w: float = 1.0,
    random: bool = False,
    radius: float = 1.0,
    sampler: str = "euler",
    steps: int = 120,
    num_samples: int = 200,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> dict:
    """Flow field at ``levels``, sampler trajectories, memorization and overlap; writes flow.{json,png},
    overlap.png and samples.npy. Defaults: the paper's Euler sampler, 120 EDM steps from σ_max = 8 radii
    down to 2e-4 radii; δ in radii. Sampling and the denoiser run on ``device`` (default cpu; the noise is
    drawn on the CPU), the analyses and plots on the CPU."""
    device = device or torch.device("cpu")
    if data and radius != 1.0:
        raise DifflensError("--radius applies to the circle, not to --data")
    if data:
        ds2 = open_data(data, "none")
        train, val = toy.alternate_split(ds2.rows(0, ds2.n))
    else:
        train, val = toy.circle(points, random=random, radius=radius, seed=seed)
    den = toy_denoiser(denoiser, train, delta * radius, delta_neg * radius, w, device)
    lo = toy.PAPER_LEVELS[1]
    sigma_min = lo * radius if sigma_min is None else sigma_min
    sigma_max = 8.0 * radius if sigma_max is None else sigma_max
    sig = samplers.edm_sigmas(steps, sigma_min, sigma_max)
    advance = progress("sampler steps", steps)
    traj = samplers.sample(
        den,
        samplers.initial_noise(num_samples, 2, sigma_max, seed),
        sig,
        method=sampler,
        seed=seed,
        record=True,
        on_step=lambda _: advance(1),
        device=device,
    )
    traj = traj.cpu()
    advance2 = progress("overlap per level", steps)
    overlap = trajectories.trajectory_overlap(train, traj, seed=seed, on_level=lambda _: advance2(1))
    mem = mm.memorization(traj.samples, train, device=device)
    states = np.stack([s.numpy() for s in traj.states] + [traj.samples.numpy()])
    title = f"{denoiser} denoiser, {len(train)} training points, {sampler} sampler"
    toy.plot_flow(den, train, val, levels, out / "flow.png", trajectories=states, title=title)
    trajectories.plot_overlap(overlap, out / "overlap.png")
    save_npy(out / "samples.npy", traj.samples.numpy())
    result = {
        "denoiser": denoiser,
        "data": data or "circle",
        "points": len(train),
        "delta": delta,
        "delta_neg": delta_neg,
        "w": w,
        "radius": radius,
        "sampler": sampler,
        "steps": steps,
        "sigma_min": sigma_min,
        "sigma_max": sigma_max,
        "seed": seed,
        "memorization": mem.summary(),
        "overlap": [asdict(lv) for lv in overlap],
    }
    report.write_json(out / "flow.json", result)
    return result
