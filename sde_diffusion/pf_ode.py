"""The probability-flow ODE engine shared by the ``ode``/``scipy`` solvers and by ``likelihood.py``.

The PF-ODE of the VP-SDE (Song et al. 2021, eq. 13), written in u = t or u = lambda = log(alpha/sigma):
    in t:       dx/dt      = -1/2 beta(t) x + beta(t) / (2 sigma_t) eps(x, t)
    in lambda:  dx/dlambda = sigma^2 x - sigma eps(x, t(lambda)),      sigma^2 = sigmoid(-2 lambda).
Derivation of the lambda form: y = x/alpha obeys dy/dsigma_VE = eps with sigma_VE = e^-lambda (Karras
et al. 2022, eq. 4; Lu et al. 2022, eq. 3.4), and d alpha/d lambda = alpha sigma^2, so
dx/dlambda = sigma^2 x - alpha sigma_VE eps; multiplying by dlambda/dt = -beta/(2 sigma^2) gives the t
form back. Both are ``c_x(u) x + c_eps(u) eps``, so the divergence (instantaneous change of variables,
Chen et al. 2018, Thm. 1) is ``c_x D + c_eps div_x eps``: exact (one vector-Jacobian product per
dimension) or Hutchinson's estimate v^T (d eps/dx) v with probes fixed for the whole solve (Hutchinson
1989; Grathwohl et al. 2019). For either variable, log p(x(u0)) = log p(x(u1)) + int_{u0}^{u1} div du.

The lambda form has a right-hand side bounded by |x| + |eps| (in t it grows like |eps|/sigma as
t -> 0) and hides the kinks of a discrete chain's piecewise-linear log alpha(t), so adaptive solvers
need far fewer steps (docs/likelihood.md has the measured NFE). It needs alpha > 0 at both ends.

``u`` is clamped into the integration span before every network call, so a solver probing past the
end time (torchdiffeq overshooting, float32 rounding) never evaluates the net outside it.

Back ends: torchdiffeq (``solve_torchdiffeq``, any of its methods) and scipy (``solve_scipy``,
``solve_ivp``); ``METHODS`` is the one list ("dopri5", ..., "scipy:RK45", ...).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .model import NonFiniteOutput

__all__ = ["ProbabilityFlow", "VARIABLES", "SCIPY_METHODS", "SCIPY_EXPLICIT", "methods", "check_method",
           "solve", "solve_torchdiffeq", "solve_scipy", "DIVERGENCES"]

VARIABLES = ("lambda", "t")
DIVERGENCES = (None, "exact", "hutchinson")
SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
SCIPY_EXPLICIT = ("RK45", "RK23", "DOP853")  # implicit ones build a finite-difference Jacobian: one net call per entry
_F64 = torch.float64


def methods(divergence: bool = False) -> list:
    """The one method list: torchdiffeq's methods, then "scipy:<name>" (explicit ones only with a divergence)."""
    from torchdiffeq._impl.odeint import SOLVERS as TD

    return [m for m in TD if m != "scipy_solver"] + [f"scipy:{m}" for m in (SCIPY_EXPLICIT if divergence else SCIPY_METHODS)]


def check_method(method: str, divergence: bool = False) -> tuple:
    """(back end, name) of ``method``: ("torchdiffeq", "dopri5") or ("scipy", "RK45"); ValueError otherwise."""
    valid = methods(divergence)
    if method not in valid:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(valid)}")
    return ("scipy", method[6:]) if method.startswith("scipy:") else ("torchdiffeq", method)


