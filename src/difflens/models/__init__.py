"""Models as VE-form denoisers: the protocol, adapters, preconditioning, tiny nets and loading."""

from difflens.diffusion.precond import DiscreteVP, Parametrization
from difflens.kernel.oracle import as_sigma
from difflens.models.adapters import Denoiser, DenoiserAsNet, NetDenoiser, OracleDenoiser, denoise_batched
from difflens.models.load import LoadedModel, diffusers_denoiser, load_checkpoint, load_denoiser

__all__ = [
    "Denoiser",
    "DenoiserAsNet",
    "DiscreteVP",
    "LoadedModel",
    "NetDenoiser",
    "OracleDenoiser",
    "Parametrization",
    "as_sigma",
    "denoise_batched",
    "diffusers_denoiser",
    "load_checkpoint",
    "load_denoiser",
]
