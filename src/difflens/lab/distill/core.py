"""Specialists → generalist distillation (Cheng et al., ICML 2026; docs/method.md, "Distillation").

Stage 1 ``fit_specialists``: one small conditional denoiser per task on that task's few pairs.
Stage 2 ``distill_generalist``: each specialist samples pseudo-targets for its task's unlabeled
conditions; one larger task-conditional generalist is trained on all of them under a linear or
Tchebycheff scalarization, optionally with the real pairs mixed in. ``fit_generalist`` on the real
pairs alone is the baseline; ``pareto_sweep`` retrains under a grid of task weights, ``pareto_fronts``
the distilled and the baseline generalists under the same grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import torch

from difflens.errors import DifflensError
from difflens.lab.distill.models import CondDenoiser
from difflens.lab.distill.settings import ModelSpec, SamplerSpec, data_sigma
from difflens.lab.distill.specialists import SPECIALISTS, make_specialist
from difflens.lab.distill.train import DSMConfig, Pairs, Scalarization, TrainLog, derive_seed, eval_dsm, train_dsm

Progress = Callable[[int], None] | None
T = TypeVar("T")
IDEALS = ("zero", "specialist")  # Tchebycheff ideal points z (docs/method.md, "Distillation")


def budget(pseudo_per_cond: int, mix_real: bool, distilled: Distilled) -> dict:
    """The pseudo-label budget of a distilled run, as recorded in an experiment's output."""
    return {
        "pseudo_per_cond": pseudo_per_cond,
        "mix_real": mix_real,
        "train_pairs": [len(p) for p in distilled.data],
    }


def check_objective(scalarization: str, ideal: str) -> None:
    """An experiment's generalist objective: a known ideal point, and a non-zero one only where it acts
    (Tchebycheff; the linear scalarization has no ideal point)."""
    if ideal not in IDEALS:
        raise DifflensError(f"unknown --ideal {ideal!r}; choose {' or '.join(IDEALS)}")
    if ideal != "zero" and scalarization != "tchebycheff":
        raise DifflensError(f"--ideal {ideal} needs --scalarization tchebycheff (linear has no ideal point)")


def check_specialist(kind: str, pseudo_per_cond: int) -> None:
    """A known specialist class (``specialists.SPECIALISTS``) and a positive pseudo-label budget."""
    if kind not in SPECIALISTS:
        raise DifflensError(f"unknown --specialist {kind!r}; choose {', '.join(SPECIALISTS)}")
    if pseudo_per_cond < 1:
        raise DifflensError(f"--pseudo-per-cond must be ≥ 1, got {pseudo_per_cond}")


@dataclass
class DistillConfig:
    """Settings every distillation experiment shares (each experiment's config extends it and overrides
    some defaults): generalist depth, the specialist class and size, training steps, the objective
    (docs/method.md, "Distillation"), the pseudo-label budget, the Pareto grid, sampler steps and seed."""

    depth: int = 3
    specialist: str = "mlp"
    specialist_width: int = 64
    specialist_depth: int = 2
    steps: int = 4000
    specialist_steps: int = 2000
    batch: int = 128
    scalarization: str = "linear"
    ideal: str = "zero"
    mix_real: bool = True
    pseudo_per_cond: int = 1
    pareto: int = 1
    sampler_steps: int = 18
    seed: int = 0

    def check_shared(self) -> None:
        """The shared settings are valid (DifflensError otherwise)."""
        if self.pareto < 0:
            raise DifflensError(f"--pareto must be ≥ 0, got {self.pareto}")
        if min(self.steps, self.batch, self.sampler_steps) < 1 or self.specialist_steps < 0:
            raise DifflensError("--steps, --batch and --sampler-steps must be ≥ 1, --specialist-steps ≥ 0")
        check_objective(self.scalarization, self.ideal)
        check_specialist(self.specialist, self.pseudo_per_cond)


