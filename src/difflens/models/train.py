"""A reference trainer for small CPU runs: tiny MLP or small U-Net denoisers on any data spec.

One loop for every recipe: draw x0 from the training split, s from a schedule (EDM log-normal,
uniform t of a process, or the optimal-loss schedule), form x̃ = x0 + s·ε, and regress the network
on its target through ``Parametrization`` (EDM preconditioning is the ``edm`` target). Keeps an EMA
copy, writes ``metrics.jsonl`` (per level: train loss in target units, x0 loss, and the effective
weight the step put on the x0 loss) as it goes, periodic
``ckpt_*.pt`` checkpoints and, at the end, ``model.safetensors`` + ``train.json``.

Two variants against memorization (Zhou, Zhang & Wright; docs/method.md, "Smoothing"): ``noise_unconditioned`` gives
the network a constant time input (``Parametrization(noise_conditioned=False)``: the preconditioning
around it still uses s, the network cannot see it), and ``smooth_below = s_c`` regresses samples
with s < s_c on the temperature-smoothed empirical denoiser E_T(s)[x0 | x̃], T(s) = T·max(s_c/s, 1)
(``models.empirical.EmpiricalDenoiser``, the kernel), instead of their own x0. ``device`` is where the
network trains (and the smoothing kernel runs); random draws come from a CPU generator, so a seed
gives the same run on any device.

The paper's own losses (``loss=``, one small class each in ``LOSSES``): ``unconditioned`` is L_u
(Eq. 9), E[(σ_i²/2)·‖s_θ(x) + (x − μ)/σ_i²‖²] with σ_i uniform over N geometric levels, the network
predicting the score with no σ input and no σ-dependent scaling (``Parametrization(ve, score,
noise_conditioned=False)``: D(x, s) = x + s²·s_θ(x)), so its optimum is the p_MN score;
``smoothed`` is Eq. 11, the same with the Eq. 10 target (``models.empirical.TemperatureScore``, as
printed or, with ``smoothed_form="official"``, as the authors' code computes it) for σ_i ≤ σ_collapse.
``denoising`` (the default) is the loop above with today's two variants.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from difflens.data import Dataset, load
from difflens.data.files import atomic_path, save_torch, write_json
from difflens.diffusion import schedules as sched
from difflens.diffusion.denoiser import wide_dtype
from difflens.diffusion.precond import Parametrization
from difflens.errors import DifflensError
from difflens.models.empirical import EQ10_FORMS, EmpiricalDenoiser, TemperatureScore
from difflens.models.load import CHECKPOINT_FORMAT, checkpoint_meta
from difflens.models.nets import build_net, count_params, image_shape

LOG_BINS = (0.002, 80.0, 32)  # per-level train loss: 32 equal bins in ln s over [0.002, 80]


@dataclass
class TrainConfig:
    """Everything that determines a run (stored in every checkpoint)."""

    data: str = "digits"
    scale: str = "auto"
    holdout: float = 0.1
    split_seed: int = 0
    arch: str = "mlp"
    width: int = 256
    depth: int = 3
    process: str = "edm"
    target: str = "edm"
    time_scale: float = 1.0
    schedule: str = "edm"  # edm, uniform-t, optimal-loss, or a recipe file (schedule.json of `difflens schedule`)
    bins: int = 32
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    units: str = "x0"
    a: float = 1.0
    w_max: float = 1e3
    bump: bool = True
    bump_mu: float | None = None
    bump_std: float = 0.5
    mix: float = 0.1
    steps: int = 2000
    batch: int = 256
    lr: float = 2e-3
    ema: float = 0.999
    seed: int = 0
    log_every: int = 100
    ckpt_every: int = 500
    noise_unconditioned: bool = False
    smooth_temperature: float = 1.0
    smooth_below: float | None = None
    loss: str = "denoising"
    levels: int = 1000
    level_min: float = 0.01
    level_max: float = 50.0
    collapse: float | None = None
    k: int | None = None
    smoothed_form: str = "paper"


def split_data(cfg: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """(train, held-out) exactly as the trainer uses them (so diagnose can reproduce the split)."""
    ds = load(cfg.data, cfg.scale)
    if cfg.holdout and cfg.holdout > 0:
        return ds.split(cfg.holdout, cfg.split_seed)
    return ds, None


def make_arch(cfg: TrainConfig, data: Dataset) -> tuple[dict, list[int]]:
    """(architecture description, network input shape)."""
    if cfg.arch == "mlp":
        return {"name": "mlp", "dim": data.dim, "width": cfg.width, "depth": cfg.depth}, [data.dim]
    if cfg.arch == "unet":
        shape = list(image_shape(data.shape))
        return {"name": "unet", "shape": shape, "width": cfg.width}, shape
    raise DifflensError(f"unknown architecture {cfg.arch!r}; choose mlp or unet")


def make_schedule(
    cfg: TrainConfig, param: Parametrization, train: Dataset
) -> sched.LogNormal | sched.UniformT | sched.OptimalLossSchedule:
    """The run's schedule: a named one, or a recipe file (an x0-unit recipe serves any target)."""
    if cfg.schedule == "edm":
        return sched.LogNormal()
    if cfg.schedule == "uniform-t":
        return sched.UniformT(param.process)
    if cfg.schedule == "optimal-loss":
        return sched.OptimalLossSchedule.from_data(
            train,
            param,
            bins=cfg.bins,
            sigma_min=cfg.sigma_min,
            sigma_max=cfg.sigma_max,
            seed=cfg.seed,
            units=cfg.units,
            a=cfg.a,
            w_max=cfg.w_max,
            bump=cfg.bump,
            bump_mu=cfg.bump_mu,
            bump_std=cfg.bump_std,
            mix=cfg.mix,
        )
    if cfg.schedule.endswith(".json") or Path(cfg.schedule).is_file():
        return sched.load_recipe(cfg.schedule, param, train)
    raise DifflensError(f"unknown schedule {cfg.schedule!r}; choose edm, uniform-t, optimal-loss or a schedule.json")


