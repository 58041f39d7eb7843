"""One description of the noising process: the variance-preserving SDE.

Forward SDE (Song et al. 2021, eq. 11):  dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw,  t in [0, 1].
Marginal: x_t = alpha(t) x_0 + sigma(t) eps,  sigma = sqrt(1 - alpha^2),  log-SNR lambda = log(alpha/sigma).

A discrete DDPM chain of N steps is recast exactly (Lu et al. 2022, DPM-Solver, App. D):
index n <-> time t_n = (n+1)/N, alpha(t_n)^2 = alphas_cumprod[n], alpha(0) = 1, and log alpha(t)
is piecewise linear in t between the nodes, so beta(t) = -2 d log alpha / dt is piecewise constant.

All schedule arithmetic is float64. Methods accept a Python float (and return a float) or a tensor
(and return a float64 tensor of the same shape).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .randomness import randn
from .schedules import alphas_cumprod_of, check_betas

__all__ = ["VPSDE"]

_F64 = torch.float64


def _as_t(t):
    """(tensor float64, was_python_number)."""
    if isinstance(t, torch.Tensor):
        return t.detach().to(device="cpu", dtype=_F64), False
    return torch.as_tensor(t, dtype=_F64), True


def _out(v: torch.Tensor, scalar: bool):
    return float(v) if scalar else v


class VPSDE:
    """The variance-preserving SDE; build it with ``from_betas``, ``linear`` or ``cosine``.

    Attributes: ``kind`` ("discrete", "linear", "cosine"), ``num_train_steps`` (N or None),
    ``betas`` / ``alphas_cumprod`` (discrete only), ``zero_terminal_snr`` (alpha(1) == 0).
    """

    def __init__(self, kind: str, *, betas=None, beta_min=None, beta_max=None, s=None):
        self.kind = kind
        self.num_train_steps: Optional[int] = None
        self.betas = self.alphas_cumprod = None
        self.zero_terminal_snr = False
        if kind == "discrete":
            b = check_betas(betas, allow_one_at_end=True)
            self.betas = b
            self.alphas_cumprod = alphas_cumprod_of(b)
            if b[-1] == 1.0:
                self.alphas_cumprod[-1] = 0.0
                self.zero_terminal_snr = True
            n = b.numel()
            self.num_train_steps = n
            # nodes: t = 0, 1/N, ..., 1 ; log alpha = 0, 1/2 log alphas_cumprod[n]
            self._t_nodes = torch.arange(n + 1, dtype=_F64) / n
            self._la_nodes = torch.cat([torch.zeros(1, dtype=_F64), 0.5 * torch.log(self.alphas_cumprod)])
        elif kind == "linear":
            if not (0 < beta_min < beta_max and math.isfinite(beta_max)):
                raise ValueError(f"need 0 < beta_min < beta_max < inf, got beta_min={beta_min}, beta_max={beta_max}")
            self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        elif kind == "cosine":
            if not (0 <= s < 1):
                raise ValueError(f"cosine offset s must be in [0, 1), got {s!r}")
            self.s = float(s)
            self._theta0 = self.s / (1 + self.s) * math.pi / 2
        else:
            raise ValueError(f"unknown VPSDE kind {kind!r}; valid: 'discrete', 'linear', 'cosine'")
        self.zero_terminal_snr = bool(self.alpha(1.0) == 0.0)

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def from_betas(cls, betas) -> "VPSDE":
        """The discrete chain with these betas, recast exactly on t in [0, 1]."""
        return cls("discrete", betas=betas)

    @classmethod
    def linear(cls, beta_min: float = 0.1, beta_max: float = 20.0) -> "VPSDE":
        """Continuous linear VP-SDE, beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021)."""
        return cls("linear", beta_min=beta_min, beta_max=beta_max)

    @classmethod
    def cosine(cls, s: float = 0.008) -> "VPSDE":
        """Continuous cosine schedule, alpha(t)^2 = f(t)/f(0), f = cos^2((t+s)/(1+s) pi/2)
        (Nichol & Dhariwal 2021). alpha(1) = 0: start sampling at t < 1 (e.g. t_start=0.9946)."""
        return cls("cosine", s=s)

    @classmethod
    def from_diffusers(cls, scheduler_or_config) -> "VPSDE":
        """Build from a diffusers scheduler (or its config dict); see ``sde_diffusion.interop.diffusers_config``
        (which imports only ``schedules``: no import circle)."""
        from .interop.diffusers_config import betas_from_diffusers_config

        return cls.from_betas(betas_from_diffusers_config(scheduler_or_config))

    def __repr__(self) -> str:
        if self.kind == "discrete":
            return f"VPSDE.from_betas(N={self.num_train_steps}, beta[0]={float(self.betas[0]):.3g}, beta[-1]={float(self.betas[-1]):.3g})"
        if self.kind == "linear":
            return f"VPSDE.linear(beta_min={self.beta_min}, beta_max={self.beta_max})"
        return f"VPSDE.cosine(s={self.s})"

    # ---- the schedule -------------------------------------------------------------------
    def _check_t(self, t: torch.Tensor) -> None:
        if torch.isnan(t).any() or (t < 0).any() or (t > 1).any():
            bad = t[torch.isnan(t) | (t < 0) | (t > 1)].flatten()[0]
            raise ValueError(f"time t must lie in [0, 1], got {float(bad)!r}")

    def _segment(self, t: torch.Tensor):
        n = self.num_train_steps
        k = torch.clamp(torch.floor(t * n).long(), 0, n - 1)  # segment [k/N, (k+1)/N]
        w = t * n - k
        return k, w

    def log_alpha(self, t):
        """log alpha(t) (= 1/2 log alphas_cumprod at the grid)."""
        tt, sc = _as_t(t)
        self._check_t(tt)
        if self.kind == "linear":
            la = -0.25 * tt**2 * (self.beta_max - self.beta_min) - 0.5 * tt * self.beta_min
        elif self.kind == "cosine":
            theta = (tt + self.s) / (1 + self.s) * math.pi / 2
            la = torch.log(torch.cos(theta).clamp(min=0)) - math.log(math.cos(self._theta0))
        else:
            k, w = self._segment(tt)
            lo, hi = self._la_nodes[k], self._la_nodes[k + 1]
            la = torch.where(w == 0, lo, lo + w * (hi - lo))
            if self.zero_terminal_snr:  # last node is -inf: interpolate alpha itself linearly there
                last = k == self.num_train_steps - 1
                lin = torch.log(torch.exp(lo) * (1 - w))
                la = torch.where(last & (w > 0), lin, la)
        return _out(la, sc)

    def alpha(self, t):
        """Signal scale alpha(t) = sqrt(alphas_cumprod) at the grid points."""
        tt, sc = _as_t(t)
        return _out(torch.exp(torch.as_tensor(self.log_alpha(tt))), sc)

    def sigma(self, t):
        """Noise scale sigma(t) = sqrt(1 - alpha(t)^2), computed as sqrt(-expm1(2 log alpha))."""
        tt, sc = _as_t(t)
        la = torch.as_tensor(self.log_alpha(tt))
        return _out(torch.sqrt(-torch.expm1(2 * la)), sc)

    def log_snr(self, t):
        """Half log-SNR lambda(t) = log(alpha/sigma); +inf at t = 0."""
        tt, sc = _as_t(t)
        la = torch.as_tensor(self.log_alpha(tt))
        return _out(la - 0.5 * torch.log(-torch.expm1(2 * la)), sc)

    def sigma_ve(self, t):
        """sigma/alpha = exp(-lambda): the noise level of the equivalent variance-exploding
        process x/alpha (Karras et al. 2022's sigma)."""
        tt, sc = _as_t(t)
        return _out(torch.exp(-torch.as_tensor(self.log_snr(tt))), sc)

    def t_from_log_snr(self, lam):
        """Exact inverse of ``log_snr``: closed form for linear/cosine, piecewise for discrete."""
        ll, sc = _as_t(lam)
        if torch.isnan(ll).any():
            raise ValueError("log-SNR contains NaN")
        # log alpha = 1/2 log sigmoid(2 lambda) = -1/2 softplus(-2 lambda)
        # (torch's softplus switches to the identity above 20, an error of ~2e-9: use logaddexp)
        la = -0.5 * torch.logaddexp(torch.zeros_like(ll), -2 * ll)
        return _out(self._t_from_log_alpha(la), sc)

    def _t_from_log_alpha(self, la: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            L = -la  # solve (b1-b0)/4 t^2 + b0/2 t - L = 0 in a cancellation-free form
            b0, b1 = self.beta_min, self.beta_max
            t = 2 * L / (b0 / 2 + torch.sqrt(b0**2 / 4 + (b1 - b0) * L))
        elif self.kind == "cosine":
            c = torch.exp(la) * math.cos(self._theta0)
            t = torch.acos(c.clamp(-1, 1)) * 2 * (1 + self.s) / math.pi - self.s
        else:
            nodes = self._la_nodes  # strictly decreasing, from 0 to log alpha(1)
            neg = -nodes
            k = torch.searchsorted(neg.contiguous(), (-la).contiguous(), right=True) - 1
            k = k.clamp(0, self.num_train_steps - 1)
            lo, hi = nodes[k], nodes[k + 1]
            if self.zero_terminal_snr:
                last = k == self.num_train_steps - 1
                hi = torch.where(last, torch.full_like(hi, -1e300), hi)
                w_last = 1 - torch.exp(la - lo)
            w = (la - lo) / (hi - lo)
            if self.zero_terminal_snr:
                w = torch.where(last, w_last, w)
            t = (k + w.clamp(0, 1)) / self.num_train_steps
        return t.clamp(0, 1)

    def beta(self, t):
        """beta(t) = -2 d log alpha / dt (right derivative at the nodes of a discrete chain)."""
        tt, sc = _as_t(t)
        self._check_t(tt)
        if self.kind == "linear":
            b = self.beta_min + tt * (self.beta_max - self.beta_min)
        elif self.kind == "cosine":
            theta = (tt + self.s) / (1 + self.s) * math.pi / 2
            b = math.pi / (1 + self.s) * torch.tan(theta)
        else:
            n = self.num_train_steps
            k, w = self._segment(tt)
            slope = (self._la_nodes[k + 1] - self._la_nodes[k]) * n
            b = -2 * slope
            if self.zero_terminal_snr:
                last = k == n - 1
                b = torch.where(last, 2 * n / (1 - w).clamp(min=1e-300), b)
        return _out(b, sc)

    # ---- the SDE ------------------------------------------------------------------------
    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        """f(x, t) = -1/2 beta(t) x."""
        return -0.5 * _bcast(self.beta(_as_t(t)[0]), x) * x

    def diffusion(self, t):
        """g(t) = sqrt(beta(t))."""
        tt, sc = _as_t(t)
        return _out(torch.sqrt(torch.as_tensor(self.beta(tt))), sc)

    def marginal(self, x0: torch.Tensor, t, noise: Optional[torch.Tensor] = None, generator=None) -> torch.Tensor:
        """Sample x_t = alpha(t) x0 + sigma(t) noise (Ho et al. 2020, eq. 4). ``t`` is a float or a
        tensor of shape (B,) with one time per sample."""
        if noise is None:
            noise = randn(x0.shape, generator, dtype=x0.dtype, device=x0.device)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
        tt = _as_t(t)[0]
        return _bcast(self.alpha(tt), x0) * x0 + _bcast(self.sigma(tt), x0) * noise

    def prior_sample(self, shape, generator=None, dtype=torch.float32, device=None) -> torch.Tensor:
        """x_T ~ N(0, I), the prior at t = 1 (per-sample generators allowed)."""
        return randn(tuple(shape), generator, dtype=dtype, device=device)

    # ---- index <-> time -----------------------------------------------------------------
    def _need_discrete(self, what: str) -> int:
        if self.num_train_steps is None:
            raise ValueError(f"{what} needs a discrete VPSDE (from_betas); this one is {self!r}")
        return self.num_train_steps

    def timestep_of(self, t):
        """Discrete index n = t N - 1 (fractional between grid points; -1 at t = 0)."""
        n = self._need_discrete("timestep_of")
        tt, sc = _as_t(t)
        idx = tt * n - 1
        r = torch.round(idx)
        idx = torch.where((idx - r).abs() < 1e-9, r, idx)
        return _out(idx, sc)

    def t_of_timestep(self, timestep):
        """t_n = (n + 1) / N."""
        n = self._need_discrete("t_of_timestep")
        tt, sc = _as_t(timestep)
        if (tt < -1).any() or (tt > n - 1).any():
            raise ValueError(f"timestep must lie in [-1, {n - 1}], got {tt.flatten()[((tt < -1) | (tt > n - 1)).flatten()][0].item()}")
        return _out((tt + 1) / n, sc)


def _bcast(v, x: torch.Tensor) -> torch.Tensor:
    """A float or a (B,) float64 tensor as a tensor broadcastable against x, in x's dtype/device."""
    v = torch.as_tensor(v, dtype=_F64)
    if v.ndim == 1 and x.ndim > 1:
        v = v.reshape(-1, *([1] * (x.ndim - 1)))
    return v.to(device=x.device, dtype=x.dtype)
