"""Semi-supervised multi-objective learning for conditional diffusion models (Cheng et al., ICML 2026).

Few paired (condition, sample) data per task, many unlabeled conditions: small specialists per task
(``fit_specialists``) label the unlabeled conditions with pseudo-samples, and one larger generalist
is trained on them under a linear or Tchebycheff scalarization (``distill_generalist``). Modules:
``models`` (conditional denoisers), ``train`` (DSM, scalarizations), ``sampling`` (EDM sampler),
``settings`` (architecture and sampler settings), ``specialists`` (linear, mlp and kernel specialists),
``core`` (the two stages, baselines, Pareto sweep), and three experiments — ``toy`` (Gaussian tasks
with exact metrics), ``restore`` (digits restoration) and ``policy`` (diffusion policies).
"""

from difflens.lab.distill.core import (
    SpecialistCache,
    distill_generalist,
    fit_generalist,
    fit_specialists,
    pareto_fronts,
    pareto_sweep,
    pareto_weights,
    pseudo_label,
)
from difflens.lab.distill.settings import ModelSpec, SamplerSpec
from difflens.lab.distill.specialists import (
    SPECIALISTS,
    KernelSpecialist,
    LinearGaussian,
    MLPSpecialist,
    make_specialist,
)
from difflens.lab.distill.train import DSMConfig, Pairs, Scalarization, train_dsm

__all__ = [
    "SPECIALISTS",
    "DSMConfig",
    "KernelSpecialist",
    "LinearGaussian",
    "MLPSpecialist",
    "ModelSpec",
    "Pairs",
    "SamplerSpec",
    "Scalarization",
    "SpecialistCache",
    "distill_generalist",
    "fit_generalist",
    "fit_specialists",
    "make_specialist",
    "pareto_fronts",
    "pareto_sweep",
    "pareto_weights",
    "pseudo_label",
    "train_dsm",
]