class ProbabilityFlow:
    """The PF-ODE right-hand side in ``variable`` ("lambda" or "t") between the float64 times
    ``t_start`` and ``t_end`` (either order), with an optional divergence.

    The state may live in another dtype/device than the net (the likelihood keeps a float64 CPU
    state): it is cast to ``net_dtype``/``net_device`` (default: the state's) and reshaped to
    ``net_shape`` (default: the state's) for each call; results come back in the state's dtype/device.
    ``divergence``: None, "exact" or "hutchinson" with ``probes`` (K, *state shape) fixed for the solve.
    Called as ``f(u, x)`` (no divergence) or ``f(u, (x, logp))`` -> (dx/du, div), as torchdiffeq does.
    Counts its evaluations (``evals``) and torchdiffeq's accepted/rejected steps.
    """

    def __init__(self, model, t_start: float, t_end: float, variable: str = "lambda", *, divergence=None,
                 probes: Optional[torch.Tensor] = None, net_shape=None, net_dtype=None, net_device=None):
        if variable not in VARIABLES:
            raise ValueError(f"unknown variable {variable!r}; valid: {', '.join(VARIABLES)}")
        if divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {divergence!r}; valid: None, 'exact', 'hutchinson'")
        if divergence == "hutchinson" and probes is None:
            raise ValueError("divergence='hutchinson' needs probes")
        self.model, self.variable, self.divergence, self.probes = model, variable, divergence, probes
        self.net_shape, self.net_dtype, self.net_device = net_shape, net_dtype, net_device
        if variable == "lambda":
            for t in (t_start, t_end):
                if model.sde.alpha(t) == 0.0:
                    raise ValueError(f"the probability flow in lambda needs alpha > 0, but alpha({t}) = 0; "
                                     "end below that time or use variable='t'")
        self.t_start, self.t_end = float(t_start), float(t_end)
        self.u_start, self.u_end = self.u_of(t_start), self.u_of(t_end)
        self.lo, self.hi = min(self.u_start, self.u_end), max(self.u_start, self.u_end)
        self.evals = self.accepted = self.rejected = 0

    def u_of(self, t: float) -> float:
        """u of time t (float64)."""
        return float(self.model.sde.log_snr(t)) if self.variable == "lambda" else float(t)

    def t_of(self, u: float) -> float:
        """Time of u, with u clamped into the span first (the span's ends map to its end times exactly)."""
        u = min(max(float(u), self.lo), self.hi)
        if self.variable == "t":
            return u
        for u_e, t_e in ((self.u_start, self.t_start), (self.u_end, self.t_end)):
            if abs(u - u_e) <= 1e-12 * max(1.0, abs(u_e)):  # an end, up to the rounding of u in the solver
                return t_e
        t = float(self.model.sde.t_from_log_snr(u))
        return min(max(t, min(self.t_start, self.t_end)), max(self.t_start, self.t_end))

    def coefficients(self, u: float) -> tuple:
        """(t, c_x, c_eps) with dx/du = c_x x + c_eps eps(x, t), float64 scalars."""
        u = min(max(float(u), self.lo), self.hi)
        sde = self.model.sde
        if self.variable == "lambda":
            sig = math.sqrt(1.0 / (1.0 + math.exp(2.0 * u)))  # sigma^2 = sigmoid(-2 lambda)
            return self.t_of(u), sig * sig, -sig
        beta, sigma = float(sde.beta(u)), float(sde.sigma(u))
        return u, -0.5 * beta, 0.5 * beta / sigma

    def _eps(self, x: torch.Tensor, t: float, need_grad: bool):
        """(x as the net sees it, eps in the state's shape/dtype/device)."""
        xin = x.detach().to(device=self.net_device or x.device, dtype=self.net_dtype or x.dtype)
        if need_grad:
            xin.requires_grad_(True)
        eps = self.model.predict(xin.reshape(self.net_shape or x.shape), t).eps.reshape(x.shape)
        if not torch.isfinite(eps).all():
            raise NonFiniteOutput(f"net returned NaN/inf at t={t:.6g} inside the ODE solve")
        return xin, eps

    def __call__(self, u, state):
        self.evals += 1
        t, c_x, c_e = self.coefficients(u)
        x = state[0] if isinstance(state, tuple) else state
        if self.divergence is None:
            _, eps = self._eps(x, t, False)
            return c_x * x + c_e * eps.to(device=x.device, dtype=x.dtype)
        with torch.enable_grad():
            xin, eps = self._eps(x, t, True)
            B, D = x.shape[0], x[0].numel()
            div = torch.zeros(B, dtype=_F64, device=xin.device)
            if self.divergence == "exact":  # diagonal of d eps/dx, one VJP per dimension
                flat = eps.reshape(B, D)
                for i in range(D):
                    (g,) = torch.autograd.grad(flat[:, i].sum(), xin, retain_graph=i < D - 1)
                    div += g.reshape(B, D)[:, i].to(_F64)
            else:  # Hutchinson: mean_k v_k^T (d eps/dx) v_k, probes fixed for the solve
                K = self.probes.shape[0]
                for k in range(K):
                    vk = self.probes[k].to(device=xin.device, dtype=xin.dtype).reshape(eps.shape)
                    (g,) = torch.autograd.grad(eps, xin, grad_outputs=vk, retain_graph=k < K - 1)
                    div += (g * vk).reshape(B, D).sum(1).to(_F64)
                div /= K
        f = c_x * x + c_e * eps.detach().to(device=x.device, dtype=x.dtype)
        div = (c_x * D + c_e * div).to(device=state[1].device, dtype=state[1].dtype)
        return f, div

    # torchdiffeq step callbacks (adaptive Runge-Kutta methods only)
    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1


