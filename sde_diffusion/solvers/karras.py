"""Karras et al. 2022 ("Elucidating the design space", EDM) samplers: ``euler`` and ``heun``.

EDM works in the variance-exploding view of the VP process: with sigma = sigma_VP/alpha = exp(-lambda)
(``sde.sigma_ve``) and y = x/alpha, the probability-flow ODE is (EDM eq. 3 with s(t) = 1)
    dy/dsigma = (y - D(y; sigma)) / sigma = eps,
where D is the x0 prediction. Euler on this ODE is DDIM(eta=0) = DPM-Solver-1; Heun is EDM Algorithm 1,
with the optional "churn" of Algorithm 2 (raise sigma to sigma_hat = (1 + gamma) sigma by adding fresh
noise, then take the ODE step from sigma_hat). sigma_hat is mapped back to the time the net needs with
``sde.t_from_log_snr(-log sigma_hat)``. The state is converted back to x = alpha y after every step.

A final step to t = 0 (sigma = 0) returns the x0 prediction (= y - sigma eps) and makes no second
evaluation, so Heun costs 2K - 1 NFE on a grid of K steps ending at t = 0 (2K otherwise). A step from
alpha = 0 (zero terminal SNR, sigma = inf) is an Euler step x0 + sigma_next eps (= DDIM) without correction.
These equal diffusers' EulerDiscreteScheduler / HeunDiscreteScheduler and k-diffusion's
``sample_euler`` / ``sample_heun`` on the same sigmas.
"""

from __future__ import annotations

import math

from ..validation import finite_float
from .spec import solver


def _check_churn(S_churn, S_tmin, S_tmax, S_noise):
    for name, v in (("S_churn", S_churn), ("S_tmin", S_tmin), ("S_noise", S_noise)):
        finite_float(name, v, 0)
    if not (S_tmax >= S_tmin):
        raise ValueError(f"S_tmax must be >= S_tmin, got S_tmin={S_tmin!r}, S_tmax={S_tmax!r}")


def _edm(model, x, ts, noise, callback, second_order, S_churn, S_tmin, S_tmax, S_noise):
    """EDM Algorithm 2 (Algorithm 1 when S_churn = 0); first-order steps when not ``second_order``."""
    _check_churn(S_churn, S_tmin, S_tmax, S_noise)
    sde = model.sde
    K = len(ts) - 1
    for i in range(K):
        t, t_next = float(ts[i]), float(ts[i + 1])
        a = sde.alpha(t)
        sig = sde.sigma_ve(t) if a > 0 else math.inf  # alpha = 0 (zero terminal SNR): sigma = inf
        sig_next = sde.sigma_ve(t_next) if t_next > 0 else 0.0
        a_next = sde.alpha(t_next) if t_next > 0 else 1.0
        # Alg. 2 lines 4-6: gamma_i = min(S_churn/K, sqrt(2) - 1) inside [S_tmin, S_tmax];
        # y_hat = y + sqrt(sig_hat^2 - sig^2) S_noise z
        t_hat, sig_hat = t, sig
        gamma = min(S_churn / K, math.sqrt(2) - 1) if S_tmin <= sig <= S_tmax and math.isfinite(sig) else 0.0
        if gamma > 0:
            t_hat = float(sde.t_from_log_snr(-math.log(sig * (1 + gamma))))  # clamped to t <= 1
            if t_hat > t and sde.alpha(t_hat) > 0:
                sig_hat, a = sde.sigma_ve(t_hat), sde.alpha(t_hat)  # sig_hat = (1 + gamma) sig unless capped at t = 1
                z = noise.interval(t, t_hat)
                x = (x / sde.alpha(t) + (S_noise * math.sqrt(sig_hat**2 - sig**2)) * z) * a
            else:
                t_hat = t
        # Alg. 1 lines 4-5: d = (y - D(y; sig_hat)) / sig_hat = eps;  y_next = y + (sig_next - sig_hat) d,
        # written as x0 + sig_next eps (y - sig_hat eps = x0), which also holds from sig_hat = inf
        eps, x0 = model.predict(x, t_hat)
        if t_next == 0:
            y = x0  # sigma = 0: the Euler step lands exactly on the x0 prediction; no second evaluation
        else:
            y = x0 + sig_next * eps
            if second_order and math.isfinite(sig_hat):  # Alg. 1 lines 7-8: trapezoidal (Heun) correction
                eps_next = model.predict(y * a_next, t_next).eps
                y = y + (0.5 * (sig_next - sig_hat)) * (eps_next - eps)
        x = y * a_next
        if callback is not None:
            callback(dict(i=i, t=t_next, x=x, x0=x0))
    return x


@solver(order=1, nfe="K", default_spacing="karras", stochastic=False, adaptive=False,
        peers=("diffusers.EulerDiscreteScheduler",))
def euler(model, x, ts, *, noise, callback=None, S_churn: float = 0.0, S_tmin: float = 0.0,
          S_tmax: float = math.inf, S_noise: float = 1.0):
    """Euler in EDM's sigma space (Karras et al. 2022, Alg. 2 without the Heun correction).

    y_{i+1} = y_hat + (sigma_{i+1} - sigma_hat) eps(y_hat, sigma_hat), y = x/alpha. With S_churn = 0
    it is deterministic and equals ddim(eta=0) and dpm_solver(order=1). NFE = K.
    """
    return _edm(model, x, ts, noise, callback, False, S_churn, S_tmin, S_tmax, S_noise)


@solver(order=2, nfe="2*K - z", default_spacing="karras", stochastic=False, adaptive=False,
        peers=("diffusers.HeunDiscreteScheduler",))
def heun(model, x, ts, *, noise, callback=None, S_churn: float = 0.0, S_tmin: float = 0.0,
         S_tmax: float = math.inf, S_noise: float = 1.0):
    """Heun's 2nd-order method in EDM's sigma space (Karras et al. 2022, Alg. 1; Alg. 2 if S_churn > 0).

    Churn: gamma = min(S_churn/K, sqrt(2)-1) for sigma in [S_tmin, S_tmax] (EDM sigma units), capped so
    the raised time stays <= 1. NFE = 2K - 1 when the grid ends at t = 0 (the final Euler step to sigma = 0
    has no correction), else 2K.
    """
    return _edm(model, x, ts, noise, callback, True, S_churn, S_tmin, S_tmax, S_noise)
