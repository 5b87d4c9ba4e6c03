"""Drop-in pieces for any PyTorch training loop (diffusers, k-diffusion, Lightning, a plain loop): the
excess-loss monitor and the optimal-loss schedule (docs/method.md, "Monitoring a training loop",
"Training schedules"). The package root sits outside the layers, so it may gather them here."""

from difflens.analysis.track import ExcessLossMonitor, optimal_levels_x0
from difflens.diffusion.schedules import OptimalLossSchedule, load_recipe

__all__ = ["ExcessLossMonitor", "OptimalLossSchedule", "load_recipe", "optimal_levels_x0"]
