"""``resolve_model(spec)``: the one place that turns a model spec into a ``NoisePredictor``, used by
every command (``sample``, ``nll``, ``bench``) and the benchmark.

    spec                                  what it loads
    "digits" (a shipped name)             sde_diffusion/assets/<name> (``checkpoints.load_model``)
    a model folder / its config.json /    this project's safetensors + JSON format (``checkpoints.load_model``)
      its model.safetensors
    a diffusers pipeline folder           ``interop.diffusers.load_diffusers_folder`` (unet/ + scheduler/)
    "module:attr", "file.py:attr"         ``interop.callables.load_callable``
    "gmm"                                 the analytic 8-component ring mixture (exact eps; ``gmm_ring``)
    a NoisePredictor                      itself
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from .model import NoisePredictor

__all__ = ["resolve_model", "gmm_ring"]


def gmm_ring():
    """The analytic benchmark model: 8 well-separated 2-D Gaussians (std 0.08, weights 2,1,1,1,2,1,1,1)
    on a ring of radius 0.8, through the DDPM linear chain (1000 steps). Returns (mixture, predictor)."""
    from .analytic import GaussianMixture
    from .schedules import linear_betas
    from .sde import VPSDE

    K = 8
    ang = torch.arange(K, dtype=torch.float64) * 2 * math.pi / K
    means = 0.8 * torch.stack([ang.cos(), ang.sin()], 1)
    w = torch.tensor([2.0, 1, 1, 1, 2, 1, 1, 1], dtype=torch.float64)
    gm = GaussianMixture(means, 0.08, w / w.sum())
    return gm, gm.predictor(VPSDE.from_betas(linear_betas(1000)))


def resolve_model(spec, device="cpu") -> NoisePredictor:
    """A ready ``NoisePredictor`` from ``spec`` (see the module docstring), its net on ``device``
    where the loader places it (folders) or where it is an ``nn.Module`` (``module:attr``)."""
    from .interop.callables import is_callable_spec, load_callable

    if isinstance(spec, NoisePredictor):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"model spec must be a name, a path, 'module:attribute' or 'gmm', got {type(spec).__name__}")
    if isinstance(spec, str) and spec == "gmm" and not Path(spec).exists():
        return gmm_ring()[1]
    if is_callable_spec(spec):
        pred = load_callable(spec)
        if isinstance(pred.net, torch.nn.Module):
            pred.net.to(device)
        return pred
    from .checkpoints import load_model

    return load_model(spec, device=device)
