"""Ancestral samplers in EDM's sigma space: a deterministic step down to sigma_down, then fresh noise up
to sigma_next (the samplers k-diffusion calls ``sample_euler_ancestral`` and ``sample_dpmpp_2s_ancestral``).

Notation (as in ``karras.py``): sigma = sigma_VP/alpha = exp(-lambda) (``sde.sigma_ve``), y = x/alpha, and
the probability-flow ODE dy/dsigma = eps (Karras et al. 2022, eq. 3 with s(t) = 1). One step from s to t
(sigma_s > sigma_t) splits the target variance sigma_t^2 into a deterministic part and a noise part,
    sigma_up   = eta sigma_t sqrt(1 - sigma_t^2/sigma_s^2) = eta sigma_t sqrt(1 - e^{-2h}),  capped at sigma_t,
    sigma_down = sqrt(sigma_t^2 - sigma_up^2),                  h = lambda_t - lambda_s,
takes the ODE step sigma_s -> sigma_down and adds sigma_up z, z = noise.interval(s, t). With eta = 1 this is
the DDPM posterior step (sigma_up^2 is the "small" posterior variance in y units; Ho et al. 2020, eq. 7):
euler_ancestral(eta) equals ddim(eta) for eta <= 1. With eta = 0 there is no noise and the solvers are
their ODE steps (Euler = DDIM; DPM-Solver++(2S)).

A step to t = 0 returns the x0 prediction (no noise, one evaluation); a step from alpha = 0 (zero terminal
SNR, sigma_s = inf) is first order.
"""

from __future__ import annotations

import math

from .spec import solver

__all__ = ["euler_ancestral", "dpmpp_2s_ancestral", "ancestral_split"]


def _check_eta(eta, S_noise):
    for name, v in (("eta", eta), ("S_noise", S_noise)):
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")


def _ve(sde, t: float):
    """(alpha, sigma_VE, lambda) at time t: (1, 0, inf) at t = 0, (0, inf, -inf) where alpha = 0."""
    if t == 0:
        return 1.0, 0.0, math.inf
    a = sde.alpha(t)
    if a == 0:
        return 0.0, math.inf, -math.inf
    lam = sde.log_snr(t)
    return a, math.exp(-lam), lam


def ancestral_split(sig_s: float, sig_t: float, eta: float):
    """(sigma_down, sigma_up) of an ancestral step sigma_s -> sigma_t (see the module docstring)."""
    if eta == 0 or sig_t == 0:
        return sig_t, 0.0
    # 1 - sigma_t^2/sigma_s^2 written without cancellation (1 at sigma_s = inf)
    frac = -math.expm1(2.0 * (math.log(sig_t) - math.log(sig_s))) if math.isfinite(sig_s) else 1.0
    sig_up = min(sig_t, eta * sig_t * math.sqrt(frac))
    return math.sqrt(max(sig_t**2 - sig_up**2, 0.0)), sig_up


@solver(order=1, nfe="K", default_spacing="karras", stochastic=True, adaptive=False,
        peers=("k_diffusion.sample_euler_ancestral", "diffusers.EulerAncestralDiscreteScheduler"),
        order_options={"eta": 0.0})
def euler_ancestral(model, x, ts, *, noise, callback=None, eta: float = 1.0, S_noise: float = 1.0):
    """Ancestral sampling with Euler steps in sigma (k-diffusion's ``sample_euler_ancestral``).

    y_down = y + (sigma_down - sigma_s) eps = x0 + sigma_down eps;  y_t = y_down + S_noise sigma_up z.
    eta = 1: DDPM ancestral sampling (= ddim(eta=1) = ancestral(variance="small")); eta = 0: Euler.
    NFE = K.
    """
    _check_eta(eta, S_noise)
    sde = model.sde
    for i in range(len(ts) - 1):
        s, t = float(ts[i]), float(ts[i + 1])
        eps, x0 = model.predict(x, s)
        if t == 0:
            x = x0
        else:
            a_s, sig_s, _ = _ve(sde, s)
            a_t, sig_t, _ = _ve(sde, t)
            sig_down, sig_up = ancestral_split(sig_s, sig_t, eta)
            y = x0 + sig_down * eps  # Euler step of dy/dsigma = eps from sigma_s to sigma_down
            if sig_up > 0:
                y = y + (S_noise * sig_up) * noise.interval(s, t)
            x = a_t * y
        if callback is not None:
            callback(dict(i=i, t=t, x=x, x0=x0))
    return x


@solver(order=2, nfe="2*K - z", default_spacing="karras", stochastic=True, adaptive=False,
        peers=("k_diffusion.sample_dpmpp_2s_ancestral",), order_options={"eta": 0.0})
def dpmpp_2s_ancestral(model, x, ts, *, noise, callback=None, eta: float = 1.0, S_noise: float = 1.0):
    """Ancestral sampling with DPM-Solver++(2S) steps (Lu et al. 2022b, Alg. 1 with r = 1/2; k-diffusion's
    ``sample_dpmpp_2s_ancestral``).

    From lambda_s to lambda_d = -log sigma_down, h = lambda_d - lambda_s, midpoint lambda_m = lambda_s + h/2:
        u   = (sigma_m/sigma_s) y - (e^{-h/2} - 1) x0                     (DPM-Solver++(1) to the midpoint)
        y_d = (sigma_d/sigma_s) y - (e^{-h} - 1) x0(u, lambda_m)           (second-order update, r = 1/2)
    then y_t = y_d + S_noise sigma_up z. eta = 0 is DPM-Solver++(2S) (= dpm_solver(order=2)), order 2.
    NFE = 2 per step, 1 on a step to t = 0 (x0 prediction) or from alpha = 0 (first order): 2K - 1 on
    grids to t = 0.
    """
    _check_eta(eta, S_noise)
    sde = model.sde
    for i in range(len(ts) - 1):
        s, t = float(ts[i]), float(ts[i + 1])
        eps, x0 = model.predict(x, s)
        if t == 0:
            x = x0
        else:
            a_s, sig_s, lam_s = _ve(sde, s)
            a_t, sig_t, _ = _ve(sde, t)
            sig_down, sig_up = ancestral_split(sig_s, sig_t, eta)
            if a_s == 0 or sig_down == 0:  # no finite midpoint: first-order step (= Euler to sigma_down)
                y = x0 + sig_down * eps
            else:
                y = x / a_s
                h = -math.log(sig_down) - lam_s
                lam_m = lam_s + 0.5 * h
                t_m = float(sde.t_from_log_snr(lam_m))
                a_m = math.sqrt(1.0 / (1.0 + math.exp(-2.0 * lam_m)))  # alpha^2 = sigmoid(2 lambda)
                u = math.exp(-0.5 * h) * y - math.expm1(-0.5 * h) * x0
                x0_m = model.predict(a_m * u, t_m).x0
                y = math.exp(-h) * y - math.expm1(-h) * x0_m
            if sig_up > 0:
                y = y + (S_noise * sig_up) * noise.interval(s, t)
            x = a_t * y
        if callback is not None:
            callback(dict(i=i, t=t, x=x, x0=x0))
    return x
