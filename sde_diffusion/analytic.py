"""Analytic data with exact answers: a Gaussian mixture whose noise prediction is closed form.

Under the VP marginal x_t = alpha x0 + sigma z, component k of the data N(mu_k, C_k) becomes
N(alpha mu_k, alpha^2 C_k + sigma^2 I), so the exact score is the responsibility-weighted sum of
Gaussian scores and eps(x, t) = -sigma * score. For one Gaussian the probability-flow ODE
(Song et al. 2021, eq. 13) is linear and its flow map is exact:
    x_t - alpha_t mu = (alpha_t^2 C + sigma_t^2 I)^{1/2} (alpha_s^2 C + sigma_s^2 I)^{-1/2} (x_s - alpha_s mu).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .model import NoisePredictor
from .sde import VPSDE

__all__ = ["GaussianMixture"]

_F64 = torch.float64


class GaussianMixture:
    """Mixture of K Gaussians in D dimensions, ``data_shape`` = (D,) or any shape with D elements.

    ``stds_or_covs``: a scalar (shared isotropic std), K stds, K x D per-dimension stds, or
    K x D x D covariance matrices. ``weights`` default to uniform.
    """

    def __init__(self, means, stds_or_covs=1.0, weights=None, data_shape: Optional[tuple] = None):
        mu = torch.as_tensor(means, dtype=_F64)
        if mu.ndim == 1:
            mu = mu[None]
        if mu.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(mu.shape)}")
        K, D = mu.shape
        c = torch.as_tensor(stds_or_covs, dtype=_F64)
        eye = torch.eye(D, dtype=_F64)
        if c.ndim == 0:
            cov = (c**2 * eye).expand(K, D, D).clone()
        elif c.ndim == 1 and c.numel() == K:
            cov = c[:, None, None] ** 2 * eye
        elif c.ndim == 2 and c.shape == (K, D):
            cov = torch.diag_embed(c**2)
        elif c.ndim == 2 and c.shape == (D, D) and K == 1:
            cov = c[None].clone()
        elif c.ndim == 3 and c.shape == (K, D, D):
            cov = c.clone()
        else:
            raise ValueError(f"stds_or_covs must be a scalar, (K,), (K, D) stds or (K, D, D) covariances; got {tuple(c.shape)} for K={K}, D={D}")
        if not torch.allclose(cov, cov.transpose(1, 2)):
            raise ValueError("covariances must be symmetric")
        evals, evecs = torch.linalg.eigh(cov)
        if (evals < 0).any():
            raise ValueError("covariances must be positive semi-definite")
        w = torch.full((K,), 1.0 / K, dtype=_F64) if weights is None else torch.as_tensor(weights, dtype=_F64)
        if w.shape != (K,) or (w < 0).any() or abs(float(w.sum()) - 1) > 1e-9:
            raise ValueError(f"weights must be K={K} non-negative numbers summing to 1")
        self.means, self.covs, self.weights = mu, cov, w
        self._evals, self._evecs = evals.clamp(min=0), evecs
        self._on_device = {}  # float64 copies of the parameters per device of the inputs
        self.K, self.D = K, D
        self.data_shape = tuple(data_shape) if data_shape is not None else (D,)
        if math.prod(self.data_shape) != D:
            raise ValueError(f"data_shape {self.data_shape} does not have D={D} elements")

    # ---- densities ----------------------------------------------------------------------
    def _params(self, device):
        """(means, eigenvalues, eigenvectors, weights) on ``device`` (float64; the input's device, so
        every method runs where its input lives; copies cached per device)."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.means, self._evals, self._evecs, self.weights
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = tuple(v.to(device) for v in (self.means, self._evals, self._evecs, self.weights))
        return self._on_device[key]

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.data_shape))}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.D).to(_F64)

    def _log_comp_and_score(self, y: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor):
        """log N_k(y) (B, K) and score_k(y) (B, K, D) of the noised components, whose covariances
        alpha^2 C_k + sigma^2 I share C_k's eigenvectors (eigenvalues alpha^2 l + sigma^2)."""
        means, evals, evecs, _ = self._params(y.device)
        lam = alpha[:, None, None] ** 2 * evals[None] + sigma[:, None, None] ** 2  # (B, K, D)
        d = y[:, None, :] - alpha[:, None, None] * means[None]  # (B, K, D)
        dr = torch.einsum("bkd,kde->bke", d, evecs)  # rotate into eigenbases
        logn = -0.5 * ((dr**2 / lam).sum(-1) + torch.log(lam).sum(-1) + self.D * math.log(2 * math.pi))
        score = -torch.einsum("bke,kde->bkd", dr / lam, evecs)
        return logn, score

    def log_prob(self, x: torch.Tensor, sde: Optional[VPSDE] = None, t=0.0) -> torch.Tensor:
        """log p(x) of the data (t = 0) or of the noised marginal p_t under ``sde``; float64 (B,)."""
        y = self._flat(x)
        a, s = self._alpha_sigma(y, sde, t)
        logn, _ = self._log_comp_and_score(y, a, s)
        return torch.logsumexp(logn + torch.log(self._params(y.device)[3])[None], dim=1)

    def _alpha_sigma(self, y, sde, t):
        B = y.shape[0]
        if sde is None:
            if torch.as_tensor(t).abs().max() != 0:
                raise ValueError("pass the sde to evaluate at t > 0")
            return torch.ones(B, dtype=_F64, device=y.device), torch.zeros(B, dtype=_F64, device=y.device)
        tt = torch.as_tensor(t, dtype=_F64).expand(B) if torch.as_tensor(t).ndim == 0 else torch.as_tensor(t, dtype=_F64)
        return (torch.as_tensor(sde.alpha(tt)).reshape(B).to(y.device),
                torch.as_tensor(sde.sigma(tt)).reshape(B).to(y.device))

    def score(self, x: torch.Tensor, t, sde: VPSDE) -> torch.Tensor:
        """Exact score of p_t at x (float64, shaped like x)."""
        y = self._flat(x)
        a, s = self._alpha_sigma(y, sde, t)
        logn, sc = self._log_comp_and_score(y, a, s)
        r = torch.softmax(logn + torch.log(self._params(y.device)[3])[None], dim=1)  # responsibilities
        return (r[..., None] * sc).sum(1).reshape(x.shape)

    def eps(self, x: torch.Tensor, t, sde: VPSDE) -> torch.Tensor:
        """Exact noise prediction E[eps | x_t = x] = -sigma(t) score (float64)."""
        y = self._flat(x)
        _, s = self._alpha_sigma(y, sde, t)
        return -s.reshape(-1, *([1] * (x.ndim - 1))) * self.score(x, t, sde)

    def predictor(self, sde: VPSDE) -> NoisePredictor:
        """A ``NoisePredictor`` whose net is this mixture's exact eps (float64 times and maths)."""

        def net(x, t):
            return self.eps(x, t, sde).to(x.dtype)

        return NoisePredictor(net, sde, "epsilon", time_input=lambda t: t, timestep_dtype=_F64,
                              sample_shape=self.data_shape)

    def sample(self, n: int, generator=None) -> torch.Tensor:
        """n samples (float64) from the mixture."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.D, dtype=_F64, generator=generator)
        root = self._evecs * self._evals.sqrt()[:, None, :]  # C_k^{1/2} factor: U diag(sqrt(l))
        x = self.means[k] + torch.einsum("bde,be->bd", root[k], z)
        return x.reshape(n, *self.data_shape)

    # ---- exact probability flow (one Gaussian) ------------------------------------------
    def flow_map(self, x: torch.Tensor, s: float, t: float, sde: VPSDE) -> torch.Tensor:
        """Exact probability-flow map from time s to time t (single Gaussian only)."""
        if self.K != 1:
            raise ValueError("the exact probability-flow map is closed form only for a single Gaussian (K = 1)")
        y = self._flat(x)
        a_s, s_s, a_t, s_t = (float(v) for v in (sde.alpha(s), sde.sigma(s), sde.alpha(t), sde.sigma(t)))
        means, evals, evecs, _ = self._params(y.device)
        lam, U, mu = evals[0], evecs[0], means[0]
        ratio = torch.sqrt((a_t**2 * lam + s_t**2) / (a_s**2 * lam + s_s**2))
        d = (y - a_s * mu) @ U
        out = a_t * mu + (d * ratio) @ U.T
        return out.reshape(x.shape).to(x.dtype)
