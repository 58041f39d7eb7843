"""DDPM ancestral sampling and DDIM, on any descending grid of times.

Between grid times s > t write a_s = alpha(s)^2 (= alphas_cumprod), and beta_st = 1 - a_s/a_t
(the effective beta of the skipped steps; Ho et al. 2020 with Nichol & Dhariwal 2021's respacing).
"""

from __future__ import annotations

import math

from ..validation import choice, finite_float
from .spec import solver


def _one_minus_ratio_sq(al_s: float, al_t: float) -> float:
    """1 - (alpha_s/alpha_t)^2 (the beta of the interval), accurately for small steps; 1 when alpha_s = 0
    (a start at zero SNR, e.g. t = 1 of a flow-matching or zero-terminal-SNR model: x_s holds no signal)."""
    if al_s == 0.0 or al_t == 0.0:
        return 1.0
    return -math.expm1(2 * (math.log(al_s) - math.log(al_t)))


def _scalars(sde, s: float, t: float):
    return sde.alpha(s), sde.sigma(s), sde.alpha(t), sde.sigma(t)


@solver(order=None, nfe="K", default_spacing="uniform", stochastic=True, adaptive=False,
        peers=("diffusers.DDPMScheduler",), weak_order=1)
def ancestral(model, x, ts, *, noise, callback=None, variance: str = "small"):
    """DDPM ancestral sampling from the posterior q(x_t | x_s, x0_hat) (Ho et al. 2020, eqs. 6-7).

    ``variance="small"``: beta-tilde = (1 - a_t)/(1 - a_s) beta_st (default); ``"large"``: beta_st
    (Ho et al.'s FID 3.17 setting). No noise on a final step to t = 0. NFE = len(ts) - 1.
    """
    choice("variance", variance, ("small", "large"))
    sde = model.sde
    for i in range(len(ts) - 1):
        s, t = float(ts[i]), float(ts[i + 1])
        al_s, si_s, al_t, si_t = _scalars(sde, s, t)
        x0 = model.predict(x, s).x0
        beta_st = _one_minus_ratio_sq(al_s, al_t)
        # posterior mean (Ho et al. eq. 7): c0 x0 + cx x_s
        c0 = al_t * beta_st / si_s**2
        cx = math.sqrt(max(1.0 - beta_st, 0.0)) * si_t**2 / si_s**2
        x = c0 * x0 + cx * x
        if t > 0:
            var = beta_st * si_t**2 / si_s**2 if variance == "small" else beta_st
            x = x + math.sqrt(var) * noise.interval(s, t)
        if callback is not None:
            callback(dict(i=i, t=t, x=x, x0=x0))
    return x


@solver(order=1, nfe="K", default_spacing="uniform", stochastic=False, adaptive=False,
        peers=("diffusers.DDIMScheduler",))
def ddim(model, x, ts, *, noise, callback=None, eta: float = 0.0):
    """DDIM (Song et al. 2021a, eq. 12); eta = 0 deterministic, eta = 1 equals ancestral.

    x_t = alpha_t x0 + sqrt(sigma_t^2 - c^2) eps + c z,  c = eta (sigma_t/sigma_s) sqrt(1 - a_s/a_t). eta = 0: deterministic (first-order PF-ODE
    solver, = DPM-Solver-1); eta = 1: ancestral with small variance. NFE = len(ts) - 1.
    """
    finite_float("eta", eta, 0)
    sde = model.sde
    for i in range(len(ts) - 1):
        s, t = float(ts[i]), float(ts[i + 1])
        al_s, si_s, al_t, si_t = _scalars(sde, s, t)
        eps, x0 = model.predict(x, s)
        c = 0.0
        if eta > 0 and t > 0:
            c = eta * si_t / si_s * math.sqrt(_one_minus_ratio_sq(al_s, al_t))
        dir_coef = math.sqrt(max(si_t**2 - c**2, 0.0))
        x = al_t * x0 + dir_coef * eps
        if c > 0:
            x = x + c * noise.interval(s, t)
        if callback is not None:
            callback(dict(i=i, t=t, x=x, x0=x0))
    return x
