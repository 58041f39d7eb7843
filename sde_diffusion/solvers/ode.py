"""Adaptive solvers of the probability-flow ODE (Song et al. 2021, eq. 13) through torchdiffeq or scipy.

The right-hand side (in log-SNR lambda, default, or in t), its clamping to the integration span and
the two back ends live in ``sde_diffusion/pf_ode.py``, shared with ``likelihood.py``; this module
adds the sampling plan. The lambda form keeps the state x (so rtol/atol mean what they mean in
score_sde) and is integrated forward (lambda increases from noise to data).

A grid ending at t = 0 is integrated to ``t_eps`` (1/N for a discrete SDE, 1e-3 otherwise) and
finished by one denoising step x0_hat(x, t_eps) (1 NFE); a grid ending at t > 0 is integrated
exactly to its end, without denoising. Interior grid times are output times (dense interpolation);
at those the callback gets ``x0=None`` (computing it would cost an NFE).
"""

from __future__ import annotations


import torch

from ..pf_ode import SCIPY_METHODS, VARIABLES as ODE_VARIABLES, ProbabilityFlow, check_method, solve
from ..validation import finite_float
from .spec import solver

__all__ = ["ode", "scipy", "ODE_VARIABLES", "SCIPY_METHODS"]


def _plan(model, ts, t_eps, variable):
    """Float64 output times (ts[1:], with a final 0 replaced by t_eps) and the denoise flag."""
    if variable not in ODE_VARIABLES:
        raise ValueError(f"unknown variable {variable!r}; valid: {', '.join(ODE_VARIABLES)}")
    sde = model.sde
    times = [float(t) for t in ts]
    if sde.alpha(times[0]) == 0.0:
        raise ValueError(f"the probability-flow ODE cannot start where alpha = 0 (t = {times[0]}); "
                         "start below it, e.g. ts=[0.999, 0]")
    denoise = times[-1] == 0.0
    if denoise:
        if t_eps is None:
            t_eps = 1.0 / sde.num_train_steps if sde.num_train_steps else 1e-3
        if not (0.0 < t_eps < times[-2]):
            raise ValueError(f"t_eps must lie in (0, {times[-2]}) (before the last grid time), got {t_eps!r}")
        times[-1] = float(t_eps)
    return times, denoise


def _solve_batches(model, x, ts, callback, t_eps, variable, per_sample, method, rtol, atol, options):
    """Solve the PF-ODE (``pf_ode.solve`` with ``method``) on the whole batch or on each sample alone,
    denoise if the grid ends at 0, call the callback, and collect the info."""
    times, denoise = _plan(model, ts, t_eps, variable)
    chunks = [slice(k, k + 1) for k in range(x.shape[0])] if per_sample else [slice(None)]
    outs, stats = [], []
    for rows in chunks:
        xc = x[rows]
        nfe0 = model.nfe
        f = ProbabilityFlow(model, times[0], times[-1], variable)
        us = [f.u_of(t) for t in times]
        with model.rows(rows):  # conditioning follows the samples (see NoisePredictor.rows)
            states, extra = solve(f, xc, us, method, rtol, atol, options)
            if denoise:  # x0_hat at t_eps: score_sde's final denoising step
                states.append(model.predict(states[-1], times[-1]).x0)
        outs.append(states)
        stats.append(dict(nfe=model.nfe - nfe0, **extra))
    states = [torch.cat(s) for s in zip(*outs)]
    n_out = len(ts) - 1
    if callback is not None:
        for i in range(n_out):
            last = i == n_out - 1
            x0 = states[-1] if (last and denoise) else None
            callback(dict(i=i, t=float(ts[i + 1]), x=states[-1] if last else states[i], x0=x0))
    counts = ("nfe", "accepted", "rejected", "nfev", "njev", "nlu")
    info = {k: sum(s[k] for s in stats) for k in counts if k in stats[0]}
    info.update(t_end=times[-1], denoised=denoise, variable=variable)
    if per_sample:
        info["per_sample"] = stats
        info["nfe_per_sample"] = [s["nfe"] for s in stats]
    else:
        info.update({k: v for k, v in stats[0].items() if k not in counts})
    return states[-1], info


def _check_tol(rtol, atol):
    finite_float("rtol", rtol, 0, strict=True)
    finite_float("atol", atol, 0, strict=True)


# dopri5 (default method): 2 evaluations to start, 6 per attempted step (FSAL), + 1 denoising
@solver(order=None, nfe="2 + 6*(accepted + rejected) + z", default_spacing=None, stochastic=False, adaptive=True, peers=())
def ode(model, x, ts, *, noise=None, callback=None, method="dopri5", rtol=1e-5, atol=1e-5, t_eps=None,
        variable="lambda", per_sample=False, options=None):
    """Probability-flow ODE (Song et al. 2021, eq. 13) by ``torchdiffeq.odeint`` (Chen et al. 2018).

    ``method``: any torchdiffeq method ("dopri5" default, "dopri8", "bosh3", "adaptive_heun", or a
    fixed-grid one such as "rk4" with ``options={"step_size": h}`` in units of ``variable``);
    ``rtol``/``atol``: its tolerances (score_sde: 1e-5); ``variable``: "lambda" (default) or "t"
    (see the module docstring); ``options`` go to odeint. Adaptive RK methods get ``step_t`` at the
    end time so no step reaches past it. ``per_sample=True``: each sample is solved alone with its
    own step-size control, so its result and NFE do not depend on its batch-mates (the default
    solves the batch as one state whose error norm mixes all samples).
    NFE: every net call, rejected steps included (dopri5: 6 per attempted step + 2 to start),
    plus 1 for the final denoising step when the grid ends at t = 0.
    info: nfe, accepted, rejected (adaptive RK methods), t_end, and per-sample lists if per_sample.
    """
    _check_tol(rtol, atol)
    if method.startswith("scipy:") or check_method(method)[0] != "torchdiffeq":
        raise ValueError(f"unknown torchdiffeq method {method!r}; for scipy's use solver='scipy'")
    return _solve_batches(model, x, ts, callback, t_eps, variable, per_sample, method, rtol, atol, options)


# explicit RK45 (default method): scipy's nfev, + 1 denoising
@solver(order=None, nfe="nfev + z", default_spacing=None, stochastic=False, adaptive=True, peers=())
def scipy(model, x, ts, *, noise=None, callback=None, method="RK45", rtol=1e-5, atol=1e-5, t_eps=None,
          variable="lambda", per_sample=False):
    """Probability-flow ODE by ``scipy.integrate.solve_ivp`` on the flattened batch in float64, as
    score_sde's ``get_ode_sampler`` (RK45, rtol = atol = 1e-5, then a denoising step).

    ``method``: "RK45" (default), "RK23", "DOP853", "Radau", "BDF", "LSODA" (the implicit ones build a
    finite-difference Jacobian: one net call per state entry, so only for small problems).
    The net runs in x's dtype/device; the state and right-hand side stay float64 numpy arrays.
    NFE: every net call (scipy's nfev, plus Jacobian columns for implicit methods), plus 1 for
    the final denoising step when the grid ends at t = 0.
    info: nfe, accepted (steps taken), nfev/njev/nlu and status/message from scipy, t_end.
    """
    _check_tol(rtol, atol)
    if method not in SCIPY_METHODS:
        raise ValueError(f"unknown scipy method {method!r}; valid: {', '.join(SCIPY_METHODS)}")
    return _solve_batches(model, x, ts, callback, t_eps, variable, per_sample, f"scipy:{method}", rtol, atol, None)
