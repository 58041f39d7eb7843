"""sde_diffusion: samplers for diffusion models on one VP-SDE description of the DDPM chain."""

from .schedules import cosine_betas, linear_betas, rescale_zero_terminal_snr, scaled_linear_betas
from .sde import VPSDE
from .model import NoisePredictor
from .grids import time_grid

__version__ = "0.1.0"

__all__ = [
    "linear_betas", "scaled_linear_betas", "cosine_betas", "rescale_zero_terminal_snr",
    "VPSDE", "NoisePredictor", "time_grid",
]
