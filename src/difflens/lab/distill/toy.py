"""Conditional Gaussian tasks with analytic scores, exact per-task metrics, and the n-sweep experiment.

Task k: condition c ~ N(m_k, I) in R^dc; x | c ~ N(μ_k(c), diag v_k(c)) in R^d with
μ_k(c) = A_k·c + b_k + sin(B_k·c) and v_k(c) = v0_k·exp(½·tanh(G_k·c)). Noised at level σ the
conditional stays Gaussian, so E[x0 | x, c] = μ + v/(v + σ²)·(x − μ) is exact (Tweedie), and so is
every metric below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from difflens.errors import DifflensError
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
from difflens.lab.distill.train import DSMConfig, Pairs, Scalarization, derive_seed, edm_weight
from difflens.models.nets import count_params


class GaussianTasks:
    """K conditional Gaussian tasks (see module doc); parameters drawn once from ``seed``."""

    def __init__(self, k: int = 3, dim: int = 2, cond_dim: int = 2, seed: int = 0):
        if min(k, dim, cond_dim) < 1:
            raise DifflensError(f"toy tasks need k, dim, cond_dim ≥ 1, got {k}, {dim}, {cond_dim}")
        g = torch.Generator().manual_seed(derive_seed(seed, "toy-tasks"))
        self.k, self.dim, self.cond_dim = k, dim, cond_dim
        r = 1 / math.sqrt(cond_dim)
        self.m = 1.5 * torch.randn(k, cond_dim, generator=g, dtype=torch.float64)
        self.A = r * torch.randn(k, dim, cond_dim, generator=g, dtype=torch.float64)
        self.b = torch.randn(k, dim, generator=g, dtype=torch.float64)
        self.B = 1.5 * r * torch.randn(k, dim, cond_dim, generator=g, dtype=torch.float64)
        self.v0 = 0.05 + 0.25 * torch.rand(k, dim, generator=g, dtype=torch.float64)
        self.G = r * torch.randn(k, dim, cond_dim, generator=g, dtype=torch.float64)

    def conditions(self, task: int, n: int, generator: torch.Generator) -> torch.Tensor:
        return (self.m[task] + torch.randn(n, self.cond_dim, generator=generator, dtype=torch.float64)).float()

    def mean(self, task: int, c: torch.Tensor) -> torch.Tensor:
        c = c.double()
        return c @ self.A[task].T + self.b[task] + torch.sin(c @ self.B[task].T)

    def var(self, task: int, c: torch.Tensor) -> torch.Tensor:
        return self.v0[task] * torch.exp(0.5 * torch.tanh(c.double() @ self.G[task].T))

    def sample(self, task: int, c: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(len(c), self.dim, generator=generator, dtype=torch.float64)
        return (self.mean(task, c) + self.var(task, c).sqrt() * z).float()

    def pairs(self, task: int, n: int, generator: torch.Generator) -> Pairs:
        c = self.conditions(task, n, generator)
        return Pairs(c, self.sample(task, c, generator))

    def denoiser(self, task: int) -> Callable:
        """The exact E[x0 | x, c] of task ``task`` as a ``denoiser(x, sigma, cond, task_id)``."""

        def d(x, sigma, cond, _task=None):
            mu, v = self.mean(task, cond), self.var(task, cond)
            s2 = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1) ** 2
            return (mu + v / (v + s2) * (x.double() - mu)).to(x.dtype)

        return d


def excess_risk(
    denoiser: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    tasks: GaussianTasks,
    task: int,
    task_id: int = 0,
    *,
    samples: int = 4096,
    sigma_data: float = 1.0,
    p_mean: float = -0.5,
    p_std: float = 1.2,
    seed: int = 0,
) -> tuple[float, float]:
    """Excess DSM risk E[λ(σ)·‖D(x; σ, c) − D*(x; σ, c)‖²/d] (mean and standard error) with c ~ p_k,
    ln σ ~ N(p_mean, p_std²), x ~ p_k(x_σ | c) and λ the EDM weight at ``sigma_data`` — the amount by
    which the model's DSM loss exceeds the lowest achievable one under that noise distribution."""
    g = torch.Generator().manual_seed(derive_seed(seed, "excess-risk"))
    c = tasks.conditions(task, samples, g)
    sigma = torch.exp(p_mean + p_std * torch.randn(samples, generator=g, dtype=torch.float64))
    x = tasks.sample(task, c, g).double() + sigma[:, None] * torch.randn(
        samples, tasks.dim, generator=g, dtype=torch.float64
    )
    with torch.no_grad():
        d = denoiser(x.float(), sigma.float(), c, torch.full((samples,), task_id)).double()
    err = edm_weight(sigma, sigma_data) * (d - tasks.denoiser(task)(x, sigma, c)).pow(2).mean(dim=1)
    return float(err.mean()), float(err.std() / math.sqrt(samples))


