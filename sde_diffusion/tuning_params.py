"""What ``tuning.tune`` optimises and where it starts: the grid as positive log-SNR increments (with an optional
free start), DPM-Solver++(2M)'s standard per-step weights (Lu et al. 2022b, Alg. 2) that learned weights are
offsets from, the flat-parameter problem (grid, weights, network-time shifts), the starting grids (standard
spacings, diffusers' leading span, shipped configurations), and the error measures. See ``tuning``'s docstring.
"""

from __future__ import annotations

import numpy as np
import torch

from .grids import check_grid
from .tuned_files import shipped_tuned

__all__ = ["standard_coefficients", "check_inits", "Problem", "shipped_matrices", "shipped_grid", "rmse",
           "median_sample_rmse"]


# ---- parameterisation -------------------------------------------------------------------------------

def _lam(model, t) -> np.ndarray:
    return model.sde.log_snr(torch.as_tensor(t, dtype=torch.float64)).numpy()


def _grid_from_u(model, u: np.ndarray, lam0: float, t_start: float, free_start: bool) -> torch.Tensor:
    lam = lam0 + np.cumsum(np.logaddexp(0.0, u))  # strictly increasing log-SNR (decreasing t)
    ts = model.sde.t_from_log_snr(torch.as_tensor(lam, dtype=torch.float64))
    head = [] if free_start else [torch.tensor([t_start], dtype=torch.float64)]
    return torch.cat([*head, ts.reshape(-1), torch.zeros(1, dtype=torch.float64)])


def _u_from_grid(model, grid: torch.Tensor, lam0: float, free_start: bool) -> np.ndarray:
    lam = np.atleast_1d(_lam(model, grid[:-1]))
    inc = np.diff(np.concatenate([[lam0], lam]) if free_start else lam)
    inc = np.maximum(inc, 1e-4)
    return np.where(inc > 30, inc, np.log(np.expm1(np.minimum(inc, 30))))  # inverse softplus


def standard_coefficients(model, grid: torch.Tensor, lower_order_final: bool = True) -> np.ndarray:
    """DPM-Solver++(2M)'s weights w_i = 1/(2 r_i), r_i = h_{i-1}/h_i, for steps i = 1 .. K-1 of ``grid``
    (0 on a step to t = 0 and, with ``lower_order_final`` and K < 15, on the last step)."""
    K = len(grid) - 1
    lam = np.concatenate([np.atleast_1d(_lam(model, grid[:-1])), [np.inf]])
    w = []
    for i in range(1, K):
        if float(grid[i + 1]) == 0 or (lower_order_final and K < 15 and i == K - 1):
            w.append(0.0)
        else:
            w.append(0.5 * (lam[i + 1] - lam[i]) / (lam[i] - lam[i - 1]))
    return np.asarray(w, dtype=np.float64)


def check_inits(inits) -> tuple:
    """The starting-grid names of ``tune(inits=...)``: grid spacings, ``leading-span`` and ``tuned``."""
    from .grids import SPACINGS

    valid = tuple(SPACINGS) + ("leading-span", "tuned")
    if isinstance(inits, str) or not inits or any(v not in valid and not str(v).startswith("tuned:") for v in inits):
        raise ValueError(f"inits must be a non-empty list of starting grids, each one of: {', '.join(valid)}, "
                         f"tuned:SOLVER (bespoke: that shipped configuration's matrix); got {inits!r}")
    return tuple(inits)