def solve_torchdiffeq(f: ProbabilityFlow, state0, us, method: str, rtol: float, atol: float, options=None):
    """Integrate with ``torchdiffeq.odeint`` through the float64 u values ``us``; returns (the states at
    us[1:], info). Adaptive RK methods get ``step_t`` at the end so no step reaches past it."""
    import torchdiffeq
    from torchdiffeq._impl.odeint import SOLVERS as TD
    from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver

    adaptive_rk = issubclass(TD[method], RKAdaptiveStepsizeODESolver)
    opts = dict(options or {})
    if adaptive_rk:
        opts.setdefault("step_t", torch.tensor([us[-1]], dtype=_F64))
    func = f if adaptive_rk else (lambda u, y: f(u, y))  # step callbacks only where supported
    x0 = state0[0] if isinstance(state0, tuple) else state0
    u = torch.tensor(us, dtype=_F64, device=x0.device)
    with torch.no_grad():
        sol = torchdiffeq.odeint(func, state0, u, rtol=rtol, atol=atol, method=method, options=opts)
    states = [tuple(s[i] for s in sol) for i in range(1, len(us))] if isinstance(state0, tuple) else list(sol[1:])
    return states, (dict(accepted=f.accepted, rejected=f.rejected) if adaptive_rk else {})


def solve_scipy(f: ProbabilityFlow, state0, us, method: str, rtol: float, atol: float, options=None):
    """Integrate with ``scipy.integrate.solve_ivp`` on the flattened float64 state (dense output for
    interior times); returns (the states at us[1:], info with nfev/njev/nlu/accepted)."""
    import numpy as np
    from scipy.integrate import solve_ivp

    parts = list(state0) if isinstance(state0, tuple) else [state0]
    metas = [(p.shape, p.dtype, p.device, p.numel()) for p in parts]

    def unflat(y):
        out, i = [], 0
        for shape, dtype, device, n in metas:
            out.append(torch.from_numpy(np.ascontiguousarray(y[i:i + n])).reshape(shape).to(dtype=dtype, device=device))
            i += n
        return tuple(out) if isinstance(state0, tuple) else out[0]

    def flat(s):
        s = s if isinstance(s, tuple) else (s,)
        return np.concatenate([p.detach().to(_F64).cpu().numpy().ravel() for p in s])

    def fun(u, y):
        return flat(f(u, unflat(y)))  # the right-hand side in float64

    sol = solve_ivp(fun, (us[0], us[-1]), flat(state0), method=method, rtol=rtol, atol=atol,
                    dense_output=len(us) > 2, **(options or {}))
    if sol.status != 0:
        raise RuntimeError(f"scipy solve_ivp ({method}) failed: {sol.message}")
    ys = [sol.sol(u) for u in us[1:-1]] + [sol.y[:, -1]]
    info = dict(accepted=len(sol.t) - 1, nfev=int(sol.nfev), njev=int(sol.njev), nlu=int(sol.nlu),
                status=int(sol.status), message=str(sol.message))
    return [unflat(y) for y in ys], info


def solve(f: ProbabilityFlow, state0, us, method: str, rtol: float, atol: float, options=None):
    """``solve_torchdiffeq`` or ``solve_scipy`` by the method name ("dopri5" or "scipy:RK45")."""
    backend, name = check_method(method, divergence=f.divergence is not None)
    run = solve_scipy if backend == "scipy" else solve_torchdiffeq
    return run(f, state0, us, name, rtol, atol, options)
