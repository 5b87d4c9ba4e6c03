"""Models as VE-form denoisers: the one ``Denoiser`` protocol, adapters, the kernel as a denoiser,
preconditioning, tiny nets, loading and the reference trainer."""

from difflens.diffusion.denoiser import Denoiser
from difflens.diffusion.precond import Coefficients, DiscreteVP, Parametrization
from difflens.kernel.oracle import as_sigma
from difflens.models.adapters import DenoiserAsNet, NetDenoiser, denoise_batched
from difflens.models.empirical import EmpiricalDenoiser
from difflens.models.load import LoadedModel, diffusers_denoiser, load_checkpoint, load_denoiser
from difflens.models.nets import count_params

__all__ = [
    "Coefficients",
    "Denoiser",
    "DenoiserAsNet",
    "DiscreteVP",
    "EmpiricalDenoiser",
    "LoadedModel",
    "NetDenoiser",
    "Parametrization",
    "as_sigma",
    "count_params",
    "denoise_batched",
    "diffusers_denoiser",
    "load_checkpoint",
    "load_denoiser",
]
