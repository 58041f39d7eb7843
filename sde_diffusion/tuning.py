"""Model-tuned time grids: choose the K - 1 interior times of a K-step grid to minimise the
solver's error against a tight probability-flow solve, on calibration noise.

At very low NFE the placement of the few steps matters as much as the solver's order
(Sabour et al. 2024, "Align Your Steps"; Chen et al. 2024, GITS; Xue et al. 2024). We take the
direct route those papers approximate: the grid is parameterised by positive log-SNR increments
lambda_i = lambda(t_start) + sum_{j<=i} softplus(u_j), the last step goes to t = 0 through the x0
prediction as usual, and u is found by derivative-free minimisation (scipy's Powell) of the
RMSE between ``sample(model, x_T, solver, ts=grid)`` and the reference on calibration x_T drawn
with seeds disjoint from any evaluation seeds. The tuned grid is a plain float64 tensor: pass it
as ``sample(..., ts=grid)``. Grids for the shipped model live in
``sde_diffusion/assets/<model>/tuned_grids.json`` (``load_tuned_grid``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .grids import check_grid, time_grid
from .model import NoisePredictor
from .randomness import per_sample_generators
from .sampling import sample

__all__ = ["tune_grid", "reference_solve", "load_tuned_grid", "CALIBRATION_SEED"]

CALIBRATION_SEED = 1_000_000  # calibration x_T use seeds 1e6 + k; benchmarks use small seeds


def reference_solve(model: NoisePredictor, x_T: torch.Tensor, rtol: float = 1e-6, atol: float = 1e-6) -> torch.Tensor:
    """A tight adaptive probability-flow solve from x_T at t = 1 to t = 0 (``ode`` solver)."""
    return sample(model, x_T, solver="ode", rtol=rtol, atol=atol).samples


def _grid_from_params(model, u: np.ndarray, lam0: float, t_start: float, free_start: bool) -> torch.Tensor:
    lam = lam0 + np.cumsum(np.logaddexp(0.0, u))  # strictly increasing log-SNR (decreasing t)
    ts = model.sde.t_from_log_snr(torch.as_tensor(lam, dtype=torch.float64))
    head = [] if free_start else [torch.tensor([t_start], dtype=torch.float64)]
    return torch.cat([*head, ts, torch.zeros(1, dtype=torch.float64)])


def _params_from_grid(model, grid: torch.Tensor, lam0: float, free_start: bool) -> np.ndarray:
    lam = model.sde.log_snr(grid[:-1]).numpy()
    inc = np.diff(np.concatenate([[lam0], lam]) if free_start else lam)
    inc = np.maximum(inc, 1e-4)
    return np.where(inc > 30, inc, np.log(np.expm1(inc)))  # inverse softplus


def tune_grid(model: NoisePredictor, solver: str, steps: int, *, x_T: Optional[torch.Tensor] = None, n: int = 64,
              reference: Optional[torch.Tensor] = None, init: str = "best", t_start: float = 1.0,
              maxfev: int = 400, restarts: int = 2, free_start: bool = False, options: Optional[dict] = None,
              progress: bool = False) -> dict:
    """Tune the interior times of a ``steps``-step grid for ``solver`` on ``model``.

    Returns ``dict(ts=grid, rmse=..., rmse_init=..., evaluations=...)``. ``x_T`` defaults to ``n``
    calibration draws (seeds ``CALIBRATION_SEED + k``); ``reference`` to ``reference_solve``.
    ``free_start=True`` also tunes the first time (<= t_start): the solve then starts from x_T
    treated as the state at that time, as diffusers' multistep "leading" grids do (they start at
    t = 0.83 for 5 steps); the error is still measured against the reference from t_start.
    """
    from scipy.optimize import minimize

    if steps < 2:
        raise ValueError(f"tuning needs steps >= 2 (one interior time at least), got {steps}")
    options = dict(options or {})
    if x_T is None:
        if model.sample_shape is None:
            raise ValueError("give x_T or a model with sample_shape")
        gens = per_sample_generators(CALIBRATION_SEED, n)
        x_T = torch.stack([torch.randn(tuple(model.sample_shape), generator=g) for g in gens])
    if reference is None:
        reference = reference_solve(model, x_T)
    lam0 = float(model.sde.log_snr(t_start))

    def rmse(ts):
        out = sample(model, x_T, solver=solver, ts=ts, **options).samples
        return float(torch.sqrt(((out.double() - reference.double()) ** 2).mean()))

    # start from the best of the standard spacings ("best") or from the one named
    inits = ("logsnr", "quadratic", "uniform", "karras") if init == "best" else (init,)
    scored = [(rmse(g), name, g) for name in inits for g in [time_grid(model.sde, steps, name, t_start=t_start)]]
    scored.sort(key=lambda r: r[0])
    _, init, init_grid = scored[0]
    u0 = _params_from_grid(model, init_grid, lam0, free_start)

    calls = [0]

    def objective(u):
        calls[0] += 1
        try:
            ts = check_grid(_grid_from_params(model, u, lam0, t_start, free_start))
        except ValueError:
            return 1e6
        if float(ts[-2]) <= 0:
            return 1e6
        val = rmse(ts)
        return val if math.isfinite(val) else 1e6

    start = scored[0][0]
    u = u0
    for _ in range(restarts):  # Powell restarted from its own optimum escapes some shallow stalls
        u = minimize(objective, u, method="Powell", options=dict(maxfev=maxfev // restarts, xtol=1e-3, ftol=1e-6)).x
    best = _grid_from_params(model, u, lam0, t_start, free_start)
    best_val = rmse(best)
    if best_val > start:  # never return something worse than the starting grid
        best, best_val = init_grid, start
    return dict(ts=best, rmse=best_val, rmse_init=start, evaluations=calls[0], init=init,
                rmse_spacings={name: v for v, name, _ in scored})


def load_tuned_grid(model_name_or_dir, solver: str, steps: int) -> torch.Tensor:
    """A tuned grid from ``<model>/tuned_grids.json`` (keys ``"<solver>/<steps>"``)."""
    from .checkpoints import ASSETS_DIR

    d = Path(model_name_or_dir)
    if not d.is_dir():
        d = ASSETS_DIR / str(model_name_or_dir)
    f = d / "tuned_grids.json"
    if not f.is_file():
        raise FileNotFoundError(f"no tuned grids for {model_name_or_dir!r} (looked for {f})")
    grids = json.loads(f.read_text())["grids"]
    key = f"{solver}/{steps}"
    if key not in grids:
        raise ValueError(f"no tuned grid {key!r} in {f}; available: {', '.join(sorted(grids))}")
    return check_grid(grids[key]["ts"])
