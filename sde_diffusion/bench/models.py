"""What the benchmark samples from: a predictor plus what is needed to score its samples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..model import NoisePredictor

__all__ = ["BenchModel", "gmm_benchmark", "load_bench_model", "mixture_moments"]


@dataclass
class BenchModel:
    """A predictor plus its scoring data. ``ident`` keys caches and run folders: it changes when
    the weights change. ``num_classes``: a class-conditional model (labels 0..num_classes-1)."""
    name: str
    predictor: NoisePredictor
    ident: str
    dtype: torch.dtype = torch.float32
    mixture: object = None  # GaussianMixture for the analytic tier
    real: Optional[torch.Tensor] = None  # reference set (digits test split / exact mixture draws)
    floor: Optional[torch.Tensor] = None  # a real set disjoint from ``real`` for the floor row
    digits: bool = False
    num_classes: Optional[int] = None

    @property
    def shape(self) -> tuple:
        return tuple(self.predictor.sample_shape)


def gmm_benchmark() -> tuple:
    """The analytic tier: ``sde_diffusion.resolve.gmm_ring`` (8 well-separated 2-D Gaussians on a ring,
    DDPM linear chain). Returns (mixture, predictor)."""
    from ..resolve import gmm_ring

    return gmm_ring()


def _num_classes(pred: NoisePredictor) -> Optional[int]:
    spec = (getattr(pred, "conditioning", None) or {}).get("class_labels")
    if isinstance(spec, dict) and spec.get("num_classes"):
        return int(spec["num_classes"])
    return None


def load_bench_model(spec, device="cpu") -> BenchModel:
    """``"gmm"`` (analytic tier), ``"digits"`` (the shipped U-Net), ``"digits-cond"`` or a model folder."""
    if isinstance(spec, BenchModel):
        return spec
    if spec == "gmm":
        gm, pred = gmm_benchmark()
        g = torch.Generator().manual_seed(12345)
        real = gm.sample(10000, generator=g)
        floor = gm.sample(10000, generator=g)
        return BenchModel("gmm", pred, "gmm-ring8-v1", torch.float64, mixture=gm, real=real, floor=floor)
    from ..checkpoints import load_model

    pred = load_model(spec, device=device)
    sha = ((getattr(pred, "config", None) or {}).get("weights") or {}).get("sha256", "") or str(spec)
    ident = f"{Path(str(spec)).name}-{sha[:16]}"
    if tuple(pred.sample_shape) == (1, 8, 8):
        from ..data import load_digits

        return BenchModel(str(spec), pred, ident, real=load_digits("test"), floor=load_digits("train"), digits=True,
                          num_classes=_num_classes(pred))
    return BenchModel(str(spec), pred, ident, num_classes=_num_classes(pred))


def mixture_moments(gm) -> tuple:
    """(mean, covariance) of a Gaussian mixture: sum_k w_k (Sigma_k + (mu_k - m)(mu_k - m)^T)."""
    w = gm.weights.cpu().numpy()
    mu = gm.means.cpu().numpy()
    m = w @ mu
    cov = sum(w[k] * (gm.covs[k].cpu().numpy() + np.outer(mu[k] - m, mu[k] - m)) for k in range(gm.K))
    return m, cov
