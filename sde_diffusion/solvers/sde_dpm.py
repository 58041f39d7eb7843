"""Stochastic DPM-Solver++ samplers: ``dpmpp_sde`` (singlestep, two evaluations per step) and
``dpmpp_3m_sde`` (third-order multistep).

Notation as in ``dpm.py``: a step goes from s to t, h = lambda_t - lambda_s > 0, lambda = log(alpha/sigma).
The reverse SDE with noise level eta (eta = 0: probability-flow ODE, eta = 1: the reverse-time SDE) has, in
data-prediction form, the exact solution (Lu et al. 2022b, DPM-Solver++, App. B; Gonzalez et al. 2023,
SEEDS, eq. 9)
    x_t = (sigma_t/sigma_s) e^{-eta h} x_s + alpha_t int_0^h (1 + eta) e^{-(1+eta)(h-u)} x0(lambda_s + u) du
          + sigma_t sqrt(1 - e^{-2 eta h}) z.
Expanding x0(lambda_s + u) = x0 + u x0' + u^2/2 x0'' + ... and integrating term by term with H = (1 + eta) h:
    int (1+eta) e^{-(1+eta)(h-u)} du            = 1 - e^{-H}
    int (1+eta) e^{-(1+eta)(h-u)} u du           = h phi_2(H),       phi_2(H) = (e^{-H} - 1)/H + 1
    int (1+eta) e^{-(1+eta)(h-u)} u^2/2 du       = -h^2 phi_3(H),    phi_3(H) = phi_2(H)/H - 1/2
so with divided differences D1 ~ h x0' and D2 ~ h^2 x0''/2 the third-order update is
    x_t = (sigma_t/sigma_s) e^{-eta h} x + alpha_t (1 - e^{-H}) x0 + alpha_t phi_2(H) D1 - 2 alpha_t phi_3(H) D2 + noise.
The factor 2 on D2 is the Taylor coefficient (as in ``dpmpp_3m``); k-diffusion's ``sample_dpmpp_3m_sde``
uses 1, which is second order (``variant="k-diffusion"``).
"""

from __future__ import annotations

import math

from .adams import warmup_times
from .ancestral_steps import _check_eta, _ve, ancestral_split
from .spec import solver

__all__ = ["dpmpp_sde", "dpmpp_3m_sde"]


def _coefs(sde, t: float):
    """(alpha, sigma, lambda) at t: (1, 0, inf) at t = 0 and (0, 1, -inf) where alpha = 0."""
    if t == 0:
        return 1.0, 0.0, math.inf
    a = sde.alpha(t)
    if a == 0:
        return 0.0, 1.0, -math.inf
    return a, sde.sigma(t), sde.log_snr(t)


def _alpha_of_lambda(lam: float) -> float:
    """alpha at log-SNR lambda of a VP path: alpha^2 = sigmoid(2 lambda)."""
    return math.sqrt(1.0 / (1.0 + math.exp(-2.0 * lam)))


@solver(order=2, nfe="2*K - z", default_spacing="karras", stochastic=True, adaptive=False,
        peers=("k_diffusion.sample_dpmpp_sde",), order_options={"eta": 0.0},
        variants=(("r=1/3", {"eta": 0.0, "r": 1.0 / 3.0}, 2),))
