"""difflens's optimal-loss schedule and excess-loss monitor inside a standard diffusers training loop:
a tiny ``UNet2DModel`` with a ``DDPMScheduler`` (ε-prediction, linear betas) on the 8×8 digits, on CPU.

Only four lines of the loop are difflens's (marked ``# difflens``): draw levels from the schedule, weight
the per-sample loss, feed the x0-unit loss back to the schedule, and hand the per-sample loss to the
monitor (docs/method.md, "Training schedules" and "Monitoring a training loop"). The schedule draws a
continuous VE-equivalent level s = σ_t/α_t; the net gets the matching fractional DDPM timestep (ln s is
interpolated in the scheduler's own table of sqrt((1 − ᾱ_t)/ᾱ_t)) and the noisy input is
x_t = α(s)·(x0 + s·ε), which is what ``scheduler.add_noise`` computes at an integer timestep.
``--schedule ddpm`` trains the plain way instead (integer t ~ U{0, …, T−1}, unweighted), still monitored.

Usage (about 30 s on one core with the defaults):
    python examples/diffusers_loop.py --out runs/diffusers_loop [--steps 300 --schedule optimal|ddpm]
Writes excess.csv and tensorboard/ (scalars excess/sigma_…, loss/…, optimal/… per level) in --out and
prints the last per-level excess; `tensorboard --logdir runs/diffusers_loop/tensorboard` shows it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from difflens.analysis.optimal_loss import optimal_loss_curve
from difflens.data import load
from difflens.diffusion.precond import Parametrization
from difflens.errors import require
from difflens.track import ExcessLossMonitor, OptimalLossSchedule


def tiny_unet():
    """A ~60k-parameter diffusers UNet for 1×8×8 images."""
    diffusers = require("diffusers", "diffusers", "examples/diffusers_loop.py")
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
    )


def ddpm_timestep(s: torch.Tensor, ddpm_levels: np.ndarray) -> torch.Tensor:
    """The fractional DDPM timestep of levels s: ln s interpolated in the scheduler's table (exact at its entries)."""
    return torch.as_tensor(np.interp(np.log(s.numpy()), np.log(ddpm_levels), np.arange(len(ddpm_levels))))


def noisy(x0: torch.Tensor, eps: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x_t = α·(x0 + s·ε) with α = 1/sqrt(1 + s²): ``scheduler.add_noise`` at a continuous level s."""
    level = s.to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return (x0 + level * eps) / torch.sqrt(1 + level**2)


def run(
    out: str | Path,
    steps: int = 300,
    batch: int = 64,
    schedule_name: str = "optimal",
    log_every: int = 50,
    bins: int = 16,
    seed: int = 0,
) -> ExcessLossMonitor:
    """Train for ``steps`` and return the (closed) monitor; its rows are also in OUT/excess.csv."""
    diffusers = require("diffusers", "diffusers", "examples/diffusers_loop.py")
    torch.manual_seed(seed)
    out = Path(out)
    data = load("digits")
    x = data.rows(0, data.n).reshape(-1, 1, 8, 8)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    abar = scheduler.alphas_cumprod.double().numpy()
    ddpm_levels = np.sqrt((1 - abar) / abar)  # s at each integer timestep, increasing in t

    param = Parametrization.of("vp", "eps")  # the loss is in ε units: r(s) = 1/s² per x0 unit
    schedule = None
    if schedule_name == "optimal":
        schedule = OptimalLossSchedule.from_data(data, param, bins=bins, sigma_min=0.02, sigma_max=80.0, samples=64)
    curve = optimal_loss_curve(data, np.geomspace(0.02, 80.0, bins + 1), samples=64)  # J*_x0 over the whole range
    monitor = ExcessLossMonitor(
        curve, process="vp", target="eps", path=out / "excess.csv", tensorboard=out / "tensorboard"
    )

    unet = tiny_unet()
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    with monitor:
        for step in range(1, steps + 1):
            x0 = x[torch.randint(0, len(x), (batch,), generator=g)]
            eps = torch.randn(x0.shape, generator=g)
            if schedule is not None:
                s = schedule.sample(batch, g)  # difflens
                t, x_t = ddpm_timestep(s, ddpm_levels), noisy(x0, eps, s)
                weight = schedule.loss_weight(s).float()  # difflens
            else:
                t = torch.randint(0, len(abar), (batch,), generator=g)
                s = torch.as_tensor(ddpm_levels[t.numpy()])
                x_t = scheduler.add_noise(x0, eps, t)
                weight = torch.ones(batch)
            per_sample = ((unet(x_t, t.float()).sample - eps) ** 2).mean(dim=(1, 2, 3))
            loss = (weight * per_sample).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if schedule is not None:
                schedule.update(s, per_sample.detach().double() / torch.as_tensor(param.factor(s.numpy())))  # difflens
            monitor.observe(per_sample, sigma=s)  # difflens
            if step % log_every == 0 or step == steps:
                monitor.flush(step)
    return monitor


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/diffusers_loop")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--schedule", choices=("optimal", "ddpm"), default="optimal")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    monitor = run(a.out, a.steps, a.batch, a.schedule, a.log_every, seed=a.seed)
    last = max(r["step"] for r in monitor.rows)
    print(f"step {last}: per-level loss, J* and excess (ε units); {monitor.skipped} samples outside the curve")
    for r in (r for r in monitor.rows if r["step"] == last):
        print(f"  σ = {r['sigma']:8.3f}  loss {r['loss']:10.4g}  J* {r['optimal']:10.4g}  excess {r['excess']:10.4g}")


if __name__ == "__main__":
    main()
