"""Network architectures usable as ``net(x, timesteps)`` inside a ``NoisePredictor``."""

from .unet import UNet

__all__ = ["UNet"]
