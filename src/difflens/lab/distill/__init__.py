"""Semi-supervised multi-objective learning for conditional diffusion models (Cheng et al., ICML 2026).

Few paired (condition, sample) data per task, many unlabeled conditions: small specialists per task
(``fit_specialists``) label the unlabeled conditions with pseudo-samples, and one larger generalist
is trained on them under a linear or Tchebycheff scalarization (``distill_generalist``). Modules:
``models`` (conditional denoisers), ``train`` (DSM, scalarizations), ``sampling`` (EDM sampler),
``core`` (the two stages, baselines, Pareto sweep), and three experiments — ``toy`` (Gaussian tasks
with exact metrics), ``restore`` (digits restoration) and ``policy`` (diffusion policies).
"""

from difflens.lab.distill.core import (
    ModelSpec,
    SamplerSpec,
    distill_generalist,
    fit_generalist,
    fit_specialists,
    pareto_sweep,
    pareto_weights,
    pseudo_label,
)
from difflens.lab.distill.train import DSMConfig, Pairs, Scalarization, train_dsm

__all__ = [
    "DSMConfig",
    "ModelSpec",
    "Pairs",
    "SamplerSpec",
    "Scalarization",
    "distill_generalist",
    "fit_generalist",
    "fit_specialists",
    "pareto_sweep",
    "pareto_weights",
    "pseudo_label",
    "train_dsm",
]
