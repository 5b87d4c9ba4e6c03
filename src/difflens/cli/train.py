"""``train``: every option is a field of ``models.train.TrainConfig`` (its defaults, types and choices);
only the help texts live here. The schedule options are shared with ``schedule``."""

from __future__ import annotations

from pathlib import Path

from difflens.cli.common import (
    ArchName,
    Bars,
    DeviceOpt,
    ProcessName,
    ScaleName,
    ScheduleUnits,
    TargetName,
    ThreadsOpt,
    check_device,
    choice,
    config_options,
    console,
    out_opt,
)
from difflens.models.empirical import EQ10_FORMS
from difflens.models.train import LOSSES, TrainConfig, train

SCHEDULE_HELP = {
    "bins": "optimal-loss schedule: bins in ln σ between --sigma-min and --sigma-max.",
    "sigma_min": "optimal-loss schedule: lowest σ.",
    "sigma_max": "optimal-loss schedule: highest σ.",
    "units": "optimal-loss schedule: units of J*, the gap and the weight (x0 as the paper; target: earlier variant).",
    "a": "optimal-loss schedule: weight scale a.",
    "w_max": "optimal-loss schedule: weight cap w_max (on a·min(1/J*, w_max)).",
    "bump": "optimal-loss schedule: add the critical-σ term 𝒩(ln σ; μ, ς²)·𝟙[σ < σ*].",
    "bump_mu": "optimal-loss schedule: μ of the critical-σ term, in ln σ [default: ln σ* − ς].",
    "bump_std": "optimal-loss schedule: ς of the critical-σ term, in ln σ.",
    "mix": "optimal-loss schedule: uniform floor mixed into p(σ).",
}
TRAIN_HELP = {
    "data": "Data spec: digits (default), lfw, PATH.npy, PATH.npz[:KEY], an image folder, or toy:NAME[:k=v,...].",
    "scale": "auto: integer/image data → [−1, 1], floats as given.",
    "holdout": "Held-out fraction (seeded by --split-seed; 0 = none).",
    "split_seed": "Seed of the train/held-out split.",
    "arch": "Tiny MLP or small U-Net (images).",
    "width": "Hidden width (MLP) or base channels (U-Net).",
    "depth": "MLP blocks.",
    "process": "Forward process the network is trained on.",
    "target": "Prediction target (edm = EDM preconditioning).",
    "time_scale": "Multiplier of the network's time input.",
    "schedule": "Noise-level schedule: edm, uniform-t, optimal-loss, or a schedule.json from `difflens schedule`.",
    **SCHEDULE_HELP,
    "steps": "Optimizer steps.",
    "batch": "Batch size.",
    "lr": "Adam learning rate.",
    "ema": "EMA decay of the saved weights.",
    "seed": "Random seed: same seed, same results.",
    "log_every": "Steps between metrics.jsonl lines.",
    "ckpt_every": "Steps between checkpoints.",
    "noise_unconditioned": "The network gets a constant time input (blind to σ; the preconditioning still uses σ).",
    "smooth_below": "Regress samples with σ < S_C on the smoothed empirical denoiser E_T(σ)[x0|x̃] instead of x0.",
    "smooth_temperature": "With --smooth-below: T in T(σ) = T·max(S_C/σ, 1).",
    "loss": "denoising (the recipe above); Zhou et al.'s unconditioned (L_u, Eq. 9: a σ-blind score net, σ uniform "
    "over --levels geometric levels) or smoothed (Eq. 11: Eq. 10 targets for σ ≤ --collapse).",
    "levels": "--loss unconditioned/smoothed: number of geometric noise levels N.",
    "level_min": "--loss unconditioned/smoothed: lowest level.",
    "level_max": "--loss unconditioned/smoothed: highest level.",
    "collapse": "--loss smoothed: σ_collapse (T = σ_collapse/σ below it).",
    "k": "--loss smoothed: the K nearest training points of each source [default: all].",
    "smoothed_form": "--loss smoothed: Eq. 10 as printed (paper) or as the authors' code computes it (official).",
}
TRAIN_CHOICES = {
    "scale": ScaleName,
    "arch": ArchName,
    "process": ProcessName,
    "target": TargetName,
    "units": ScheduleUnits,
    "loss": choice("LossName", tuple(LOSSES)),
    "smoothed_form": choice("SmoothedForm", EQ10_FORMS),
}


@config_options(
    TrainConfig,
    TRAIN_HELP,
    into="config",
    choices=TRAIN_CHOICES,
    decls={"data": ("--data", "-d"), "batch": ("--batch-size", "--batch")},
)
def train_cmd(
    config: TrainConfig,
    threads: int = ThreadsOpt,
    device: str = DeviceOpt,
    out: Path = out_opt("runs/train"),
) -> None:
    """Train a tiny reference denoiser: metrics.jsonl, ckpt_*.pt, model.safetensors, train.json."""
    dev = check_device(device)
    with Bars() as bars:
        task = bars.bar.add_task("training", total=config.steps)
        summary = train(
            config,
            out,
            on_step=lambda step, loss: bars.bar.update(task, completed=step),
            threads=threads or None,
            device=dev,
        )
    console.print(
        f"trained {summary['arch']['name']} ({summary['parameters']:,} parameters) on {summary['data']['spec']} "
        f"for {config.steps} steps in {summary['seconds']:.0f} s; wrote {out}/model.safetensors, metrics.jsonl, "
        "train.json"
    )
