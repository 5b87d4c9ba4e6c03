"""Specialists → generalist distillation (Cheng et al., ICML 2026; docs/method.md, "Distillation").

Stage 1 ``fit_specialists``: one small conditional denoiser per task on that task's few pairs.
Stage 2 ``distill_generalist``: each specialist samples pseudo-targets for its task's unlabeled
conditions; one larger task-conditional generalist is trained on all of them under a linear or
Tchebycheff scalarization, optionally with the real pairs mixed in. ``fit_generalist`` on the real
pairs alone is the baseline; ``pareto_sweep`` retrains under a grid of task weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from difflens.errors import DifflensError
from difflens.lab.distill.models import CondDenoiser, make_denoiser
from difflens.lab.distill.sampling import sample
from difflens.lab.distill.train import DSMConfig, Pairs, Scalarization, TrainLog, derive_seed, eval_dsm, train_dsm

Progress = Callable[[int], None] | None


@dataclass
class ModelSpec:
    """Architecture of a conditional denoiser (see ``models.make_denoiser``) and the device it is built
    on; training and sampling then run where it lives."""

    arch: str = "mlp"
    width: int = 128
    depth: int = 3
    device: torch.device | str = "cpu"

    def build(self, x_shape, cond_shape, num_tasks: int, sigma_data: float, seed: int) -> CondDenoiser:
        return make_denoiser(
            tuple(x_shape),
            tuple(cond_shape),
            num_tasks=num_tasks,
            arch=self.arch,
            width=self.width,
            depth=self.depth,
            sigma_data=sigma_data,
            seed=seed,
            device=self.device,
        )


@dataclass
class SamplerSpec:
    """Settings of the EDM Heun sampler used for pseudo-labels and evaluation. ``clip``: clamp the final
    samples to [−clip, clip] (the data range, e.g. 1 for images in [−1, 1]), so that a specialist's rare
    wild extrapolations do not end up as pseudo-labels. Sampling runs on the denoiser's device; the
    samples come back on the CPU."""

    steps: int = 18
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    churn: float = 0.0
    chunk: int = 2048
    clip: float | None = None

    def __call__(self, denoiser, cond: torch.Tensor, task, x_shape, generator: torch.Generator) -> torch.Tensor:
        task = torch.as_tensor(task, dtype=torch.long).reshape(-1).expand(len(cond))
        parts = [
            sample(
                denoiser,
                cond[i : i + self.chunk],
                task[i : i + self.chunk],
                tuple(x_shape),
                steps=self.steps,
                sigma_min=self.sigma_min,
                sigma_max=self.sigma_max,
                churn=self.churn,
                generator=generator,
            )
            for i in range(0, len(cond), self.chunk)
        ]
        x = torch.cat(parts) if parts else torch.empty((0, *x_shape))
        x = x.cpu()
        return x.clamp(-self.clip, self.clip) if self.clip is not None else x


def data_sigma(data: Sequence[Pairs]) -> float:
    """σ_data for EDM preconditioning: the standard deviation of all targets (at least 1e-3)."""
    x = torch.cat([p.x.reshape(len(p), -1) for p in data])
    return max(float(x.std()), 1e-3) if x.numel() > 1 else 0.5


def _shapes(data: Sequence[Pairs]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    x_shape, c_shape = tuple(data[0].x.shape[1:]), tuple(data[0].cond.shape[1:])
    for p in data:
        if tuple(p.x.shape[1:]) != x_shape or tuple(p.cond.shape[1:]) != c_shape:
            raise DifflensError("all tasks must share the sample shape and the condition shape")
    return x_shape, c_shape


def fit_specialists(
    pairs: Sequence[Pairs],
    *,
    model: ModelSpec | None = None,
    config: DSMConfig | None = None,
    seed: int = 0,
    progress: Progress = None,
) -> list[CondDenoiser]:
    """Stage 1: one single-task denoiser per task, trained by DSM on that task's pairs only."""
    model = model or ModelSpec(width=64, depth=2)
    config = config or DSMConfig()
    x_shape, c_shape = _shapes(pairs)
    out = []
    for k, p in enumerate(pairs):
        net = model.build(x_shape, c_shape, 1, data_sigma([p]), seed + 1000 * k)
        train_dsm(net, [p], config=_reseed(config, seed + 1000 * k), progress=progress)
        out.append(net)
    return out


def _reseed(config: DSMConfig, seed: int) -> DSMConfig:
    return DSMConfig(**{**config.__dict__, "seed": seed})


def pseudo_label(
    specialists: Sequence,
    conds: Sequence[torch.Tensor],
    x_shape,
    *,
    sampler: SamplerSpec | None = None,
    seed: int = 0,
) -> list[Pairs]:
    """Pseudo-pairs: specialist k samples one target for every unlabeled condition of task k.

    A specialist is any ``denoiser(x, sigma, cond, task)`` for its own task (called with task 0)."""
    sampler = sampler or SamplerSpec()
    if len(specialists) != len(conds):
        raise DifflensError(f"{len(specialists)} specialists for {len(conds)} tasks of unlabeled conditions")
    g = torch.Generator().manual_seed(derive_seed(seed, "pseudo-label"))
    return [Pairs(c, sampler(s, c, 0, x_shape, g)) for s, c in zip(specialists, conds, strict=True)]


