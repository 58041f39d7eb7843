"""Adaptive solvers of the probability-flow ODE (Song et al. 2021, eq. 13) through torchdiffeq or scipy.

In time t (score_sde's form):        dx/dt      = -1/2 beta(t) (x - eps(x, t) / sigma_t).
In log-SNR lambda = log(alpha/sigma) (default, ``variable="lambda"``):
                                      dx/dlambda = sigma (sigma x - eps(x, t(lambda))).
Derivation: y = x/alpha obeys dy/dsigma_VE = eps with sigma_VE = e^-lambda (Karras et al. 2022,
eq. 4; Lu et al. 2022, eq. 3.4), and d alpha / d lambda = alpha sigma^2, so
dx/dlambda = sigma^2 x - alpha sigma_VE eps. Multiplying by dlambda/dt = -beta / (2 sigma^2) gives
the t form back. The lambda form keeps the state x (so rtol/atol mean what they mean in score_sde)
with a right-hand side bounded by |x| + |eps|, while in t it grows like |eps|/sigma as t -> 0; it
also hides the kinks of a discrete chain's piecewise-linear log alpha(t). It is integrated forward
(lambda increases from noise to data).

A grid ending at t = 0 is integrated to ``t_eps`` (1/N for a discrete SDE, 1e-3 otherwise) and
finished by one denoising step x0_hat(x, t_eps) (1 NFE); a grid ending at t > 0 is integrated
exactly to its end, without denoising. Interior grid times are output times (dense interpolation);
at those the callback gets ``x0=None`` (computing it would cost an NFE).
"""

from __future__ import annotations

import math

import torch

from ..model import NonFiniteOutput
from .spec import solver

__all__ = ["ode", "scipy", "ODE_VARIABLES"]

ODE_VARIABLES = ("lambda", "t")


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


class _ProbabilityFlow:
    """The PF-ODE right-hand side f(u, x) in u = lambda or t, float64 schedule scalars.

    ``u`` is clamped into the integration span so a solver probing past the end time (torchdiffeq
    overshooting, float32 rounding of u) never evaluates the net outside it, and never at t = 0.
    Counts accepted/rejected steps through torchdiffeq's step callbacks; raises ``NonFiniteOutput`` on a non-finite eps even when the
    model's own check is off (a NaN would otherwise stall the step-size control)."""

    def __init__(self, model, variable, u_start, u_end):
        self.model, self.variable = model, variable
        self.lo, self.hi = min(u_start, u_end), max(u_start, u_end)
        self.accepted = self.rejected = 0

    def times(self, t):
        """u of time t."""
        return float(self.model.sde.log_snr(t)) if self.variable == "lambda" else float(t)

    def __call__(self, u, x):
        u = min(max(float(u), self.lo), self.hi)
        sde = self.model.sde
        t = float(sde.t_from_log_snr(u)) if self.variable == "lambda" else u
        eps = self.model.predict(x, t).eps
        if not torch.isfinite(eps).all():
            raise NonFiniteOutput(f"net returned NaN/inf at t={t:.6g} inside the ODE solve")
        if self.variable == "lambda":
            sig = math.sqrt(1.0 / (1.0 + math.exp(2.0 * u)))  # sigma^2 = sigmoid(-2 lambda)
            return sig * (sig * x - eps)
        return -0.5 * sde.beta(t) * (x - eps / sde.sigma(t))

    # torchdiffeq step callbacks (adaptive Runge-Kutta methods only)
    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1


def _solve_batches(model, x, ts, callback, t_eps, variable, per_sample, solve_one):
    """Run ``solve_one(f, x, us) -> (list of states at us[1:], extra info)`` on the whole batch or on
    each sample alone, denoise if the grid ends at 0, call the callback, and collect the info."""
    times, denoise = _plan(model, ts, t_eps, variable)
    chunks = [slice(k, k + 1) for k in range(x.shape[0])] if per_sample else [slice(None)]
    outs, stats = [], []
    for rows in chunks:
        xc = x[rows]
        nfe0 = model.nfe
        f = _ProbabilityFlow(model, variable, 0.0, 0.0)
        us = [f.times(t) for t in times]
        f.lo, f.hi = min(us[0], us[-1]), max(us[0], us[-1])
        with model.rows(rows):  # conditioning follows the samples (see NoisePredictor.rows)
            states, extra = solve_one(f, xc, us)
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
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")


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
    import torchdiffeq
    from torchdiffeq._impl.odeint import SOLVERS as TD_SOLVERS
    from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver

    _check_tol(rtol, atol)
    if method not in TD_SOLVERS:
        raise ValueError(f"unknown torchdiffeq method {method!r}; valid: {', '.join(sorted(TD_SOLVERS))}")
    adaptive_rk = issubclass(TD_SOLVERS[method], RKAdaptiveStepsizeODESolver)

    def solve_one(f, xc, us):
        opts = dict(options or {})
        if adaptive_rk:
            opts.setdefault("step_t", torch.tensor([us[-1]], dtype=torch.float64))
        func = f if adaptive_rk else (lambda u, y: f(u, y))  # step callbacks only where supported
        u = torch.tensor(us, dtype=torch.float64, device=xc.device)
        sol = torchdiffeq.odeint(func, xc, u, rtol=rtol, atol=atol, method=method, options=opts)
        steps = dict(accepted=f.accepted, rejected=f.rejected) if adaptive_rk else {}
        return [s for s in sol[1:]], steps

    return _solve_batches(model, x, ts, callback, t_eps, variable, per_sample, solve_one)


SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


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
    import numpy as np
    from scipy.integrate import solve_ivp

    _check_tol(rtol, atol)
    if method not in SCIPY_METHODS:
        raise ValueError(f"unknown scipy method {method!r}; valid: {', '.join(SCIPY_METHODS)}")

    def solve_one(f, xc, us):
        shape, dtype, device = xc.shape, xc.dtype, xc.device

        def fun(u, y):
            xt = torch.from_numpy(y).reshape(shape).to(dtype=dtype, device=device)
            return f(u, xt).to(torch.float64).cpu().numpy().ravel()  # rhs in float64

        y0 = xc.detach().to(torch.float64).cpu().numpy().ravel()
        sol = solve_ivp(fun, (us[0], us[-1]), y0, method=method, rtol=rtol, atol=atol,
                        dense_output=len(us) > 2)
        if sol.status != 0:
            raise RuntimeError(f"scipy solve_ivp ({method}) failed: {sol.message}")
        ys = [sol.sol(u) for u in us[1:-1]] + [sol.y[:, -1]]
        states = [torch.from_numpy(np.ascontiguousarray(y)).reshape(shape).to(dtype=dtype, device=device) for y in ys]
        return states, dict(accepted=len(sol.t) - 1, nfev=int(sol.nfev), njev=int(sol.njev), nlu=int(sol.nlu), status=int(sol.status),
                            message=str(sol.message))

    return _solve_batches(model, x, ts, callback, t_eps, variable, per_sample, solve_one)