def _check(cfg: TrainConfig) -> None:
    if cfg.steps < 1 or cfg.batch < 1 or cfg.width < 1 or cfg.depth < 1:
        raise DifflensError("steps, batch, width and depth must be ≥ 1")
    if not (cfg.lr > 0 and 0 <= cfg.ema < 1):
        raise DifflensError(f"need lr > 0 and 0 ≤ ema < 1, got lr={cfg.lr}, ema={cfg.ema}")
    if cfg.log_every < 1 or cfg.ckpt_every < 1:
        raise DifflensError("log_every and ckpt_every must be ≥ 1")
    if cfg.noise_unconditioned and cfg.time_scale != 1.0:
        raise DifflensError("--time-scale has no effect on a noise-unconditioned network (its time input is 0)")
    if not (math.isfinite(cfg.smooth_temperature) and cfg.smooth_temperature > 0):
        raise DifflensError(f"--smooth-temperature must be finite and > 0, got {cfg.smooth_temperature}")
    if cfg.smooth_below is not None and not (math.isfinite(cfg.smooth_below) and cfg.smooth_below > 0):
        raise DifflensError(f"--smooth-below must be a finite noise level > 0, got {cfg.smooth_below}")
    if cfg.smooth_temperature != 1.0 and cfg.smooth_below is None:
        raise DifflensError("--smooth-temperature needs --smooth-below S_C (targets are smoothed below S_C)")
    _check_loss(cfg)