def fit_generalist(
    data: Sequence[Pairs],
    *,
    model: ModelSpec | None = None,
    config: DSMConfig | None = None,
    scalarization: Scalarization | None = None,
    seed: int = 0,
    progress: Progress = None,
) -> tuple[CondDenoiser, TrainLog]:
    """One task-conditional denoiser on K tasks' pairs (task id k = position). On the real pairs alone
    this is the baseline; on pseudo-pairs it is the distilled generalist."""
    model = model or ModelSpec()
    x_shape, c_shape = _shapes(data)
    net = model.build(x_shape, c_shape, len(data), data_sigma(data), seed)
    log = train_dsm(
        net, list(data), config=_reseed(config or DSMConfig(), seed), scalarization=scalarization, progress=progress
    )
    return net, log


@dataclass
class Distilled:
    """A distilled generalist with its pseudo-labelled training data and training log."""

    generalist: CondDenoiser
    pseudo: list[Pairs]
    log: TrainLog
    ideal: list[float] | None


def distill_generalist(
    specialists: Sequence,
    unlabeled: Sequence[torch.Tensor],
    x_shape,
    *,
    pairs: Sequence[Pairs] | None = None,
    model: ModelSpec | None = None,
    config: DSMConfig | None = None,
    scalarization: Scalarization | None = None,
    ideal: str | None = None,
    sampler: SamplerSpec | None = None,
    seed: int = 0,
    pseudo: Sequence[Pairs] | None = None,
    progress: Progress = None,
) -> Distilled:
    """Stage 2: pseudo-label ``unlabeled`` with the specialists, then train the generalist on them.

    ``pairs``: real pairs mixed into each task's training set. ``ideal='specialist'`` sets the
    Tchebycheff ideal point z_k to specialist k's own DSM loss on its pseudo-pairs, so the max runs
    over the generalist's excess over what each specialist reaches. ``pseudo``: reuse pseudo-pairs."""
    pseudo = (
        list(pseudo)
        if pseudo is not None
        else pseudo_label(specialists, unlabeled, x_shape, sampler=sampler, seed=seed)
    )
    train = [p + q for p, q in zip(pseudo, pairs, strict=True)] if pairs is not None else pseudo
    z = None
    if ideal == "specialist":
        cfg = config or DSMConfig()
        z = [float(eval_dsm(s, [p], config=cfg)[0]) for s, p in zip(specialists, pseudo, strict=True)]
        base = scalarization or Scalarization("tchebycheff")
        scalarization = Scalarization(base.kind, base.lam, smooth=base.smooth, ideal=z, momentum=base.momentum)
    elif ideal is not None:
        raise DifflensError(f"unknown ideal point {ideal!r}; use 'specialist' or none")
    net, log = fit_generalist(
        train, model=model, config=config, scalarization=scalarization, seed=seed, progress=progress
    )
    return Distilled(net, pseudo, log, z)


def pareto_weights(k: int, points: int = 2) -> list[list[float]]:
    """Task-weight vectors for a Pareto sweep: for K = 2, ``points`` + 2 evenly spaced λ on the segment
    (including both ends' neighbours, never a zero weight); for K > 2 the uniform vector and, for each
    task, ``points`` tilts (1 − a)·uniform + a·e_k with a evenly spaced in (0, 0.9]."""
    if k < 1 or points < 1:
        raise DifflensError(f"pareto sweep needs k ≥ 1 and points ≥ 1, got {k}, {points}")
    if k == 1:
        return [[1.0]]
    if k == 2:
        grid = torch.linspace(0.05, 0.95, points + 2).tolist()
        return [[a, 1 - a] for a in grid]
    out = [[1.0 / k] * k]
    for j in range(k):
        for a in torch.linspace(0.9 / points, 0.9, points).tolist():
            out.append([(1 - a) / k + (a if i == j else 0.0) for i in range(k)])
    return out


def pareto_sweep(
    data: Sequence[Pairs],
    weight_grid: Sequence[Sequence[float]],
    evaluate: Callable[[CondDenoiser], Sequence[float]],
    *,
    kind: str = "linear",
    model: ModelSpec | None = None,
    config: DSMConfig | None = None,
    seed: int = 0,
    progress: Progress = None,
) -> list[dict]:
    """Retrain the generalist on ``data`` once per weight vector; per-task metrics from ``evaluate``."""
    out = []
    for lam in weight_grid:
        net, _ = fit_generalist(
            data, model=model, config=config, scalarization=Scalarization(kind, lam), seed=seed, progress=progress
        )
        out.append({"weights": [float(v) for v in lam], "metrics": [float(v) for v in evaluate(net)]})
    return out