def gaussian_w2_kl(
    mean: torch.Tensor, cov: torch.Tensor, mu: torch.Tensor, var: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """W2 distance and KL(N(mean, cov) ‖ N(mu, diag var)), batched over the first axis (float64)."""
    sv = var.sqrt()
    inner = sv[:, :, None] * cov * sv[:, None, :]
    ev = torch.linalg.eigvalsh(inner).clamp_min(0)
    w2sq = (mean - mu).pow(2).sum(1) + cov.diagonal(dim1=1, dim2=2).sum(1) + var.sum(1) - 2 * ev.sqrt().sum(1)
    d = mean.shape[1]
    _, logdet = torch.linalg.slogdet(cov)
    kl = 0.5 * (
        (cov.diagonal(dim1=1, dim2=2) / var).sum(1) + ((mu - mean).pow(2) / var).sum(1) - d + var.log().sum(1) - logdet
    )
    return w2sq.clamp_min(0).sqrt(), kl


def conditional_fit(
    tasks: GaussianTasks,
    task: int,
    draw: Callable[[torch.Tensor], torch.Tensor],
    *,
    conds: int = 32,
    per_cond: int = 128,
    seed: int = 0,
) -> dict:
    """W2 and KL between the Gaussian fitted to ``per_cond`` samples ``draw(c)`` and the true
    p_k(x | c), averaged over ``conds`` test conditions from p_k(c). The same metric on exact samples
    (``draw`` = the true sampler) is the finite-sample floor."""
    g = torch.Generator().manual_seed(derive_seed(seed, "conditional-fit"))
    c = tasks.conditions(task, conds, g)
    x = draw(c.repeat_interleave(per_cond, dim=0)).double().reshape(conds, per_cond, tasks.dim)
    mean = x.mean(1)
    xc = x - mean[:, None]
    cov = xc.transpose(1, 2) @ xc / (per_cond - 1)
    w2, kl = gaussian_w2_kl(mean, cov, tasks.mean(task, c), tasks.var(task, c))
    return {"w2": float(w2.mean()), "kl": float(kl.mean())}


@dataclass
class ToyConfig(DistillConfig):
    """The toy n-sweep. Lists sweep: every (n, N, width) combination is run."""

    tasks: int = 3
    dim: int = 2
    cond_dim: int = 2
    pairs: tuple[int, ...] = (8, 32, 128)
    unlabeled: tuple[int, ...] = (2048,)
    widths: tuple[int, ...] = (128,)
    specialist_width: int = 32
    smooth: float = 0.1
    mix_real: bool = False
    oracle: bool = True
    eval_samples: int = 4096
    eval_conds: int = 32
    per_cond: int = 128

    def check(self) -> None:
        if min(self.pairs, default=0) < 1 or min(self.unlabeled, default=0) < 1 or min(self.widths, default=0) < 1:
            raise DifflensError("--pairs, --unlabeled and --widths need positive integers")
        if self.per_cond < self.dim + 2 or self.eval_conds < 1:
            raise DifflensError(f"--per-cond must be ≥ dim + 2 = {self.dim + 2} to fit a covariance")
        self.check_shared()

    def units(self) -> int:
        """Training steps of the whole run (for a progress bar)."""
        n, nn, w = len(self.pairs), len(self.unlabeled), len(self.widths)
        total = n * self.tasks * self.specialist_steps + n * w * self.steps + n * nn * w * self.steps
        total += nn * w * self.steps if self.oracle else 0
        total += 2 * len(pareto_weights(self.tasks, self.pareto)) * self.steps if self.pareto else 0
        return total


def _drawer(model, task: int, sampler: SamplerSpec, x_shape, generator: torch.Generator) -> Callable:
    """Draws of task ``task``'s model at given conditions: specialist ``task`` of a list (its own
    ``sample``) or one generalist through the EDM sampler."""
    if isinstance(model, list):
        return lambda c: model[task].sample(c, generator)
    return lambda c: sampler(model, c, task, x_shape, generator)


def run_toy(
    cfg: ToyConfig,
    progress: Callable[[int], None] | None = None,
    device: torch.device | str = "cpu",
    cache: SpecialistCache | None = None,
) -> dict:
    """Specialists, baseline generalist, distilled generalist (and an oracle generalist trained on exact
    samples for the same unlabeled conditions) for every n; exact per-task metrics for each. At the
    largest n, the first N and the first width: the Pareto fronts of the distilled and the baseline
    generalists (``cfg.pareto`` > 0). ``cache``: specialist fits shared by the cells of a sweep."""
    cfg.check()
    tasks = GaussianTasks(cfg.tasks, cfg.dim, cfg.cond_dim, seed=cfg.seed)
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "data"))
    sampler = SamplerSpec(steps=cfg.sampler_steps)
    spec_model = ModelSpec(width=cfg.specialist_width, depth=cfg.specialist_depth, device=device)
    spec_cfg = DSMConfig(steps=cfg.specialist_steps, batch=cfg.batch)
    gen_cfg = DSMConfig(steps=cfg.steps, batch=cfg.batch)
    scal = Scalarization(cfg.scalarization, smooth=cfg.smooth)
    max_n, max_un = max(cfg.pairs), max(cfg.unlabeled)
    # nested draws: the n pairs of a smaller n are the first n of the largest set, same for conditions
    all_pairs = [tasks.pairs(k, max_n, g) for k in range(cfg.tasks)]
    all_conds = [tasks.conditions(k, max_un, g) for k in range(cfg.tasks)]

    def metrics(model, *, samples: bool = True) -> list[dict]:
        """Exact metrics per task; ``model`` is one generalist or a list of specialists (task id 0)."""
        out = []
        for k in range(cfg.tasks):
            net, tid = (model[k], 0) if isinstance(model, list) else (model, k)
            risk, se = excess_risk(net, tasks, k, tid, samples=cfg.eval_samples, seed=cfg.seed)
            out.append({"excess_risk": risk, "excess_risk_se": se})
            if samples:
                sg = torch.Generator().manual_seed(derive_seed(cfg.seed, "eval-sampler"))
                draw = _drawer(model, k, sampler, (cfg.dim,), sg)
                out[-1].update(
                    conditional_fit(tasks, k, draw, conds=cfg.eval_conds, per_cond=cfg.per_cond, seed=cfg.seed)
                )
        return out

    tg = torch.Generator().manual_seed(derive_seed(cfg.seed, "floor"))
    floor = [
        conditional_fit(
            tasks,
            k,
            lambda c, k=k: tasks.sample(k, c, tg),
            conds=cfg.eval_conds,
            per_cond=cfg.per_cond,
            seed=cfg.seed,
        )
        for k in range(cfg.tasks)
    ]
    runs: list[dict] = []

    def record(method, n, un, width, model, params, extra=None):
        runs.append(
            {
                "method": method,
                "n": n,
                "unlabeled": un,
                "width": width,
                "params": params,
                "tasks": metrics(model),
                **(extra or {}),
            }
        )

    pareto = None
    for n in cfg.pairs:
        pairs = [p.take(slice(0, n)) for p in all_pairs]
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
        for width in cfg.widths:
            model = ModelSpec(width=width, depth=cfg.depth, device=device)
            base, _ = fit_generalist(
                pairs, model=model, config=gen_cfg, scalarization=scal, seed=cfg.seed, progress=progress, cache=cache
            )
            record("baseline", n, None, width, base, count_params(base))
        for un in cfg.unlabeled:
            conds = [c[:un] for c in all_conds]
            pseudo = pseudo_label(specs, conds, per_cond=cfg.pseudo_per_cond, seed=cfg.seed)
            for width in cfg.widths:
                model = ModelSpec(width=width, depth=cfg.depth, device=device)
                dist = distill_generalist(
                    specs,
                    conds,
                    pairs=pairs if cfg.mix_real else None,
                    model=model,
                    config=gen_cfg,
                    scalarization=scal,
                    ideal=cfg.ideal,
                    pseudo=pseudo,
                    seed=cfg.seed,
                    progress=progress,
                )
                extra = {"ideal_point": dist.ideal, **budget(cfg.pseudo_per_cond, cfg.mix_real, dist)}
                record("distilled", n, un, width, dist.generalist, count_params(dist.generalist), extra)
            if cfg.pareto and n == max_n and un == cfg.unlabeled[0]:
                width = cfg.widths[0]
                pareto = {"n": n, "unlabeled": un, "width": width} | generalist_fronts(
                    pairs,
                    dist,  # its training data and ideal point do not depend on the width
                    scal,
                    pareto_weights(cfg.tasks, cfg.pareto),
                    lambda net: metrics(net, samples=False),
                    model=ModelSpec(width=width, depth=cfg.depth, device=device),
                    config=gen_cfg,
                    seed=cfg.seed,
                    progress=progress,
                )
    if cfg.oracle:
        for un, width, net in _fit_oracles(cfg, tasks, all_conds, gen_cfg, scal, progress, device):
            record("oracle", None, un, width, net, count_params(net))
    return {"experiment": "toy", "config": asdict(cfg), "floor": floor, "runs": runs, "pareto": pareto}


def _fit_oracles(cfg, tasks, all_conds, gen_cfg, scal, progress, device):
    """(unlabeled, width, generalist) trained on exact samples for the first ``unlabeled`` conditions: the
    upper reference the distilled generalist is compared with."""
    for un in cfg.unlabeled:
        og = torch.Generator().manual_seed(derive_seed(cfg.seed, "oracle"))
        exact = [Pairs(c[:un], tasks.sample(k, c[:un], og)) for k, c in enumerate(all_conds)]
        for width in cfg.widths:
            net, _ = fit_generalist(
                exact,
                model=ModelSpec(width=width, depth=cfg.depth, device=device),
                config=gen_cfg,
                scalarization=scal,
                seed=cfg.seed,
                progress=progress,
            )
            yield un, width, net
