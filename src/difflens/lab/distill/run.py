"""One distillation experiment end to end (``distill toy|restore|policy``): training with a progress
callback, then NAME.csv, NAME.png and NAME.json (written last: its presence means the run completed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from difflens import report
from difflens.analysis.run_support import Progress, no_progress
from difflens.errors import DifflensError
from difflens.lab.distill import report as drep
from difflens.lab.distill.policy import PolicyConfig, run_policy
from difflens.lab.distill.restore import RestoreConfig, run_restore
from difflens.lab.distill.toy import ToyConfig, run_toy

# experiment: (runner, metrics (key → label), plot options)
EXPERIMENTS: dict[str, tuple[Callable, dict[str, str], dict]] = {
    "toy": (run_toy, {"excess_risk": "excess DSM risk", "w2": "W2 to truth", "kl": "KL to truth"}, {}),
    "restore": (run_restore, {"psnr": "PSNR (dB)", "ssim": "SSIM"}, {}),
    "policy": (
        run_policy,
        {"success": "success rate", "return": "mean return"},
        {"xlabel": "demonstrations per task"},
    ),
}
CONFIGS = {"toy": ToyConfig, "restore": RestoreConfig, "policy": PolicyConfig}


def run_distill(
    name: str,
    cfg: ToyConfig | RestoreConfig | PolicyConfig,
    out: Path,
    *,
    threads: int = 1,
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> tuple[dict, dict[str, str]]:
    """Run experiment ``name`` on ``threads`` CPU threads, seeded by ``cfg.seed``, its nets on ``device``
    (default cpu); returns (result, metrics)."""
    if threads < 1:
        raise DifflensError(f"--threads must be ≥ 1, got {threads}")
    runner, metrics, plot_kw = EXPERIMENTS[name]
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    advance = progress(f"distill {name}: training steps", cfg.units())
    result = runner(cfg, progress=advance, device=device or "cpu")
    if name == "toy":
        if result["pareto"]:
            drep.plot_pareto(result["pareto"], out / "toy_pareto.png", "excess DSM risk")
        plot_kw = {"log_y": tuple(metrics), "floors": {m: [f[m] for f in result["floor"]] for m in ("w2", "kl")}}
    report.write_csv(out / f"{name}.csv", drep.summary_rows(result, tuple(metrics)))
    drep.plot_vs_pairs(result, metrics, out / f"{name}.png", **plot_kw)
    report.write_json(out / f"{name}.json", result)
    return result, metrics