def dpmpp_sde(model, x, ts, *, noise, callback=None, eta: float = 1.0, S_noise: float = 1.0, r: float = 0.5):
    """Stochastic DPM-Solver++ with two evaluations per step (k-diffusion's ``sample_dpmpp_sde``).

    In EDM's sigma space (sigma = exp(-lambda), y = x/alpha), with the ancestral split of
    ``ancestral_steps`` (sigma_down, sigma_up of a step at noise level eta):
      1. an ancestral DPM-Solver++(1) step from lambda_s to lambda_m = lambda_s + r h:
         u = (sigma_d1/sigma_s) y - (e^{-h_1} - 1) x0 + S_noise sigma_up1 z_1,  h_1 = -log sigma_d1 - lambda_s,
         z_1 = noise.interval(s, t_m), and x0_m = x0(u, lambda_m);
      2. an ancestral step from lambda_s to lambda_t with the combined prediction
         D = (1 - 1/(2r)) x0 + 1/(2r) x0_m (Lu et al. 2022b, Alg. 1 with ratio r):
         y_t = (sigma_d/sigma_s) y - (e^{-h_d} - 1) D + S_noise sigma_up z_2,  z_2 = noise.interval(s, t).
    eta = 0: deterministic DPM-Solver++(2S) with ratio r (order 2; r = 1/2 is dpm_solver(order=2)).
    With ``noise="brownian"`` z_1 and z_2 are increments of one Brownian path over nested intervals.
    NFE = 2 per step, 1 on a step to t = 0 (returns x0) or from alpha = 0 (first order): 2K - 1 to t = 0.
    """
    _check_eta(eta, S_noise)
    if not (isinstance(r, (int, float)) and 0 < r <= 1):
        raise ValueError(f"r must be a number in (0, 1], got {r!r}")
    sde = model.sde
    for i in range(len(ts) - 1):
        s, t = float(ts[i]), float(ts[i + 1])
        eps, x0 = model.predict(x, s)
        if t == 0:
            x = x0
        else:
            a_s, sig_s, lam_s = _ve(sde, s)
            a_t, sig_t, lam_t = _ve(sde, t)
            if a_s == 0:  # sigma_s = inf: first-order ancestral step
                sig_down, sig_up = ancestral_split(sig_s, sig_t, eta)
                y = x0 + sig_down * eps
            else:
                y = x / a_s
                h = lam_t - lam_s
                lam_m = lam_s + r * h
                t_m = float(sde.t_from_log_snr(lam_m))
                # step 1: ancestral DPM-Solver++(1) to lambda_m
                sd1, su1 = ancestral_split(sig_s, math.exp(-lam_m), eta)
                h1 = -math.log(sd1) - lam_s
                u = math.exp(-h1) * y - math.expm1(-h1) * x0
                if su1 > 0:
                    u = u + (S_noise * su1) * noise.interval(s, t_m)
                x0_m = model.predict(_alpha_of_lambda(lam_m) * u, t_m).x0
                # step 2: ancestral step to lambda_t with D = (1 - 1/(2r)) x0 + 1/(2r) x0_m
                sig_down, sig_up = ancestral_split(sig_s, sig_t, eta)
                hd = -math.log(sig_down) - lam_s
                fac = 0.5 / r
                D = (1.0 - fac) * x0 + fac * x0_m
                y = math.exp(-hd) * y - math.expm1(-hd) * D
            if sig_up > 0:
                y = y + (S_noise * sig_up) * noise.interval(s, t)
            x = a_t * y
        if callback is not None:
            callback(dict(i=i, t=t, x=x, x0=x0))
    return x


_3M_SDE_VARIANTS = ("taylor", "k-diffusion")


@solver(order=3, nfe="K", default_spacing="logsnr", stochastic=True, adaptive=False,
        peers=("k_diffusion.sample_dpmpp_3m_sde",), order_options={"eta": 0.0, "lower_order_final": False},
        variants=(("k-diffusion", {"eta": 0.0, "lower_order_final": False, "variant": "k-diffusion"}, 2),
                  ("warmup=refined", {"eta": 0.0, "lower_order_final": False, "warmup": "refined"}, 3)))