def _check_loss(cfg: TrainConfig) -> None:
    if cfg.loss not in LOSSES:
        raise DifflensError(f"unknown loss {cfg.loss!r}; choose one of {', '.join(LOSSES)}")
    if cfg.smoothed_form not in EQ10_FORMS:
        raise DifflensError(f"unknown --smoothed-form {cfg.smoothed_form!r}; choose one of {', '.join(EQ10_FORMS)}")
    if (cfg.collapse is not None or cfg.k is not None or cfg.smoothed_form != "paper") and cfg.loss != "smoothed":
        raise DifflensError("--collapse, --k and --smoothed-form belong to --loss smoothed (Eq. 11)")
    if cfg.loss == "denoising":
        return
    defaults = TrainConfig()
    fixed = ("process", "target", "time_scale", "schedule", "noise_unconditioned", "smooth_below")
    changed = [f"--{n.replace('_', '-')}" for n in fixed if getattr(cfg, n) != getattr(defaults, n)]
    if changed:
        raise DifflensError(
            f"--loss {cfg.loss} fixes the network (a σ-blind score) and its levels; drop {', '.join(changed)}"
        )
    if cfg.levels < 1 or not 0 < cfg.level_min < cfg.level_max or not math.isfinite(cfg.level_max):
        raise DifflensError(
            f"need levels ≥ 1 and 0 < level_min < level_max, got {cfg.levels}, {cfg.level_min}, {cfg.level_max}"
        )
    if cfg.loss == "smoothed" and not (cfg.collapse is not None and math.isfinite(cfg.collapse) and cfg.collapse > 0):
        raise DifflensError(f"--loss smoothed needs --collapse σ_collapse > 0 (finite), got {cfg.collapse}")


