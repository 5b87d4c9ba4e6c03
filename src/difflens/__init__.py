"""difflens: how good is your diffusion training, measured against the empirical optimal denoiser.

The public API, scikit-learn style: the subpackages (docs/architecture.md) and their most used names.

    import difflens
    ds = difflens.load("digits")
    curve = difflens.optimal_loss_curve(ds, [0.1, 1.0, 10.0], samples=256)
    x0_hat = difflens.denoise(noisy, ds, sigma=0.5)

``difflens.report`` (plots and HTML, which need matplotlib) is imported on first use, so that
``import difflens`` stays light.
"""

import importlib
from types import ModuleType

from difflens import analysis, data, diffusion, kernel, models
from difflens.analysis.optimal_loss import optimal_loss_curve
from difflens.data import Dataset, as_dataset, load
from difflens.diffusion.precond import Parametrization
from difflens.errors import DifflensError
from difflens.kernel import denoise, posterior
from difflens.models import EmpiricalDenoiser, load_denoiser

__version__ = "0.1.0"

__all__ = [
    "Dataset",
    "DifflensError",
    "EmpiricalDenoiser",
    "Parametrization",
    "__version__",
    "analysis",
    "as_dataset",
    "data",
    "denoise",
    "diffusion",
    "kernel",
    "load",
    "load_denoiser",
    "models",
    "optimal_loss_curve",
    "posterior",
    "report",
]


def __getattr__(name: str) -> ModuleType:
    """``difflens.report`` on first use (it imports matplotlib)."""
    if name == "report":
        return importlib.import_module("difflens.report")
    raise AttributeError(f"module 'difflens' has no attribute {name!r}")
