"""sde_diffusion: samplers for diffusion models on one VP-SDE description of the DDPM chain.

The core (schedules, VPSDE, NoisePredictor, time grids, sample) is imported eagerly; the heavier
parts (U-Net, training, checkpoints, likelihood, metrics) load on first access (PEP 562), so
``import sde_diffusion`` stays fast.
"""

from importlib import import_module

from .schedules import cosine_betas, linear_betas, rescale_zero_terminal_snr, scaled_linear_betas
from .sde import VPSDE
from .model import NoisePredictor
from .grids import time_grid
from .sampling import SampleResult, SolverError, sample
from .solvers import SOLVERS
from .analytic import GaussianMixture

__version__ = "0.1.0"

# public name -> module that defines it (loaded on first access)
_LAZY = {
    "UNet": "sde_diffusion.nets.unet",
    "train": "sde_diffusion.train",
    "load_model": "sde_diffusion.checkpoints",
    "log_likelihood": "sde_diffusion.likelihood",
    "metrics": "sde_diffusion.metrics",
}

__all__ = [
    "linear_betas", "scaled_linear_betas", "cosine_betas", "rescale_zero_terminal_snr",
    "VPSDE", "NoisePredictor", "time_grid", "sample", "SampleResult", "SolverError", "SOLVERS",
    "GaussianMixture", *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        mod = import_module(_LAZY[name])
        value = mod if name == "metrics" else getattr(mod, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sde_diffusion' has no attribute {name!r}")
