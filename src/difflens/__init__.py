"""difflens: how good is your diffusion training, measured against the empirical optimal denoiser."""

from difflens.errors import DifflensError

__version__ = "0.1.0"
__all__ = ["DifflensError", "__version__"]
