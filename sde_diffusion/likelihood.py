"""Exact likelihood through the probability-flow ODE, and the DDPM variational bound, in bits/dim.

ODE likelihood (Chen et al. 2018, "Neural ODEs", Thm. 1; Song et al. 2021, Score SDE, App. D.2).
The probability-flow ODE (Song et al. 2021, eq. 13) of the VP-SDE is
    dx/dt = f(x, t) = -1/2 beta(t) (x - eps(x, t) / sigma(t)),
and the instantaneous change of variables gives d log p_t(x(t)) / dt = -div f(x(t), t). Solving
from the data x(t_end) = x (t_end ~ 0) forwards to the noise x(1) = z gives
    log p_{t_end}(x) = log N(z; 0, I) + int_{t_end}^1 div f(x(t), t) dt      (prior_logp + delta_logp).
div f = -1/2 beta (D - div eps / sigma) is computed exactly (one vector-Jacobian product per
dimension) or by Hutchinson's estimator E_v[v^T (df/dx) v] (Hutchinson 1989; Grathwohl et al.
2019, FFJORD) with probes drawn ONCE per solve, so the integrand is one smooth function of t.
The ODE, its divergence and the solvers are ``pf_ode.py``'s (shared with the ``ode``/``scipy``
samplers); ``variable="lambda"`` (default) integrates in log-SNR lambda instead of t, where
log p_{t_end}(x) = log N(z; 0, I) + int_{lambda(t_end)}^{lambda(1)} div (dx/dlambda) dlambda
(the same density; far fewer steps, docs/likelihood.md).

Units. ``log_prob`` is in nats per sample: the continuous density at the point evaluated (x, or
the dequantized x). ``bpd`` = -log_prob / (D ln 2) + offset, in bits per dimension:
  dequantize=None        offset 0: bits/dim of the continuous density (can be negative);
  dequantize="uniform"   score_sde's convention: levels k = 0..K-1 (x = 2k/(K-1) - 1), evaluated
                         at (k + u)/K * 2 - 1, u ~ U[0, 1)^D: bins of width 2/K tiling [-1, 1);
                         offset = -log2(2/K) = log2(K/2) (= 7 for K = 256, Song et al. 2021);
  dequantize="centered"  x + (u - 1/2) * 2/(K-1): bins of one level spacing centred on the levels
                         the model was trained on (the bins of DDPM's discretized decoder, Ho et al.
                         2020, eq. 13); offset = log2((K-1)/2) (= 3 for the 17-level digits).
Either way, by Jensen, E_u[bpd] >= -log2 P(k)/D for the discrete model P(k) = int_bin p
(Theis et al. 2016; Ho et al. 2019, Flow++, eq. 8): the dequantized bpd bounds the discrete NLL.

ELBO (Ho et al. 2020, eq. 5): L = L_T + sum_{t=2}^T L_{t-1} + L_0 for the discrete chain of a
discrete VPSDE, in ``elbo_bpd``. Index n = 0..N-1 here is Ho's t = n + 1.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from . import pf_ode
from .model import NoisePredictor
from .randomness import rand, randn
from .validation import choice, finite_float, positive_int

__all__ = ["log_likelihood", "LikelihoodResult", "elbo_bpd", "ElboResult", "TRACES", "NOISES",
           "DEQUANTIZE", "DECODERS", "VARIANCES", "dequantize_offset"]

TRACES = ("exact", "hutchinson")
NOISES = ("rademacher", "gaussian")
DEQUANTIZE = (None, "uniform", "centered")
DECODERS = ("discrete", "gaussian")
VARIANCES = ("small", "large")
_F64 = torch.float64
_LN2 = math.log(2.0)


@dataclass
class LikelihoodResult:
    log_prob: torch.Tensor  # (B,) float64, nats: log density at ``x`` (= prior_logp + delta_logp)
    bpd: torch.Tensor  # (B,) float64, bits/dim (discrete data when dequantizing; see module doc)
    nfe: int  # network calls (one batched forward per ODE function evaluation)
    prior_logp: torch.Tensor  # (B,) log N(z; 0, I) at the end point z = x(1)
    delta_logp: torch.Tensor  # (B,) int_{t_end}^1 div f dt
    x: torch.Tensor  # the points whose density was evaluated (dequantized x), shaped like the input
    z: torch.Tensor  # their image x(1) under the flow
    info: dict = field(default_factory=dict)  # method, trace, probes, offset, t_end, time_s, ...


@dataclass
class ElboResult:
    elbo: torch.Tensor  # (B,) float64 nats, lower bound on log p(x) (a probability for decoder="discrete")
    bpd: torch.Tensor  # (B,) -elbo / (D ln 2): an upper bound on the NLL in bits/dim
    prior: torch.Tensor  # (B,) L_T in nats
    diffusion: torch.Tensor  # (B,) sum_{t=2}^T L_{t-1} in nats (estimated if num_timesteps < N - 1)
    decoder: torch.Tensor  # (B,) L_0 = -log p(x_0 | x_1) in nats
    nfe: int
    info: dict = field(default_factory=dict)


# ---- small helpers ----------------------------------------------------------------------------
def dequantize_offset(dequantize: Optional[str], num_bins: int) -> float:
    """bits/dim added to -log p / (D ln 2): -log2(bin width) for data in [-1, 1] (module doc)."""
    if dequantize is None:
        return 0.0
    if dequantize == "uniform":
        return math.log2(num_bins / 2)
    if dequantize == "centered":
        return math.log2((num_bins - 1) / 2)
    raise ValueError(f"unknown dequantize {dequantize!r}; valid: None, 'uniform', 'centered'")


def _rand(shape, generator, dtype=_F64) -> torch.Tensor:
    """U[0, 1) noise; ``generator`` is None, one generator or one per sample (batch-invariant)."""
    return rand(shape, generator, dtype=dtype)


def _randn(shape, generator, dtype=_F64) -> torch.Tensor:
    """N(0, 1) noise; ``generator`` as in ``_rand``."""
    return randn(shape, generator, dtype=dtype)


def _levels(x: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Integer levels k of x = 2k/(K-1) - 1; raises if x is off that grid."""
    positive_int("num_bins", num_bins, low=2)
    xf = x.to(_F64)
    if (xf < -1 - 1e-6).any() or (xf > 1 + 1e-6).any():
        raise ValueError(f"to dequantize, x must lie in [-1, 1]; got range [{float(xf.min()):.4g}, {float(xf.max()):.4g}]"
                         " (scale the data or pass dequantize=None)")
    k = torch.round((xf + 1) / 2 * (num_bins - 1))
    err = ((xf + 1) / 2 * (num_bins - 1) - k).abs().max()
    if err > 1e-3:
        raise ValueError(f"x is not on the grid of num_bins={num_bins} levels 2k/{num_bins - 1} - 1 "
                         f"(off by {float(err):.3g} levels); pass the right num_bins or dequantize=None")
    return k