def _shapes(data: Sequence[Pairs]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    x_shape, c_shape = tuple(data[0].x.shape[1:]), tuple(data[0].cond.shape[1:])
    for p in data:
        if tuple(p.x.shape[1:]) != x_shape or tuple(p.cond.shape[1:]) != c_shape:
            raise DifflensError("all tasks must share the sample shape and the condition shape")
    return x_shape, c_shape


def _equal(a: Pairs, b: Pairs) -> bool:
    return torch.equal(a.x, b.x) and torch.equal(a.cond, b.cond)


class SpecialistCache:
    """Fits kept across the cells of one regime sweep (docs/method.md, "Sweep cache"): the specialists of
    an (n, seed) and the paired-only baseline of an (n, width, seed). Keyed by every fit setting, and a
    fit is reused only for equal pairs, so a hit returns exactly what a refit would. ``hits`` counts the
    fits saved."""

    def __init__(self) -> None:
        self._fits: dict[str, tuple[list[Pairs], list]] = {}
        self.hits = 0

    def get(self, key: str, pairs: Sequence[Pairs], fit: Callable[[], T]) -> T:
        """What ``fit()`` returns for ``pairs`` under settings ``key`` (``fit()`` is called on a miss)."""
        kept = self._fits.get(key)
        same = kept is not None and len(kept[0]) == len(pairs)
        if same and all(_equal(a, b) for a, b in zip(kept[0], pairs, strict=False)):
            self.hits += 1
            return kept[1]
        specs = fit()
        self._fits[key] = (list(pairs), specs)
        return specs


def fit_specialists(
    pairs: Sequence[Pairs],
    *,
    kind: str = "mlp",
    model: ModelSpec | None = None,
    config: DSMConfig | None = None,
    sampler: SamplerSpec | None = None,
    seed: int = 0,
    progress: Progress = None,
    cache: SpecialistCache | None = None,
) -> list:
    """Stage 1: one specialist of class ``kind`` (``specialists.SPECIALISTS``) per task, fitted on that
    task's pairs only; ``model``/``config`` are the mlp's, ``sampler`` how it samples. With ``cache``, a
    fit of the same settings on equal pairs is reused (its training steps are then not reported)."""
    _shapes(pairs)
    model = model or ModelSpec(width=64, depth=2)

    def fit() -> list:
        return [
            make_specialist(
                kind, model=model, config=config, sampler=sampler, seed=seed + 1000 * k, progress=progress
            ).fit(p)
            for k, p in enumerate(pairs)
        ]

    if cache is None:
        return fit()
    return cache.get(repr((kind, model, config, sampler, seed)), pairs, fit)


def _reseed(config: DSMConfig, seed: int) -> DSMConfig:
    return DSMConfig(**{**config.__dict__, "seed": seed})


def pseudo_label(
    specialists: Sequence,
    conds: Sequence[torch.Tensor],
    *,
    per_cond: int = 1,
    seed: int = 0,
) -> list[Pairs]:
    """Pseudo-pairs: specialist k samples ``per_cond`` targets for every unlabeled condition of task k
    (``specialists``: anything with ``sample(cond, generator)``); the pairs of one condition are adjacent."""
    if per_cond < 1:
        raise DifflensError(f"need ≥ 1 pseudo-label per unlabeled condition, got {per_cond}")
    conds = [c.repeat_interleave(per_cond, dim=0) for c in conds]
    if len(specialists) != len(conds):
        raise DifflensError(f"{len(specialists)} specialists for {len(conds)} tasks of unlabeled conditions")
    g = torch.Generator().manual_seed(derive_seed(seed, "pseudo-label"))
    return [Pairs(c, s.sample(c, g)) for s, c in zip(specialists, conds, strict=True)]


def fit_generalist(
    data: Sequence[Pairs],
    *,
    model: ModelSpec | None = None,
    config: DSMConfig | None = None,
    scalarization: Scalarization | None = None,
    seed: int = 0,
    progress: Progress = None,
    cache: SpecialistCache | None = None,
) -> tuple[CondDenoiser, TrainLog]:
    """One task-conditional denoiser on K tasks' pairs (task id k = position). On the real pairs alone
    this is the baseline; on pseudo-pairs it is the distilled generalist. With ``cache``, a fit of the
    same settings on equal pairs is reused (its training steps are then not reported)."""
    model = model or ModelSpec()
    x_shape, c_shape = _shapes(data)

    def fit() -> tuple[CondDenoiser, TrainLog]:
        net = model.build(x_shape, c_shape, len(data), data_sigma(data), seed)
        log = train_dsm(
            net, list(data), config=_reseed(config or DSMConfig(), seed), scalarization=scalarization, progress=progress
        )
        return net, log

    if cache is None:
        return fit()
    return cache.get(repr(("generalist", model, config, scalarization, seed)), data, fit)


@dataclass
class Distilled:
    """A distilled generalist with its pseudo-pairs, its whole training data (pseudo + any real pairs),
    its training log and the Tchebycheff ideal point used (None: zero)."""

    generalist: CondDenoiser
    pseudo: list[Pairs]
    data: list[Pairs]
    log: TrainLog
    ideal: list[float] | None


def distill_generalist(
    specialists: Sequence,
    unlabeled: Sequence[torch.Tensor],
    *,
    pairs: Sequence[Pairs] | None = None,
    per_cond: int = 1,
    model: ModelSpec | None = None,
    config: DSMConfig | None = None,
    scalarization: Scalarization | None = None,
    ideal: str = "zero",
    seed: int = 0,
    pseudo: Sequence[Pairs] | None = None,
    progress: Progress = None,
) -> Distilled:
    """Stage 2: pseudo-label ``unlabeled`` with the specialists, then train the generalist on them.

    ``pairs``: real pairs mixed into each task's training set; ``per_cond``: pseudo-labels per unlabeled
    condition. ``ideal='specialist'`` sets the
    Tchebycheff ideal point z_k to specialist k's own DSM loss on its pseudo-pairs, so the max runs
    over the generalist's excess over what each specialist reaches; ``'zero'`` keeps z = 0 (or the
    scalarization's own). ``pseudo``: reuse pseudo-pairs."""
    if ideal not in IDEALS:
        raise DifflensError(f"unknown ideal point {ideal!r}; choose {' or '.join(IDEALS)}")
    pseudo = list(pseudo) if pseudo is not None else pseudo_label(specialists, unlabeled, per_cond=per_cond, seed=seed)
    train = [p + q for p, q in zip(pseudo, pairs, strict=True)] if pairs is not None else pseudo
    z = None
    if ideal == "specialist":
        cfg = config or DSMConfig()
        z = [float(eval_dsm(s, [p], config=cfg)[0]) for s, p in zip(specialists, pseudo, strict=True)]
        scalarization = replace(scalarization or Scalarization("tchebycheff"), ideal=tuple(z))
    net, log = fit_generalist(
        train, model=model, config=config, scalarization=scalarization, seed=seed, progress=progress
    )
    return Distilled(net, pseudo, list(train), log, z)


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
    evaluate: Callable[[CondDenoiser], list],
    *,
    scalarization: Scalarization | None = None,
    model: ModelSpec | None = None,
    config: DSMConfig | None = None,
    seed: int = 0,
    progress: Progress = None,
) -> list[dict]:
    """Retrain the generalist on ``data`` once per weight vector λ (``scalarization`` with its weights
    replaced by λ, one fresh objective per fit); per-task metrics from ``evaluate``."""
    base = scalarization or Scalarization()
    out = []
    for lam in weight_grid:
        net, _ = fit_generalist(
            data, model=model, config=config, scalarization=replace(base, lam=tuple(lam)), seed=seed, progress=progress
        )
        out.append({"weights": [float(v) for v in lam], "metrics": list(evaluate(net))})
    return out


