"""Levenberg-Marquardt least squares (Levenberg 1944; Marquardt 1963, "An algorithm for least-squares
estimation of nonlinear parameters", with his diagonal scaling of the damping), as the tuners use it:
residuals that may be undefined (``None``) at invalid points, a budget counted in residual evaluations,
and a per-iteration hook that can stop the fit (early stopping on validation data).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

__all__ = ["levenberg_marquardt", "forward_jacobian"]


def forward_jacobian(resid: Callable, p: np.ndarray, r: np.ndarray, h: float = 1e-3) -> tuple:
    """(J, evaluations): forward differences of ``resid`` at p (backward where p + h e_j is invalid, zero
    where both are)."""
    J = np.empty((r.size, len(p)))
    n = 0
    for j in range(len(p)):
        q = p.copy()
        q[j] += h
        rj = resid(q)
        n += 1
        if rj is None:  # at the edge of the valid region: backward difference
            q[j] = p[j] - h
            rj = resid(q)
            n += 1
            J[:, j] = 0.0 if rj is None else (r - rj) / h
        else:
            J[:, j] = (rj - r) / h
    return J, n


def levenberg_marquardt(resid: Callable, p0: np.ndarray, maxfev: float, on_iterate: Callable,
                        jacobian: Optional[Callable] = None, jacobian_cost: Optional[float] = None,
                        h: float = 1e-3, mu: float = 1e-2) -> tuple:
    """Minimise ||resid(p)||^2 from p0; ``resid`` returns None for an invalid point.

    ``jacobian(p, r)`` returns (J, cost in residual evaluations); default: ``forward_jacobian`` (cost len(p)).
    An iteration starts only while ``spent + jacobian_cost + 1 <= maxfev``; each trial step costs 1.
    ``on_iterate(p, rmse)`` is called after every accepted step and returns True to stop.
    Returns (p, residual evaluations spent)."""
    p = np.asarray(p0, dtype=np.float64).copy()
    r = resid(p)
    spent: float = 1
    if r is None:
        return p, spent
    if jacobian is None:
        def jacobian(q, rq):
            return forward_jacobian(resid, q, rq, h)
        jacobian_cost = len(p)
    cost = float(r @ r)
    while spent + (jacobian_cost or 0) + 1 <= maxfev:
        J, c = jacobian(p, r)
        spent += c
        A, g = J.T @ J, J.T @ r
        d = np.maximum(np.diag(A), 1e-3 * float(np.mean(np.diag(A))) + 1e-30)  # scaled damping, floored
        improved = False
        for _ in range(10):
            q = p - np.linalg.solve(A + mu * np.diag(d), g)
            rq = resid(q)
            spent += 1
            if rq is not None and float(rq @ rq) < cost:
                p, r, cost = q, rq, float(rq @ rq)
                mu = max(mu / 3.0, 1e-7)
                improved = True
                break
            mu *= 4.0
            if spent >= maxfev:
                break
        if not improved or on_iterate(p, math.sqrt(cost)):
            break
    return p, spent