class SmoothedTargets:
    """Regression x0 for training samples: E_T(s)[x0 | x̃] from the kernel where s < s_c, x0 itself above.

    T(s) = T·max(s_c/s, 1) as in ``EmpiricalDenoiser`` (so T = 1 is continuous at s_c, where the exact
    empirical denoiser is what x0 regresses to on average); the posterior is over the training split,
    computed on ``device``."""

    def __init__(self, data: Dataset, temperature: float, below: float, device: torch.device | str = "cpu"):
        self.below = float(below)
        self.denoiser = EmpiricalDenoiser(data, temperature, below, device=device)

    def __call__(self, x0: torch.Tensor, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        low = s < self.below
        if not low.any():
            return x0
        out = x0.clone()
        xl = x[low]
        out[low] = self.denoiser(xl.reshape(len(xl), -1), s[low]).reshape(xl.shape).to(x0.dtype)
        return out


class DenoisingLoss:
    """The reference recipe: ``cfg``'s parametrization and schedule, targets x0 (or the smoothed
    empirical denoiser below ``smooth_below``) converted to the network's target."""

    def __init__(self, cfg: TrainConfig, train: Dataset, device: torch.device):
        self.param = Parametrization.of(cfg.process, cfg.target, cfg.time_scale, not cfg.noise_unconditioned)
        self.schedule = make_schedule(cfg, self.param, train)
        self.smoother = (
            SmoothedTargets(train, cfg.smooth_temperature, cfg.smooth_below, device) if cfg.smooth_below else None
        )

    def target(self, x0: torch.Tensor, idx: torch.Tensor, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.param.target_of(self.smoother(x0, x, s) if self.smoother else x0, x, s)


class GeometricLevels:
    """σ uniform over N geometric levels in [lo, hi] with per-sample weight σ²/2 (L_u, Eq. 9)."""

    def __init__(self, lo: float, hi: float, n: int):
        self.levels = torch.exp(torch.linspace(math.log(lo), math.log(hi), n, dtype=torch.float64))
        self.levels[0] = lo
        self.levels[-1] = hi

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.levels[torch.randint(0, len(self.levels), (n,), generator=generator)]

    def weight(self, s: torch.Tensor) -> torch.Tensor:
        return 0.5 * s.double() ** 2

    def loss_weight(self, s: torch.Tensor) -> torch.Tensor:
        """The multiplier of the per-sample loss in the network's (score) units: the weight itself."""
        return self.weight(s)

    def update(self, s: torch.Tensor, losses: torch.Tensor) -> None:
        """Fixed levels: nothing to learn from the losses (the trainer's schedule interface)."""

    def describe(self) -> dict:
        lv = self.levels
        return {"name": "geometric-levels", "levels": len(lv), "sigma_min": float(lv[0]), "sigma_max": float(lv[-1])}


class UnconditionedLoss:
    """L_u (Eq. 9): a σ-blind network s_θ(x) regresses the conditional score −(x − μ)/σ_i², weight σ_i²/2."""

    def __init__(self, cfg: TrainConfig, train: Dataset, device: torch.device):
        self.param = Parametrization.of("ve", "score", 1.0, noise_conditioned=False)
        self.schedule = GeometricLevels(cfg.level_min, cfg.level_max, cfg.levels)

    def target(self, x0: torch.Tensor, idx: torch.Tensor, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.param.target_of(x0, x, s)


class SmoothedLoss(UnconditionedLoss):
    """Eq. 11: L_u, with the Eq. 10 target (the K nearest points of the source μ, T = σ_collapse/σ_i) for
    σ_i ≤ σ_collapse."""

    def __init__(self, cfg: TrainConfig, train: Dataset, device: torch.device):
        super().__init__(cfg, train, device)
        self.collapse = float(cfg.collapse)
        self.score = TemperatureScore(train, self.collapse, cfg.k, form=cfg.smoothed_form)

    def target(self, x0: torch.Tensor, idx: torch.Tensor, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        y = super().target(x0, idx, x, s)
        low = (s <= self.collapse).cpu()
        if low.any():
            xl = x[low.to(x.device)]
            smooth = self.score(xl.reshape(len(xl), -1).cpu(), idx[low].numpy(), s[low.to(s.device)].cpu())
            y[low.to(y.device)] = smooth.reshape(xl.shape).to(device=y.device, dtype=y.dtype)
        return y


LOSSES = {"denoising": DenoisingLoss, "unconditioned": UnconditionedLoss, "smoothed": SmoothedLoss}


class LevelBins:
    """Per-level running sums between two log lines: the per-sample train loss (target units), the same
    sample's x0 loss, and the effective weight on it (applied multiplier × target loss / x0 loss)."""

    KEYS = ("loss", "loss_x0", "weight_x0")

    def __init__(self, lo: float, hi: float, n: int):
        self.edges = np.linspace(math.log(lo), math.log(hi), n + 1)
        self.sum = {key: np.zeros(n) for key in self.KEYS}
        self.count = np.zeros(n, dtype=np.int64)

    def add(self, s: torch.Tensor, **values: torch.Tensor) -> None:
        u = np.log(s.numpy())
        k = np.searchsorted(self.edges, u, side="right") - 1
        ok = (k >= 0) & (k < len(self.count))
        for key in self.KEYS:
            np.add.at(self.sum[key], k[ok], values[key].detach().double().numpy()[ok])
        np.add.at(self.count, k[ok], 1)

    def flush(self) -> list[dict]:
        rows = [
            {
                "sigma": float(math.exp(0.5 * (self.edges[k] + self.edges[k + 1]))),
                **{key: float(self.sum[key][k] / self.count[k]) for key in self.KEYS},
                "count": int(self.count[k]),
            }
            for k in np.flatnonzero(self.count)
        ]
        for v in self.sum.values():
            v[:] = 0
        self.count[:] = 0
        return rows


def train(
    cfg: TrainConfig,
    out: Path,
    on_step: Callable[[int, float], None] | None = None,
    threads: int | None = None,
    device: torch.device | str = "cpu",
) -> dict:
    """Train per ``cfg`` on ``device``; write metrics.jsonl, ckpt_*.pt, model.safetensors and train.json in ``out``."""
    from safetensors.torch import save_file

    _check(cfg)
    device = torch.device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    train_ds, held = split_data(cfg)
    objective = LOSSES[cfg.loss](cfg, train_ds, device)
    param, schedule = objective.param, objective.schedule
    arch, shape = make_arch(cfg, train_ds)
    torch.manual_seed(cfg.seed)
    net = build_net(arch).to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    x_all = train_ds.rows(0, train_ds.n).reshape(train_ds.n, *shape).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    bins = LevelBins(*LOG_BINS)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(cfg),
        "arch": arch,
        "shape": shape,
        "param": param.describe(),
        "schedule": schedule.describe(),
        "data": train_ds.summary(),
        "parameters": count_params(net),
    }
    start, running = time.time(), 0.0
    with (out / "metrics.jsonl").open("w") as metrics:
        for step in range(1, cfg.steps + 1):
            idx = torch.randint(0, train_ds.n, (cfg.batch,), generator=gen)
            x0 = x_all[idx.to(device)]
            s = schedule.sample(cfg.batch, gen)  # float64 on the CPU, where the schedule keeps its statistics
            s_dev = s.to(device=device, dtype=wide_dtype(device))
            noise = torch.randn(x0.shape, generator=gen).to(device)
            x = x0 + s_dev.float().reshape(-1, *([1] * (x0.ndim - 1))) * noise
            net_x, net_t = param.inputs(x, s_dev)
            y = objective.target(x0, idx, x, s_dev)
            out_net = net(net_x, net_t)
            per = ((out_net - y) ** 2).reshape(cfg.batch, -1).mean(1)
            # the multiplier of the target-unit loss; an x0-unit schedule divides by r(s) so the effective
            # weight on the x0 loss is its w(s) (docs/method.md, "Training schedules")
            mult = schedule.loss_weight(s)
            loss = (mult.float().to(device) * per).mean()
            if not torch.isfinite(loss):
                raise DifflensError(f"training diverged at step {step} (loss {float(loss)}); lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                decay = min(cfg.ema, (1.0 + step) / (10.0 + step))  # warm-up: early averages forget the init
                for pe, pn in zip(ema.parameters(), net.parameters(), strict=True):
                    pe.lerp_(pn, 1.0 - decay)
            per_cpu = per.detach().cpu().double()
            with torch.no_grad():  # the same samples' x0 loss: output and regression target converted to x0
                xw = x.to(wide_dtype(device))
                gap = param.to_x0(out_net.to(xw.dtype), xw, s_dev) - param.to_x0(y.to(xw.dtype), xw, s_dev)
                per_x0 = (gap**2).reshape(cfg.batch, -1).mean(1).cpu().double()
            schedule.update(s, per_cpu / torch.as_tensor(param.factor(s.numpy()), dtype=torch.float64))
            bins.add(s, loss=per_cpu, loss_x0=per_x0, weight_x0=mult * per_cpu / per_x0)
            value = loss.item()
            running += value
            if step % cfg.log_every == 0 or step == cfg.steps:
                n_avg = step % cfg.log_every or cfg.log_every
                rec = {"step": step, "loss": running / n_avg, "time": time.time() - start}
                rec["units"] = {"process": param.process.name, "target": param.target}
                metrics.write(json.dumps({**rec, "levels": bins.flush()}) + "\n")
                metrics.flush()
                running = 0.0
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                state = {
                    **meta,
                    "step": step,
                    "schedule_state": getattr(schedule, "state_dict", dict)(),
                    "state_dict": net.state_dict(),
                    "ema_state_dict": ema.state_dict(),
                }
                save_torch(state, out / f"ckpt_{step:07d}.pt")
            if on_step is not None:
                on_step(step, value)
    final = {**meta, "step": cfg.steps, "schedule_state": getattr(schedule, "state_dict", dict)()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"difflens": json.dumps(checkpoint_meta(final))})
    summary = {
        **checkpoint_meta(final),
        "seconds": time.time() - start,
        "held_out": held.summary() if held is not None else None,
    }
    write_json(out / "train.json", summary)
    return summary