def pareto_fronts(
    fronts: dict[str, tuple[Sequence[Pairs], Scalarization]],
    weight_grid: Sequence[Sequence[float]],
    evaluate: Callable[[CondDenoiser], list],
    *,
    model: ModelSpec | None = None,
    config: DSMConfig | None = None,
    seed: int = 0,
    progress: Progress = None,
) -> dict[str, list[dict]]:
    """One Pareto front per named training set (e.g. ``distilled``: pseudo-pairs, ``baseline``: the real
    pairs alone), each traced by the same weight vectors, architecture, training config and seed, so the
    fronts differ only by their data (docs/method.md, "Distillation")."""
    return {
        name: pareto_sweep(
            data, weight_grid, evaluate, scalarization=s, model=model, config=config, seed=seed, progress=progress
        )
        for name, (data, s) in fronts.items()
    }


def generalist_fronts(
    pairs: Sequence[Pairs],
    distilled: Distilled,
    scalarization: Scalarization,
    weight_grid: Sequence[Sequence[float]],
    evaluate: Callable[[CondDenoiser], list],
    *,
    model: ModelSpec | None = None,
    config: DSMConfig | None = None,
    seed: int = 0,
    progress: Progress = None,
) -> dict:
    """The Pareto fronts of the distilled generalist (its training data and ideal point) and of the
    paired-only baseline (``pairs``) under ``weight_grid``, as recorded in an experiment's output."""
    dist_scal = replace(scalarization, ideal=tuple(distilled.ideal)) if distilled.ideal else scalarization
    fronts = pareto_fronts(
        {"distilled": (distilled.data, dist_scal), "baseline": (list(pairs), scalarization)},
        weight_grid,
        evaluate,
        model=model,
        config=config,
        seed=seed,
        progress=progress,
    )
    return {"kind": scalarization.kind, "weights": [list(map(float, w)) for w in weight_grid], "fronts": fronts}
