"""The ``difflens`` command line: one sub-command per capability, one module per command group.

Every command is thin: it parses its options, calls one library function and prints the result
(docs/architecture.md, "Adding things"). ``main`` is the console-script entry point.
"""

from __future__ import annotations

import typer

from difflens.cli import data, diagnose, kernel, lab, memorization, train
from difflens.cli.common import register

app = typer.Typer(
    help="difflens: measure diffusion training against the empirical optimal denoiser.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
toy_app = typer.Typer(help="2-D toy lab: optimal and error-prone (y_δ) denoisers on a circle, gap sweeps, flows.")
smooth_app = typer.Typer(
    help="Closed-form samplers on the empirical, temperature-smoothed or unconditioned score; Eq. 10 targets."
)
distill_app = typer.Typer(
    help="Specialists → generalist distillation for conditional diffusion (semi-supervised, multi-task).",
    no_args_is_help=True,
)

COMMANDS = [
    (app, "optimal-loss", kernel.optimal_loss_cmd),
    (app, "denoise", kernel.denoise_cmd),
    (app, "data", data.data_cmd),
    (app, "train", train.train_cmd),
    (app, "diagnose", diagnose.diagnose_cmd),
    (app, "schedule", diagnose.schedule_cmd),
    (app, "scaling", diagnose.scaling_cmd),
    (app, "memorization", memorization.memorization_cmd),
    (app, "gap", memorization.gap_cmd),
    (app, "probes", memorization.probes_cmd),
    (toy_app, "gap", lab.toy_gap_cmd),
    (toy_app, "flow", lab.toy_flow_cmd),
    (smooth_app, "sample", memorization.smooth_sample_cmd),
    (smooth_app, "score", memorization.smooth_score_cmd),
    (app, "convert", data.convert_cmd),
    (distill_app, "toy", lab.distill_toy_cmd),
    (distill_app, "restore", lab.distill_restore_cmd),
    (distill_app, "policy", lab.distill_policy_cmd),
]
for group, name, fn in COMMANDS:
    register(group, name, fn)
app.add_typer(toy_app, name="toy")
app.add_typer(smooth_app, name="smooth")
app.add_typer(distill_app, name="distill")


def main() -> None:
    """Console-script entry point (``difflens = "difflens.cli:main"``)."""
    app(prog_name="difflens")


__all__ = ["app", "main"]