def dpmpp_3m_sde(model, x, ts, *, noise, callback=None, eta: float = 1.0, S_noise: float = 1.0,
                 lower_order_final: bool = True, variant: str = "taylor", warmup: str = "plain"):
    """Third-order multistep SDE-DPM-Solver++ (the update of the module docstring), NFE = K:
        x_t = (sigma_t/sigma_s) e^{-eta h} x + alpha_t (1 - e^{-H}) x0 + alpha_t phi_2(H) D1 - w alpha_t phi_3(H) D2
              + S_noise sigma_t sqrt(1 - e^{-2 eta h}) z,   H = (1 + eta) h,  z = noise.interval(s, t),
    D1, D2 the divided differences of ``dpmpp_3m``. Warm-up: first order on the first step, second order on
    the second; a step to t = 0 returns x0 (no noise).
    ``variant="taylor"`` (default): w = 2; the second step uses the midpoint form
    D1 -> (1 - e^{-H}) (x0 - x0_prev)/(2 r) of ``dpmpp_2m_sde``, so eta = 0 is exactly ``dpmpp_3m`` (order 3).
    ``variant="k-diffusion"``: w = 1 and phi_2(H) D1 on the second step, as k-diffusion's
    ``sample_dpmpp_3m_sde`` (order 2 at eta = 0). ``lower_order_final`` (default True, as ``dpmpp_3m``): on
    grids of fewer than 15 steps the last two steps use orders 2 and 1.
    ``warmup="refined"``: one extra evaluation inside the first interval (``adams.warmup_times``), so the
    first-order first step no longer limits the global order to 2 on a generic net (NFE = K + 1 when the
    first step is shorter than 1 in lambda).
    """
    _check_eta(eta, S_noise)
    if variant not in _3M_SDE_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(_3M_SDE_VARIANTS)}, got {variant!r}")
    if warmup not in ("plain", "refined"):
        raise ValueError(f"warmup must be one of plain, refined, got {warmup!r}")
    w = 2.0 if variant == "taylor" else 1.0
    sde = model.sde
    K = len(ts) - 1
    lams, x0s = [], []  # lambda and x0 at the previous evaluation points, newest last
    for i in range(K):
        s0, t0 = float(ts[i]), float(ts[i + 1])
        sub = warmup_times(sde, s0, t0, 3) if (warmup == "refined" and i == 0) else []
        for s, t in zip([s0] + sub, sub + [t0]):  # one step, or the refined warm-up's sub-steps
            a_s, s_s, l_s = _coefs(sde, s)
            a_t, s_t, l_t = _coefs(sde, t)
            m0 = model.predict(x, s).x0
            p = min(3, len(lams) + 1)
            if t == 0 or (lower_order_final and K < 15 and i == K - 1):
                p = 1
            elif lower_order_final and K < 15 and i == K - 2:
                p = min(p, 2)
            if t == 0:
                x = m0
            else:
                h = l_t - l_s
                H = (1.0 + eta) * h
                decay = math.exp(-eta * h) if eta > 0 else 1.0  # (eta h = 0 * inf from alpha = 0)
                one_m = -math.expm1(-H)  # 1 - e^{-H}
                phi_2 = 1.0 - one_m / H if math.isfinite(H) else 1.0
                x_new = (s_t / s_s * decay) * x + (a_t * one_m) * m0
                if p >= 2:
                    r0 = (l_s - lams[-1]) / h  # (a history point at alpha = 0 has lambda = -inf: r0 = inf, term 0)
                    d1_0 = (m0 - x0s[-1]) / r0
                if p == 2:
                    if variant == "taylor":
                        x_new = x_new + (0.5 * a_t * one_m) * d1_0
                    else:
                        x_new = x_new + (a_t * phi_2) * d1_0
                elif p == 3:
                    r1 = (lams[-1] - lams[-2]) / h
                    d1_1 = (x0s[-1] - x0s[-2]) / r1
                    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                    d2 = (d1_0 - d1_1) / (r0 + r1)
                    phi_3 = phi_2 / H - 0.5
                    x_new = x_new + (a_t * phi_2) * d1 - (w * a_t * phi_3) * d2
                if eta > 0:
                    x_new = x_new + (S_noise * s_t * math.sqrt(-math.expm1(-2.0 * eta * h))) * noise.interval(s, t)
                x = x_new
            lams, x0s = (lams + [l_s])[-2:], (x0s + [m0])[-2:]
        if callback is not None:
            callback(dict(i=i, t=t0, x=x, x0=m0))
    return x
