"""DPM-Solver family: exponential integrators of the probability-flow ODE in lambda = log(alpha/sigma).

Notation: a step goes from s to t (t < s in time), h = lambda_t - lambda_s > 0, phi_1 = e^{-h} - 1.
Exact solution of the PF-ODE in data-prediction form (Lu et al. 2022b, DPM-Solver++, eq. 8):
    x_t = (sigma_t/sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^{lambda} x0(lambda) dlambda,
and in noise-prediction form (Lu et al. 2022, DPM-Solver, eq. 3.4):
    x_t = (alpha_t/alpha_s) x_s - alpha_t int_{lambda_s}^{lambda_t} e^{-lambda} eps(lambda) dlambda.
Solvers differ in how they approximate x0 (or eps) inside the integral.

``dpm_solver``   singlestep DPM-Solver-1/2/3 (Lu et al. 2022, Alg. 1-2) or DPM-Solver++(1S/2S/3S)
                 (Lu et al. 2022b, App. A); intermediate evaluations inside each step.
``dpmpp_2m``     multistep DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): reuses the previous x0.
``dpmpp_3m``     multistep third order (diffusers' DPMSolverMultistepScheduler, solver_order=3).
``dpmpp_2m_sde`` SDE-DPM-Solver++(2M) (Lu et al. 2022b, App. B; k-diffusion midpoint form).

A step to t = 0 (sigma = 0, lambda = inf) is always first order and returns the x0 prediction exactly;
the net is never evaluated at t = 0.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

from .spec import solver
from ..validation import choice, finite_float, positive_int

_ALGORITHMS = ("dpmsolver++", "dpmsolver")


def _coefs(sde, t: float):
    """(alpha, sigma, lambda) at time t in float64; t = 0 gives (1, 0, inf)."""
    if t == 0:
        return 1.0, 0.0, math.inf
    return sde.alpha(t), sde.sigma(t), sde.log_snr(t)


def _at_lambda(sde, lam: float):
    """(t, alpha, sigma) of an intermediate log-SNR: alpha^2 = sigmoid(2 lambda), sigma^2 = sigmoid(-2 lambda)."""
    t = float(sde.t_from_log_snr(lam))
    return t, math.sqrt(1.0 / (1.0 + math.exp(-2 * lam))), math.sqrt(1.0 / (1.0 + math.exp(2 * lam)))


def _check_order(order, valid):
    choice("order", order, valid)


# ---- singlestep DPM-Solver ------------------------------------------------------------------------

def dpm_solver_fast_orders(nfe: int, order: int = 3, final_to_zero: bool = True) -> list:
    """Per-step orders of DPM-Solver-fast (Lu et al. 2022, Sec. 3.4) that spend exactly ``nfe`` evaluations.

    Without ``final_to_zero``: K = nfe // order (+1) steps of ``order`` ending with one lower-order step,
    e.g. order 3: nfe % 3 == 0 -> [3, ..., 3, 2, 1]; 1 -> [3, ..., 3, 1]; 2 -> [3, ..., 3, 2].
    With ``final_to_zero`` (grids that end at t = 0, like ``time_grid(..., "logsnr")``): the last step to
    t = 0 costs one evaluation (order 1, DPM-Solver's ``denoise_to_zero``) and nfe - 1 are allocated as above.
    Use as ``orders = dpm_solver_fast_orders(20); sample(model, solver="dpm_solver", steps=len(orders),
    spacing="logsnr", orders=orders)``.
    """
    positive_int("nfe", nfe)
    _check_order(order, (1, 2, 3))
    m = nfe - 1 if final_to_zero else nfe
    if m == 0:
        return [1]
    if order == 1:
        out = [1] * m
    elif order == 2:
        out = [2] * (m // 2) + ([1] if m % 2 else [])
    else:
        k, rem = divmod(m, 3)
        out = [3] * (k - 1) + [2, 1] if rem == 0 else [3] * k + [rem]
    return out + ([1] if final_to_zero else [])


@solver(order=3, nfe="3*K - 2*z", default_spacing="logsnr", stochastic=False, adaptive=False, peers=(),
        variants=(("order=1", {"order": 1}, 1), ("order=2", {"order": 2}, 2),
                  ("order=2 eps", {"order": 2, "algorithm": "dpmsolver"}, 2),
                  ("order=3 eps", {"order": 3, "algorithm": "dpmsolver"}, 3)))
def dpm_solver(model, x, ts, *, noise, callback=None, order: int = 3, orders: Optional[Sequence[int]] = None,
               algorithm: str = "dpmsolver++"):
    """Singlestep DPM-Solver (Lu et al. 2022) / DPM-Solver++ (Lu et al. 2022b) on the grid ``ts``.

    Each grid interval is one step of ``order`` (1, 2 or 3; r1 = 1/2 for order 2, r1 = 1/3, r2 = 2/3 for
    order 3) costing ``order`` NFE; ``orders`` gives one order per interval instead (see
    ``dpm_solver_fast_orders`` for DPM-Solver-fast's allocation). ``steps=K`` in ``sample`` always means
    K grid intervals, never an NFE budget. A step to t = 0 is first order (1 NFE).
    ``algorithm``: "dpmsolver++" (data prediction, default) or "dpmsolver" (noise prediction; needs
    alpha > 0 at the start). A step from alpha = 0 (zero terminal SNR) is first order.
    Returns (x, info) with info["orders"] the order used for each step.
    """
    choice("algorithm", algorithm, _ALGORITHMS)
    K = len(ts) - 1
    if orders is None:
        _check_order(order, (1, 2, 3))
        orders = [order] * K
    else:
        orders = list(orders)
        if len(orders) != K:
            raise ValueError(f"orders must give one order per grid interval: got {len(orders)} for {K} intervals")
        for o in orders:
            _check_order(o, (1, 2, 3))
    step = _singlestep_data if algorithm == "dpmsolver++" else _singlestep_noise
    sde, used = model.sde, []
    for i in range(K):
        s, t = float(ts[i]), float(ts[i + 1])
        # first order to t = 0, and from alpha = 0 (zero terminal SNR: lambda_s = -inf, no intermediate points)
        p = 1 if t == 0 or sde.alpha(s) == 0 else orders[i]
        eps, x0 = model.predict(x, s)
        if t == 0:
            x = x0  # sigma_t = 0: the first-order step lands on the x0 prediction
        else:
            x = step(model, sde, x, s, t, eps, x0, p)
        used.append(p)
        if callback is not None:
            callback(dict(i=i, t=t, x=x, x0=x0))
    return x, {"orders": used}


def _singlestep_data(model, sde, x, s, t, eps_s, m0, p):
    """DPM-Solver++(pS) (Lu et al. 2022b, App. A; DPM-Solver's "dpmsolver" variant for order 3)."""
    a_s, s_s, l_s = _coefs(sde, s)
    a_t, s_t, l_t = _coefs(sde, t)
    h = l_t - l_s
    phi_1 = math.expm1(-h)
    if p == 1:  # = DDIM
        return (s_t / s_s) * x - (a_t * phi_1) * m0
    if p == 2:
        r1 = 0.5
        t1, a1, s1 = _at_lambda(sde, l_s + r1 * h)
        u1 = (s1 / s_s) * x - (a1 * math.expm1(-r1 * h)) * m0
        m1 = model.predict(u1, t1).x0
        return (s_t / s_s) * x - (a_t * phi_1) * m0 - (0.5 / r1 * a_t * phi_1) * (m1 - m0)
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0
    t1, a1, s1 = _at_lambda(sde, l_s + r1 * h)
    t2, a2, s2 = _at_lambda(sde, l_s + r2 * h)
    phi_22 = math.expm1(-r2 * h) / (r2 * h) + 1.0
    phi_2 = phi_1 / h + 1.0
    u1 = (s1 / s_s) * x - (a1 * math.expm1(-r1 * h)) * m0
    m1 = model.predict(u1, t1).x0
    u2 = (s2 / s_s) * x - (a2 * math.expm1(-r2 * h)) * m0 + (r2 / r1 * a2 * phi_22) * (m1 - m0)
    m2 = model.predict(u2, t2).x0
    return (s_t / s_s) * x - (a_t * phi_1) * m0 + (a_t * phi_2 / r2) * (m2 - m0)


def _singlestep_noise(model, sde, x, s, t, e0, m0, p):
    """DPM-Solver-1/2/3 in noise-prediction form (Lu et al. 2022, eqs. 3.7 and Alg. 1-2)."""
    a_s, s_s, l_s = _coefs(sde, s)
    a_t, s_t, l_t = _coefs(sde, t)
    h = l_t - l_s
    phi = math.expm1(h)  # e^h - 1
    if p == 1:  # = DDIM
        return (a_t / a_s) * x - (s_t * phi) * e0
    if p == 2:  # DPM-Solver-2, Alg. 1
        r1 = 0.5
        t1, a1, s1 = _at_lambda(sde, l_s + r1 * h)
        u1 = (a1 / a_s) * x - (s1 * math.expm1(r1 * h)) * e0
        e1 = model.predict(u1, t1).eps
        return (a_t / a_s) * x - (s_t * phi) * e0 - (0.5 / r1 * s_t * phi) * (e1 - e0)
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0  # DPM-Solver-3, Alg. 2
    t1, a1, s1 = _at_lambda(sde, l_s + r1 * h)
    t2, a2, s2 = _at_lambda(sde, l_s + r2 * h)
    u1 = (a1 / a_s) * x - (s1 * math.expm1(r1 * h)) * e0
    d1 = model.predict(u1, t1).eps - e0
    u2 = (a2 / a_s) * x - (s2 * math.expm1(r2 * h)) * e0 - (s2 * r2 / r1 * (math.expm1(r2 * h) / (r2 * h) - 1.0)) * d1
    d2 = model.predict(u2, t2).eps - e0
    return (a_t / a_s) * x - (s_t * phi) * e0 - (s_t / r2 * (phi / h - 1.0)) * d2


# ---- multistep DPM-Solver++ -----------------------------------------------------------------------

def _multistep_order(order, i, K, t, lower_order_final):
    """Order of step i of K: warm-up min(order, i+1); first order to t = 0; with ``lower_order_final`` and
    K < 15 the last step is first and the one before at most second order (diffusers' rule)."""
    p = min(order, i + 1)
    if t == 0 or (lower_order_final and K < 15 and i == K - 1):
        return 1
    if lower_order_final and K < 15 and i == K - 2:
        return min(p, 2)
    return p


def _dpmpp_multistep(model, x, ts, callback, order, lower_order_final, d2_weight=2.0, coefficients=None,
                     eval_times=None):
    sde = model.sde
    K = len(ts) - 1
    lams, x0s = [], []  # lambda and x0 at previous grid points, newest last
    for i in range(K):
        s, t = float(ts[i]), float(ts[i + 1])
        a_s, s_s, l_s = _coefs(sde, s)
        a_t, s_t, l_t = _coefs(sde, t)
        m0 = model.predict(x, s if eval_times is None else eval_times[i]).x0
        p = _multistep_order(order, i, K, t, lower_order_final)
        if coefficients is not None and i > 0:  # learned weight w of (m0 - m_prev), also on a step to t = 0
            phi_1 = -1.0 if t == 0 else math.expm1(-(l_t - l_s))
            x = (s_t / s_s) * x - (a_t * phi_1) * (m0 + coefficients[i - 1] * (m0 - x0s[-1]))
        elif t == 0:
            x = m0
        else:
            h = l_t - l_s
            phi_1 = math.expm1(-h)
            base = (s_t / s_s) * x - (a_t * phi_1) * m0  # DPM-Solver++(1) = DDIM
            if p == 1:
                x = base
            elif p == 2:  # Lu et al. 2022b Alg. 2: D = m0 + (m0 - m1)/(2 r0), r0 = h_prev/h
                r0 = (l_s - lams[-1]) / h
                x = base - (0.5 * a_t * phi_1 / r0) * (m0 - x0s[-1])
            else:  # third order: divided differences D1, D2 in lambda (diffusers' multistep 3rd-order update)
                # (a history point at alpha = 0 has lambda = -inf: r = inf zeroes its differences -> order 2)
                r0, r1 = (l_s - lams[-1]) / h, (lams[-1] - lams[-2]) / h
                d1_0, d1_1 = (m0 - x0s[-1]) / r0, (x0s[-1] - x0s[-2]) / r1
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = phi_1 / h + 1.0
                phi_3 = (math.expm1(-h) + h) / h**2 - 0.5
                # x0'' enters the Taylor-expanded integral as -alpha_t phi_3 h^2 x0'' = -2 alpha_t phi_3 D2
                # (D2 ~ h^2 x0''/2); the peers' code uses 1 x D2, which is only second-order accurate
                x = base + (a_t * phi_2) * d1 - (a_t * phi_3 * d2_weight) * d2
        lams, x0s = (lams + [l_s])[-2:], (x0s + [m0])[-2:]
        if callback is not None:
            callback(dict(i=i, t=t, x=x, x0=m0))
    return x


@solver(order=2, nfe="K", default_spacing="logsnr", stochastic=False, adaptive=False,
        peers=("diffusers.DPMSolverMultistepScheduler",), order_options={"lower_order_final": False})
def dpmpp_2m(model, x, ts, *, noise, callback=None, lower_order_final: bool = True,
             coefficients: Optional[Sequence[float]] = None, eval_times: Optional[Sequence[float]] = None):
    """Multistep DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2), data prediction, NFE = K:
    x_t = (sigma_t/sigma_s) x - alpha_t (e^{-h} - 1) [x0_s + (x0_s - x0_prev)/(2 r)], r = h_prev/h.
    First order on the first step and on a final step to t = 0; with ``lower_order_final`` also on the
    last step of grids with fewer than 15 steps (as diffusers). Equals diffusers' default
    DPMSolverMultistepScheduler and k-diffusion's ``sample_dpmpp_2m``.
    ``coefficients``: K - 1 per-step weights w_i replacing 1/(2 r) in step i = 1 .. K-1, including a
    step to t = 0, where x_0 = x0_s + w (x0_s - x0_prev) (learned by ``sde_diffusion.tuning``, after
    Shaul et al. 2024, Bespoke solvers, eq. 12); ``tuning.standard_coefficients`` reproduces the default.
    ``eval_times``: K times in (0, 1] at which the network is evaluated in step i instead of ts[i] (the
    time-shifted evaluation of Li et al. 2024, "Alleviating exposure bias ... shifted time steps").
    """
    if coefficients is not None:
        coefficients = [float(w) for w in coefficients]
        if len(coefficients) != len(ts) - 2 or not all(math.isfinite(w) for w in coefficients):
            raise ValueError(f"coefficients must be {len(ts) - 2} finite numbers (one per step after the first), "
                             f"got {len(coefficients)}")
    if eval_times is not None:
        eval_times = [float(t) for t in eval_times]
        if len(eval_times) != len(ts) - 1 or not all(0 < t <= 1 for t in eval_times):
            raise ValueError(f"eval_times must be {len(ts) - 1} times in (0, 1] (one per step), got {len(eval_times)}")
    return _dpmpp_multistep(model, x, ts, callback, 2, lower_order_final, coefficients=coefficients,
                            eval_times=eval_times)


_3M_VARIANTS = {"taylor": 2.0, "diffusers": 1.0}


# the formula of diffusers / k-diffusion / DPM-Solver's code halves the second-difference term: order 2
@solver(order=3, nfe="K", default_spacing="logsnr", stochastic=False, adaptive=False,
        peers=("diffusers.DPMSolverMultistepScheduler(solver_order=3) [variant='diffusers']",),
        order_options={"lower_order_final": False},
        variants=(("variant=diffusers", {"variant": "diffusers", "lower_order_final": False}, 2),
                  ("warmup=refined", {"warmup": "refined", "lower_order_final": False}, 3)))
def dpmpp_3m(model, x, ts, *, noise, callback=None, lower_order_final: bool = True, variant: str = "taylor",
             warmup: str = "plain"):
    """Multistep third-order DPM-Solver++(3M) (Lu et al. 2022b, Sec. 4 with order 3), data prediction, NFE = K:
    x_t = (sigma_t/sigma_s) x - alpha_t phi_1 m0 + alpha_t phi_2 D1 - w alpha_t phi_3 D2,
    phi_1 = e^{-h} - 1, phi_2 = phi_1/h + 1, phi_3 = phi_2/h - 1/2, D1, D2 the first and second divided
    differences of x0 in lambda (D1 ~ h x0', D2 ~ h^2 x0''/2). ``variant="taylor"`` (default) uses w = 2,
    the Taylor coefficient, and is third order; ``variant="diffusers"`` uses w = 1 as diffusers,
    k-diffusion and the DPM-Solver reference code do, which we measure to be second order
    (tests/test_solver_orders.py). Warm-up orders 1, 2; with ``lower_order_final`` and fewer than 15 steps
    the last two steps use orders 2 and 1 (as diffusers' DPMSolverMultistepScheduler(solver_order=3)).
    ``warmup="refined"`` (variant "taylor" only): one extra evaluation inside the first interval
    (``adams.warmup_times``); with the plain warm-up the first step's error makes 3M second order on a
    generic net, with it the order is 3 (tests/test_named_samplers.py). NFE = K + 1 (K if the first step
    spans >= 1 in lambda). Computed by ``sde_dpm.dpmpp_3m_sde(eta=0)``, the same update.
    """
    choice("variant", variant, _3M_VARIANTS)
    choice("warmup", warmup, ("plain", "refined"))
    if warmup == "refined":
        if variant != "taylor":
            raise ValueError("warmup='refined' needs variant='taylor' (the refined warm-up restores the Taylor order 3)")
        from .sde_dpm import dpmpp_3m_sde

        return dpmpp_3m_sde(model, x, ts, noise=noise, callback=callback, eta=0.0, lower_order_final=lower_order_final,
                            warmup="refined")
    return _dpmpp_multistep(model, x, ts, callback, 3, lower_order_final, _3M_VARIANTS[variant])


@solver(order=2, nfe="K", default_spacing="logsnr", stochastic=True, adaptive=False,
        peers=("diffusers.DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++')",),
        order_options={"eta": 0.0, "lower_order_final": False}, weak_order=2)
def dpmpp_2m_sde(model, x, ts, *, noise, callback=None, eta: float = 1.0, lower_order_final: bool = True):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, App. B), midpoint form of k-diffusion ``sample_dpmpp_2m_sde``:
    x_t = (sigma_t/sigma_s) e^{-eta h} x + alpha_t (1 - e^{-(1+eta) h}) [x0 + (x0 - x0_prev)/(2 r)]
          + sigma_t sqrt(1 - e^{-2 eta h}) z,    z = noise.interval(s, t).
    eta = 1 is the reverse SDE (diffusers' algorithm_type="sde-dpmsolver++"); eta = 0 is dpmpp_2m.
    The step to t = 0 returns x0 without noise. NFE = K.
    """
    finite_float("eta", eta, 0)
    sde = model.sde
    K = len(ts) - 1
    l_prev = m_prev = None
    for i in range(K):
        s, t = float(ts[i]), float(ts[i + 1])
        a_s, s_s, l_s = _coefs(sde, s)
        a_t, s_t, l_t = _coefs(sde, t)
        m0 = model.predict(x, s).x0
        p = _multistep_order(2, i, K, t, lower_order_final)
        if t == 0:
            x = m0
        else:
            h = l_t - l_s
            c = -math.expm1(-(1.0 + eta) * h)  # 1 - e^{-(1+eta) h}
            decay = math.exp(-eta * h) if eta > 0 else 1.0  # (eta h is 0 * inf = NaN from alpha = 0)
            x_new = (s_t / s_s * decay) * x + (a_t * c) * m0
            if p == 2:
                r = (l_s - l_prev) / h
                x_new = x_new + (0.5 * a_t * c / r) * (m0 - m_prev)
            if eta > 0:
                x_new = x_new + (s_t * math.sqrt(-math.expm1(-2.0 * eta * h))) * noise.interval(s, t)
            x = x_new
        l_prev, m_prev = l_s, m0
        if callback is not None:
            callback(dict(i=i, t=t, x=x, x0=m0))
    return x