def shipped_matrices(model, steps: int, guidance) -> dict:
    """{"tuned:<solver>": (grid, A)} for every configuration shipped for ``model`` with ``steps`` steps (and this
    guidance) whose solver is linear (bespoke, its bases, dpmpp_2m with learned weights and network times): its
    coefficient matrix found by a probe run, on the grid of its network-evaluation times."""
    from .solvers import SOLVERS
    from .solvers.bespoke import BASES, probe_matrix

    configs, _ = shipped_tuned(model)
    g = None if guidance in (None, 1, 1.0) else float(guidance)
    out = {}
    for c in configs:
        cg = None if c.get("guidance") in (None, 1, 1.0) else float(c["guidance"])
        if int(c["steps"]) != steps or cg != g or c["solver"] not in BASES + ("bespoke",):
            continue
        ts = torch.tensor(c["ts"], dtype=torch.float64)
        if c["solver"] == "bespoke":
            grid, A = ts, [list(r) for r in c["options"]["coefficients"]]
        else:
            M, times = probe_matrix(model.sde, SOLVERS[c["solver"]], ts, c["options"])
            if len(times) != steps:
                continue
            grid = torch.tensor(times + [float(ts[-1])], dtype=torch.float64)
            if not bool((grid[1:] < grid[:-1]).all()):
                continue  # network times out of order: not a grid
            A = [[float(v) for v in M[i, : i + 1]] for i in range(steps + 1)]
        fixed = ",".join(f"{k}={v}" for k, v in sorted(c["options"].items()) if k not in ("coefficients", "eval_times"))
        key = f"tuned:{c['solver']}" + (f":{fixed}" if fixed else "")
        out[key] = (grid, A)
    return out


def shipped_grid(model, solver: str, steps: int, options: dict) -> torch.Tensor:
    """The grid of the shipped grid-only configuration of (solver, steps) with these options (init "tuned")."""
    configs, where = shipped_tuned(model)
    for c in configs:
        if (c["solver"] == solver and int(c["steps"]) == steps and c.get("guidance") in (None, 1, 1.0)
                and dict(c["options"]) == dict(options)):
            return check_grid(c["ts"])
    raise ValueError(f"init 'tuned': no shipped grid-only configuration {solver}/{steps} with options {options} "
                     f"(in {where})")


class Problem:
    """Maps a flat parameter vector to (grid, solver options)."""

    def __init__(self, model, solver, steps, t_start, free_start, learn_coefficients, options, learn_shifts=False):
        self.model, self.solver, self.K = model, solver, steps
        self.shift = bool(learn_shifts)
        self.lam_top = float(_lam(model, 1.0))
        self.t_start, self.free = float(t_start), bool(free_start)
        self.lam0 = float(_lam(model, self.t_start))
        self.coef = bool(learn_coefficients)
        self.options = dict(options)
        self.n_grid = steps if self.free else steps - 1

    def unpack(self, p: np.ndarray):
        grid = check_grid(_grid_from_u(self.model, p[: self.n_grid], self.lam0, self.t_start, self.free))
        if float(grid[-2]) <= 0:
            raise ValueError("collapsed grid")
        opts = dict(self.options)
        n = self.n_grid
        if self.coef:
            w = standard_coefficients(self.model, grid, self.options.get("lower_order_final", True)) + p[n:n + self.K - 1]
            opts["coefficients"] = [float(v) for v in w]
            n += self.K - 1
        if self.shift:  # network times: the grid's log-SNR + a learned offset, kept at t <= 1
            lam = np.maximum(np.atleast_1d(_lam(self.model, grid[:-1])) + p[n:n + self.K], self.lam_top)
            te = self.model.sde.t_from_log_snr(torch.as_tensor(lam, dtype=torch.float64)).reshape(-1)
            opts["eval_times"] = [min(max(float(t), 1e-6), 1.0) for t in te]
        return grid, opts

    def pack(self, grid: torch.Tensor) -> np.ndarray:
        u = _u_from_grid(self.model, grid, self.lam0, self.free)
        parts = [u] + ([np.zeros(self.K - 1)] if self.coef else []) + ([np.zeros(self.K)] if self.shift else [])
        return np.concatenate(parts)


def rmse(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.sqrt(((out.double() - ref.double()) ** 2).mean()))


def median_sample_rmse(out: torch.Tensor, ref: torch.Tensor) -> float:
    """The median over x_T of each sample's pixel RMSE (robust to a single far-off x_T)."""
    return float(((out.double() - ref.double()) ** 2).flatten(1).mean(1).sqrt().median())
