"""Bespoke linear solver: any fixed-grid deterministic solver written as its coefficient matrix.

Every one-evaluation-per-step deterministic solver of this package (``ddim``, ``euler``, ``dpmpp_2m``,
``dpmpp_3m``, ``unipc``, ``deis``, ``ipndm``, ``lms``) is linear in the starting state and in the
network's data predictions: on a grid t_0 > ... > t_K it computes

    x_0 = A[0,0] x_T,    x_i = A[i,0] x_T + sum_{j<i} A[i,j+1] D_j    (i = 1 .. K),
    D_j = x0(x_j, t_j)   (the j-th network evaluation, at the grid time t_j),

and returns x_K, with a lower-triangular (K+1) x (K+1) matrix A that depends on the grid only. This is
the non-stationary linear multistep family of Bespoke Non-Stationary solvers (Shaul et al. 2024,
"Bespoke Non-Stationary Solvers for Fast Sampling of Diffusion and Flow Models", eq. 8-10, written
for data predictions) and of S4S (Frankel et al. 2025): a predictor-corrector such as UniPC (Zhao et
al. 2023) is in it too, because its corrected state is again such a combination.

``linear_coefficients`` finds A for a base solver on a grid without knowing its formulas: it runs the
solver once on a one-row "probe" state e_0 of dimension K + 1 whose network answers x0 = e_{j+1} at its
j-th call, so the state handed to call i *is* row i of A and the output is row K (exact, because the
solver is linear). ``bespoke(base=S)`` with no coefficients therefore reproduces solver S to float
rounding (tested for every base), and ``bespoke(coefficients=A)`` runs any matrix, e.g. one learned
for a model by ``sde_diffusion.tuning`` (``tune(model, "bespoke", K)``).
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Optional, Sequence

import torch

from ..validation import choice
from .spec import REGISTRY, solver

__all__ = ["bespoke", "linear_coefficients", "probe_matrix", "run_linear", "BASES"]

# one network evaluation per step, at the grid's times, deterministic and linear: the bases
BASES = ("unipc", "dpmpp_3m", "dpmpp_2m", "deis", "ipndm", "lms", "ddim", "euler")


class _Prediction(NamedTuple):
    eps: torch.Tensor
    x0: torch.Tensor


class _Probe:
    """The probe model (what solvers see of a model: ``sde`` and ``predict``): its j-th evaluation answers
    x0 = e_{j+1} whatever the state, and records the state and the time."""

    def __init__(self, sde, dim: int):
        self.sde, self.dim, self.calls, self.times = sde, dim, [], []

    def predict(self, x: torch.Tensor, t) -> _Prediction:
        j = len(self.calls)
        if j + 1 >= self.dim:
            raise ValueError(f"the solver made more than {self.dim - 2} network evaluations on the probe")
        self.calls.append(x.detach().clone())
        tt = float(torch.as_tensor(t, dtype=torch.float64).reshape(-1)[0])
        self.times.append(tt)
        x0 = torch.zeros_like(x)
        x0[:, j + 1] = 1.0
        t64 = torch.tensor(tt, dtype=torch.float64)
        a, s = float(self.sde.alpha(t64)), float(self.sde.sigma(t64))
        return _Prediction((x - a * x0) / s, x0)


def probe_matrix(sde, fn, ts: torch.Tensor, options: Optional[Mapping] = None) -> tuple:
    """(A, eval_times) of the linear solver function ``fn`` with ``options`` on grid ``ts``: row i < M of A is the state
    it hands to its i-th network evaluation (made at eval_times[i]), row M its output, over [x_T, D_0 .. D_(M-1)]."""
    ts = torch.as_tensor(ts, dtype=torch.float64).reshape(-1).cpu()
    dim = 4 * len(ts) + 4
    probe = _Probe(sde, dim)
    x = torch.zeros(1, dim, dtype=torch.float64)
    x[0, 0] = 1.0
    out = fn(probe, x, ts, noise=None, callback=None, **dict(options or {}))
    out = out[0] if isinstance(out, tuple) else out
    M = len(probe.calls)
    return torch.cat([torch.cat(probe.calls), out])[:, : M + 1].tril(), probe.times


def linear_coefficients(sde, base: str, ts: torch.Tensor, base_options: Optional[Mapping] = None) -> torch.Tensor:
    """The (K+1) x (K+1) float64 matrix A of ``base`` on grid ``ts`` (module docstring): row i < K is the state
    the base hands to its i-th network evaluation, row K its output, over [x_T, D_0, ..., D_{K-1}]."""
    choice("base", base, BASES)
    if base_options is not None and not isinstance(base_options, Mapping):
        raise ValueError(f"base_options must be a dict of the base solver's options, got {type(base_options).__name__}")
    ts = torch.as_tensor(ts, dtype=torch.float64).reshape(-1).cpu()
    K = len(ts) - 1
    A, times = probe_matrix(sde, REGISTRY[base].fn, ts, base_options)
    if len(times) != K or any(abs(a - float(b)) > 1e-12 for a, b in zip(times, ts[:-1])):
        raise ValueError(f"base {base!r} does not evaluate the network once at each grid time "
                         f"({len(times)} evaluations for {K} steps); bases: {', '.join(BASES)}")
    return A


def _check_matrix(coefficients, K: int) -> torch.Tensor:
    try:
        rows = [[float(v) for v in row] for row in coefficients]
    except (TypeError, ValueError):
        raise ValueError("coefficients must be a lower-triangular matrix: a list of K + 1 rows of numbers") from None
    if len(rows) != K + 1 or any(len(r) < i + 1 for i, r in enumerate(rows)):
        raise ValueError(f"coefficients must have K + 1 = {K + 1} rows, row i with at least i + 1 numbers "
                         f"(x_T and D_0 .. D_(i-1)); got {len(rows)} rows")
    A = torch.zeros(K + 1, K + 1, dtype=torch.float64)
    for i, r in enumerate(rows):
        if any(v != 0.0 for v in r[i + 1:]):
            raise ValueError(f"coefficients row {i} uses a network evaluation not made yet (entries after column {i})")
        if not all(math.isfinite(v) for v in r[: i + 1]):
            raise ValueError(f"coefficients row {i} has a non-finite number")
        A[i, : i + 1] = torch.tensor(r[: i + 1], dtype=torch.float64)
    return A


def run_linear(model, x_T: torch.Tensor, ts, A: torch.Tensor, callback=None, start: int = 0,
               D: Optional[list] = None) -> tuple:
    """(x_K, [D_0 .. D_(K-1)]) of the linear solver with matrix A (float64 (K+1, K+1)) on grid ts; with
    ``start`` > 0 the predictions D[:start] are re-used (they depend only on rows < start of A)."""
    K = len(ts) - 1
    coef = A.tolist()
    D = list(D[:start]) if start else []
    for i in range(start, K):
        x = x_T if i == 0 and coef[0][0] == 1.0 else _combine(coef[i], x_T, D)  # (x_T itself: a pipeline's latents)
        D.append(model.predict(x, float(ts[i])).x0)
        if callback is not None:
            callback(dict(i=i, t=float(ts[i]), x=x, x0=D[-1]))
    return _combine(coef[K], x_T, D), D


def _combine(row: Sequence[float], x_T: torch.Tensor, D: list) -> torch.Tensor:
    """row[0] x_T + sum_j row[j+1] D_j (zero weights skipped)."""
    out = row[0] * x_T
    for c, d in zip(row[1:], D):
        if c != 0.0:
            out = out + c * d
    return out


@solver(order=3, nfe="K", default_spacing="logsnr", stochastic=False, adaptive=False, peers=(),
        order_options={"base_options": {"lower_order_final": False}},
        variants=(("base=dpmpp_2m", {"base": "dpmpp_2m", "base_options": {"lower_order_final": False}}, 2),))
def bespoke(model, x, ts, *, noise, callback=None, base: str = "unipc", base_options: Optional[Mapping] = None,
            coefficients: Optional[Sequence[Sequence[float]]] = None):
    """Linear solver with coefficient matrix A (module docstring; Shaul et al. 2024, eq. 8-10), NFE = K.

    ``coefficients``: A as K + 1 rows (row i: the weights of x_T, D_0 .. D_(i-1)), e.g. learned by
    ``tune(model, "bespoke", K)``; None: the matrix of ``base`` (one of ``BASES``, with ``base_options``) on ``ts``,
    which reproduces that solver to float rounding.
    """
    choice("base", base, BASES)
    K = len(ts) - 1
    if coefficients is None:
        A = linear_coefficients(model.sde, base, ts, base_options)
    else:
        A = _check_matrix(coefficients, K)
    return run_linear(model, x, ts, A, callback)[0]