def _check_x(model: NoisePredictor, x) -> torch.Tensor:
    if not isinstance(model, NoisePredictor):
        raise ValueError(f"model must be a NoisePredictor, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x) or x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a floating-point tensor of shape (B, ...) with B >= 1, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if model.sample_shape is not None and tuple(x.shape[1:]) != tuple(model.sample_shape):
        raise ValueError(f"x must have shape (B, {', '.join(map(str, model.sample_shape))}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf")
    return x


def _std_normal_logp(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) per sample (B,) of a (B, D) tensor."""
    return -0.5 * (z.shape[1] * math.log(2 * math.pi) + (z**2).sum(1))


def log_likelihood(model: NoisePredictor, x: torch.Tensor, *, method: str = "dopri5", rtol: float = 1e-5,
                   atol: float = 1e-5, t_end: float = 1e-5, trace: str = "hutchinson", probes: int = 1,
                   noise: str = "rademacher", dequantize: Optional[str] = "uniform", num_bins: int = 256,
                   generator=None, options: Optional[dict] = None, variable: str = "lambda") -> LikelihoodResult:
    """log p(x) by the probability-flow ODE, integrated from data (t_end) to noise (t = 1).

    ``method``: a torchdiffeq method ("dopri5", "rk4" with options={"step_size": h}, ...) or
    "scipy:RK45" etc. (scipy.integrate.solve_ivp); ``pf_ode.methods(divergence=True)`` lists them.
    ``variable``: "lambda" (log-SNR, default) or "t" (score_sde's form), see ``pf_ode.py``;
    lambda needs alpha(1) > 0 (not for zero-terminal-SNR or cosine schedules: use "t"). ``trace``: "exact" (D vector-Jacobian products
    per evaluation) or "hutchinson" (``probes`` probes of ``noise`` "rademacher"/"gaussian", fixed
    for the solve, averaged). ``dequantize``: None (density of x as given), "uniform" or
    "centered" with ``num_bins`` levels in [-1, 1] (module doc: units and offsets). ``generator``:
    None, a torch.Generator, or one per sample (then a sample's noise does not depend on its
    batch-mates; adaptive step sizes still do); dequantization noise is drawn before the probes. The result holds log p_{t_end} of the
    evaluated point: p_{t_end} is the data convolved with N(0, sigma(t_end)^2) and scaled by
    alpha(t_end), a negligible difference for t_end = 1e-5 unless the data are discrete and not
    dequantized. The ODE state is float64 on the CPU; the net runs in x's dtype on x's device;
    results (log_prob, bpd, ...) are float64 CPU tensors.
    """
    x = _check_x(model, x)
    choice("trace", trace, TRACES)
    choice("noise", noise, NOISES)
    positive_int("probes", probes)
    if dequantize not in DEQUANTIZE:
        raise ValueError(f"unknown dequantize {dequantize!r}; valid: None, 'uniform', 'centered'")
    finite_float("t_end", t_end, 0.0, strict=True, high=1.0)
    if t_end == 1.0:
        raise ValueError(f"t_end must lie in (0, 1), got {t_end!r}")
    finite_float("rtol", rtol, 0.0, strict=True)
    finite_float("atol", atol, 0.0, strict=True)
    pf_ode.check_method(method, divergence=True)
    choice("variable", variable, pf_ode.VARIABLES)

    B = x.shape[0]
    D = x[0].numel()
    xf = x.detach().to(device="cpu", dtype=_F64).reshape(B, D)
    # 1. dequantize (score_sde's (k + u)/K, or centred on the levels)
    if dequantize is not None:
        k = _levels(xf, num_bins)
        u = _rand((B, D), generator)
        if dequantize == "uniform":
            xf = (k + u) / num_bins * 2 - 1
        else:
            xf = xf + (u - 0.5) * (2.0 / (num_bins - 1))
    offset = dequantize_offset(dequantize, num_bins) if dequantize is not None else 0.0
    # 2. probes, drawn once and fixed for the whole solve
    v = None
    if trace == "hutchinson":
        if isinstance(generator, (list, tuple)):
            raw = _randn((B, probes, D), generator) if noise == "gaussian" else _rand((B, probes, D), generator)
            raw = raw.transpose(0, 1).contiguous()
        else:
            raw = _randn((probes, B, D), generator) if noise == "gaussian" else _rand((probes, B, D), generator)
        v = raw if noise == "gaussian" else torch.where(raw < 0.5, -1.0, 1.0).to(_F64)
    # 3. solve data -> noise (the flat float64 CPU state; the net in x's dtype on x's device)
    f = pf_ode.ProbabilityFlow(model, float(t_end), 1.0, variable, divergence=trace, probes=v,
                               net_shape=tuple(x.shape), net_dtype=x.dtype, net_device=x.device)
    nfe0, t0 = model.nfe, time.perf_counter()
    state0 = (xf, torch.zeros(B, dtype=_F64))
    ((z, delta),), extra = pf_ode.solve(f, state0, [f.u_start, f.u_end], method, rtol, atol, options)
    dyn = f
    prior = _std_normal_logp(z)
    logp = prior + delta
    bpd = -logp / (D * _LN2) + offset
    info = dict(method=method, rtol=rtol, atol=atol, t_end=t_end, trace=trace, probes=probes if v is not None else 0,
                noise=noise if v is not None else None, dequantize=dequantize, num_bins=num_bins, offset=offset,
                variable=variable, evals=dyn.evals, time_s=time.perf_counter() - t0, **extra)
    return LikelihoodResult(log_prob=logp, bpd=bpd, nfe=model.nfe - nfe0, prior_logp=prior, delta_logp=delta,
                            x=xf.reshape(x.shape).to(x.dtype), z=z.reshape(x.shape), info=info)


# ---- the DDPM variational bound --------------------------------------------------------------
def _log_prob_between(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for lo < hi, stable in both tails (lo = -inf / hi = +inf allowed)."""
    flip = lo > 0  # Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi): keep both CDFs in the small tail
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    lb, la = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return lb + torch.log((-torch.expm1((la - lb).clamp(max=0))).clamp(min=1e-300))


def elbo_bpd(model: NoisePredictor, x: torch.Tensor, *, num_timesteps: Optional[int] = None,
             decoder: str = "discrete", num_bins: int = 256, variance: str = "small",
             generator=None) -> ElboResult:
    """The DDPM variational bound (Ho et al. 2020, eq. 5) of a discrete VPSDE model, in bits/dim.

    L_T = KL(q(x_N | x_0) || N(0, I));  L_{n-1} = KL(q(x_{n-1} | x_n, x_0) || p(x_{n-1} | x_n)) with
    the posterior (eqs. 6-7) and the model's mean from its x0 prediction, variance beta~_n
    (``variance="small"``) or beta_n ("large");  L_0 = -log p(x_0 | x_1): ``decoder="discrete"``
    is Ho's discretized Gaussian (eq. 13) over ``num_bins`` levels of [-1, 1] (bins of half-width
    1/(K-1), open at +-1; bpd is then of the discrete data), ``"gaussian"`` the continuous density
    (bpd of the continuous density, comparable with ``log_likelihood(dequantize=None)``). The
    decoder variance is beta~ of step 2 for both choices (Ho et al.'s released code).
    Each KL is a one-sample estimate (one x_n ~ q(x_n | x_0) per term). ``num_timesteps``: None
    sums all N - 1 terms (N - 1 NFE + 1 for L_0); K < N - 1 splits steps 2..N into K contiguous
    strata and uses one uniformly drawn step per stratum and sample, weighted by the stratum size:
    an unbiased stratified estimate of the sum (K + 1 NFE).
    """
    x = _check_x(model, x)
    sde = model.sde
    N = sde._need_discrete("elbo_bpd")
    choice("decoder", decoder, DECODERS)
    choice("variance", variance, VARIANCES)
    if N < 2:
        raise ValueError("elbo_bpd needs a chain of at least 2 steps")
    if num_timesteps is not None and (positive_int("num_timesteps", num_timesteps) > N - 1):
        raise ValueError(f"num_timesteps must be None or an integer in [1, {N - 1}], got {num_timesteps!r}")
    if decoder == "discrete":
        _levels(x, num_bins)
    if sde.zero_terminal_snr:
        raise ValueError("elbo_bpd needs alphas_cumprod[-1] > 0 (L_T is infinite at zero terminal SNR)")
    B, D = x.shape[0], x[0].numel()
    x0 = x.detach().to(device="cpu", dtype=_F64).reshape(B, D)  # the float64 maths stays on the CPU
    ab, betas = sde.alphas_cumprod, sde.betas  # float64
    ab_prev = torch.cat([torch.ones(1, dtype=_F64), ab[:-1]])
    post_var = betas * (1 - ab_prev) / (1 - ab)  # beta~_n (Ho et al. 2020, eq. 7); 0 at n = 0
    nfe0 = model.nfe

    def x0_pred(n: torch.Tensor):
        """(x_n, x0_theta(x_n)) with x_n ~ q(x_n | x_0), one NFE; n is (B,) int64."""
        a = ab[n].sqrt()[:, None]
        s = (1 - ab[n]).sqrt()[:, None]
        xn = a * x0 + s * _randn((B, D), generator)
        with torch.no_grad():
            x0_hat = model.x0(xn.to(device=x.device, dtype=x.dtype).reshape(x.shape), (n.to(_F64) + 1) / N)
        return x0_hat.to(device="cpu", dtype=_F64).reshape(B, D)

    # L_T: closed-form KL between N(sqrt(ab) x0, (1 - ab) I) and N(0, I)
    aT = float(ab[-1])
    prior = 0.5 * (aT * (x0**2).sum(1) - D * aT - D * math.log1p(-aT))

    # sum_{n=1}^{N-1} L_{n-1}: all terms, or one stratified draw per stratum
    if num_timesteps is None or num_timesteps == N - 1:
        strata = [torch.full((B,), n, dtype=torch.long) for n in range(1, N)]
        weights = [1.0] * (N - 1)
    else:
        edges = np.linspace(1, N, num_timesteps + 1).round().astype(int)  # strata [e_k, e_{k+1})
        strata, weights = [], []
        for lo, hi in zip(edges[:-1], edges[1:]):
            u = _rand((B,), generator)
            strata.append((lo + torch.floor(u * (hi - lo))).long().clamp(max=hi - 1))
            weights.append(float(hi - lo))
    diffusion = torch.zeros(B, dtype=_F64)
    for n, w in zip(strata, weights):
        x0_hat = x0_pred(n)
        coef1 = ab_prev[n].sqrt() * betas[n] / (1 - ab[n])  # posterior mean = coef1 x0 + coef2 x_n
        var_q = post_var[n]
        var_p = var_q if variance == "small" else betas[n]
        dm2 = coef1**2 * ((x0 - x0_hat) ** 2).sum(1)  # the x_n terms of both means cancel
        r = var_q / var_p
        diffusion += w * 0.5 * (D * (r - 1 - torch.log(r)) + dm2 / var_p)

    # L_0: decoder p(x_0 | x_1) with mean x0_theta(x_1) (the posterior mean at n = 0) and variance beta~_1
    x0_hat = x0_pred(torch.zeros(B, dtype=torch.long))
    dec_var = float(post_var[1])
    s = math.sqrt(dec_var)
    if decoder == "gaussian":
        dec_logp = -0.5 * (D * math.log(2 * math.pi * dec_var) + ((x0 - x0_hat) ** 2).sum(1) / dec_var)
    else:
        h = 1.0 / (num_bins - 1)
        lo = torch.where(x0 <= -1 + 1e-6, torch.full_like(x0, -math.inf), (x0 - h - x0_hat) / s)
        hi = torch.where(x0 >= 1 - 1e-6, torch.full_like(x0, math.inf), (x0 + h - x0_hat) / s)
        dec_logp = _log_prob_between(lo, hi).sum(1)
    dec = -dec_logp
    elbo = -(prior + diffusion + dec)
    return ElboResult(elbo=elbo, bpd=-elbo / (D * _LN2), prior=prior, diffusion=diffusion, decoder=dec,
                      nfe=model.nfe - nfe0, info=dict(num_timesteps=len(strata), decoder=decoder,
                                                      num_bins=num_bins, variance=variance))
