"""Fitting a bespoke linear solver (``solvers/bespoke.py``) to one model: its grid and its whole
coefficient matrix, by Levenberg-Marquardt on the error against tight probability-flow solves.

Parameters, for K steps (NFE = K):
- the grid as in ``tuning`` (positive log-SNR increments, optionally a free start): K - 1 or K numbers;
- an offset for every entry of the lower-triangular matrix A of rows 1 .. K (row i: the weights of x_T and
  D_0 .. D_(i-1)), K (K + 3) / 2 numbers, added to the base solver's matrix *on the current grid*
  (re-derived by ``linear_coefficients`` whenever the grid moves, so the start point is exactly the base
  solver and a moved time carries its standard weights with it). Offsets are scaled by the size of what
  they multiply: alpha(t_i) for a data prediction entering the state at t_i, sigma(t_i) for x_T, 1 in the
  output row. This is the parameterisation of Bespoke Non-Stationary solvers (Shaul et al. 2024, eq. 8-10;
  they fit it by gradient descent on the same teacher-distance loss, eq. 12).

The Jacobian is exact in the output row (the output is linear in it) and otherwise a forward difference
that re-solves only from the first network evaluation the parameter can change (cached predictions before
it), so one iteration costs sum over parameters of (K - first row) evaluations instead of K per parameter.
Early stopping on validation x_T, as in ``tuning.tune``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

from .levenberg_marquardt import levenberg_marquardt
from .solvers.bespoke import linear_coefficients, run_linear

__all__ = ["fit_bespoke", "Calibration"]


class Calibration:
    """A set of x_T with its reference and conditioning, and the predictions of the current point."""

    def __init__(self, model, x, ref, kw):
        self.model, self.x, self.ref, self.kw = model, x, ref.double(), kw
        self.scale = 1.0 / math.sqrt(ref.numel())

    def solve(self, A: torch.Tensor, ts: torch.Tensor, start: int = 0, D: Optional[list] = None):
        """(output, predictions) of the linear solver with matrix A on ts, re-using D[:start]."""
        m = self.model
        with torch.no_grad(), m.conditioned(self.kw.get("cond"), guidance=self.kw.get("guidance"),
                                            batch=self.x.shape[0], device=self.x.device):
            return run_linear(m, self.x, ts, A, start=start, D=D)

    def residual(self, out: torch.Tensor) -> Optional[np.ndarray]:
        r = ((out.double() - self.ref) * self.scale).flatten().cpu().numpy()
        return r if np.isfinite(r).all() else None

    def rmse(self, out: torch.Tensor) -> float:
        v = float(torch.sqrt(((out.double() - self.ref) ** 2).mean()))
        return v if math.isfinite(v) else 1e6


class _Matrix:
    """Flat parameters <-> (grid, A)."""

    def __init__(self, model, K: int, grid_of: Callable, n_grid: int, base: str, base_options: dict):
        self.model, self.K, self.grid_of, self.n_grid = model, K, grid_of, n_grid
        self.base, self.base_options = base, dict(base_options or {})
        self.rows = [i for i in range(1, K + 1) for _ in range(i + 1)]
        self.cols = [j for i in range(1, K + 1) for j in range(i + 1)]
        self.size = n_grid + len(self.rows)

    def unpack(self, p: np.ndarray):
        ts = self.grid_of(p[: self.n_grid])
        A0 = linear_coefficients(self.model.sde, self.base, ts, self.base_options)
        t = ts[:-1]
        sig, alp = self.model.sde.sigma(t).double(), self.model.sde.alpha(t).double()
        S = torch.ones(self.K + 1, self.K + 1, dtype=torch.float64)
        S[: self.K, 0] = sig
        S[: self.K, 1:] = alp[:, None]
        d = torch.zeros_like(A0)
        d[self.rows, self.cols] = torch.as_tensor(p[self.n_grid:], dtype=torch.float64)
        return ts, (A0 + S * d).tril(), S

    def first_row(self, k: int, free_start: bool) -> int:
        """The first network evaluation parameter k can change."""
        if k < self.n_grid:
            return k if free_start else k + 1
        return self.rows[k - self.n_grid]


def fit_bespoke(model, K: int, base: str, base_options: dict, grid_of: Callable, u0: np.ndarray, free_start: bool,
                cal: Calibration, val: Optional[Calibration], maxfev: int, patience: int, start_grid: torch.Tensor,
                A_start=None, on_log: Optional[Callable] = None, h: float = 1e-3) -> dict:
    """Levenberg-Marquardt (Marquardt 1963, scaled damping) over (grid, matrix offsets) from the base solver on
    the grid ``grid_of(u0)``; ``maxfev`` counts K-evaluation solves of the calibration set. Returns the best point
    on validation with its history; the first candidate is the start: ``A_start`` (rows of a lower-triangular
    matrix, e.g. a shipped configuration's) or the base solver on ``start_grid``, so the result is never worse
    than it on validation. The fit starts from the offsets that make ``A_start`` on ``grid_of(u0)``."""
    P = _Matrix(model, K, grid_of, len(u0), base, base_options)
    p = np.concatenate([np.asarray(u0, dtype=np.float64), np.zeros(P.size - len(u0))])
    if A_start is None:
        A_start = linear_coefficients(model.sde, base, start_grid, base_options)
    else:
        A_start = torch.tensor([list(r) + [0.0] * (K + 1 - len(r)) for r in A_start], dtype=torch.float64)
        _, A0, S = P.unpack(p)  # offsets: (A_start - base matrix on the start grid) / scale
        p[P.n_grid:] = ((A_start - A0) / S)[P.rows, P.cols].numpy()
    def point(q):
        try:
            return P.unpack(q)
        except ValueError:
            return None

    last = {}  # the predictions of the latest calibration solve, for the Jacobian at an accepted point

    def resid(q):
        pt = point(q)
        if pt is None:
            return None
        out, D = cal.solve(pt[1], pt[0])
        last.clear()
        last[q.tobytes()] = D
        return cal.residual(out)

    order = [P.first_row(k, free_start) for k in range(P.size)]

    def jacobian(q, r):
        D = last.get(q.tobytes())
        if D is None:
            ts, A, _ = P.unpack(q)
            D = cal.solve(A, ts)[1]
        S = P.unpack(q)[2]
        J, spent = np.empty((r.size, P.size)), 0.0
        basis = [cal.x] + D
        for k in range(P.size):
            row = order[k]
            if k >= P.n_grid and row == K:  # the output row: exact, the output is linear in it
                col = P.cols[k - P.n_grid]
                J[:, k] = (S[K, col].item() * basis[col].double() * cal.scale).flatten().cpu().numpy()
                continue
            rk = None
            for sign in (1.0, -1.0):  # forward difference; backward at the edge of the valid region
                qk = q.copy()
                qk[k] += sign * h
                pt = point(qk)
                if pt is not None:
                    rk = cal.residual(cal.solve(pt[1], pt[0], row, D)[0])
                    spent += (K - row) / K
                if rk is not None:
                    J[:, k] = sign * (rk - r) / h
                    break
            if rk is None:
                J[:, k] = 0.0
        return J, spent

    start_cal = cal.rmse(cal.solve(A_start, start_grid)[0])
    vs = val or cal
    start_val = vs.rmse(vs.solve(A_start, start_grid)[0]) if val is not None else start_cal
    best = dict(grid=start_grid, A=A_start, cal=start_cal, val=start_val, iteration=0)
    history = [dict(iteration=0, calibration_rmse=start_cal, validation_rmse=start_val)]
    stale = [0]

    def on_iterate(q, rmse):
        ts, A, _ = P.unpack(q)
        v = vs.rmse(vs.solve(A, ts)[0]) if val is not None else rmse
        it = len(history)
        history.append(dict(iteration=it, calibration_rmse=rmse, validation_rmse=v))
        if on_log is not None:
            on_log(it, rmse, v)
        if v < best["val"]:
            best.update(grid=ts, A=A, cal=rmse, val=v, iteration=it)
            stale[0] = 0
            return False
        stale[0] += 1
        return stale[0] >= patience

    _, spent = levenberg_marquardt(resid, p, maxfev, on_iterate, jacobian=jacobian, jacobian_cost=0, h=h)
    A = best["A"]
    rows = [[float(v) for v in A[i, : i + 1]] for i in range(K + 1)]
    return dict(grid=best["grid"], options={"base": base, **({"base_options": dict(base_options)} if base_options else {}),
                                            "coefficients": rows},
                cal=best["cal"], val=best["val"], start_cal=start_cal, start_val=start_val,
                iteration=best["iteration"], history=history, parameters=P.size, solves=round(spent, 1))
