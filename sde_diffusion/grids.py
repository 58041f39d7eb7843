"""Time grids for samplers: float64, strictly decreasing, ``steps + 1`` entries.

Continuous spacings (exact endpoints ``t_start`` and ``t_end``):
  "uniform"   uniform in t (Song et al. 2021);
  "quadratic" t_end + (t_start - t_end) u^2, u uniform (Song et al. 2021a, DDIM, App. D.2);
  "logsnr"    uniform in lambda = log(alpha/sigma) (Lu et al. 2022, DPM-Solver, Sec. 3.3);
  "karras"    sigma_VE^(1/rho) uniform, rho = 7 (Karras et al. 2022, EDM, eq. 5).
  "logsnr" and "karras" need a finite lambda at the last point: when t_end = 0 they stop at
  ``t_min`` (1/N for a discrete SDE, 1e-3 otherwise) and take one final step to t = 0.
Discrete spacings (diffusers' definitions; t_n = (n+1)/N with a final step to t = 0 appended):
  "leading"   arange(S) * (N // S), reversed;   "trailing"  round(arange(N, 0, -N/S)) - 1;
  "linspace"  round(linspace(0, N - 1, S)), reversed.
The step after each entry is always the next list entry (no "prev_timestep" arithmetic).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .sde import VPSDE

__all__ = ["time_grid", "discrete_timesteps", "grid_from_timesteps", "check_grid",
           "CONTINUOUS_SPACINGS", "DISCRETE_SPACINGS", "SPACINGS"]

CONTINUOUS_SPACINGS = ("uniform", "quadratic", "logsnr", "karras")
DISCRETE_SPACINGS = ("leading", "trailing", "linspace")
SPACINGS = CONTINUOUS_SPACINGS + DISCRETE_SPACINGS

_F64 = torch.float64


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def discrete_timesteps(num_train_steps: int, steps: int, spacing: str) -> torch.Tensor:
    """diffusers' integer timesteps (descending, int64) for ``steps`` of ``num_train_steps``."""
    N, S = num_train_steps, _check_steps(steps)
    if S > N:
        raise ValueError(f"steps ({S}) cannot exceed the number of training steps ({N}) for spacing {spacing!r}")
    if spacing == "leading":
        ts = (np.arange(S) * (N // S)).round()[::-1]
    elif spacing == "trailing":
        ts = np.round(np.arange(N, 0, -N / S)) - 1
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, N - 1, S))[::-1]
    else:
        raise ValueError(f"unknown discrete spacing {spacing!r}; valid: {', '.join(DISCRETE_SPACINGS)}")
    return torch.from_numpy(ts.astype(np.int64).copy())


def grid_from_timesteps(sde: VPSDE, timesteps: Sequence) -> torch.Tensor:
    """Times t_n = (n+1)/N of discrete timesteps, with the final t = 0 appended."""
    N = sde._need_discrete("a grid of discrete timesteps")
    n = torch.as_tensor(timesteps).detach().cpu()
    if n.ndim != 1 or n.numel() < 1:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence, got shape {tuple(n.shape)}")
    n = n.to(_F64)
    if (n < 0).any() or (n > N - 1).any():
        raise ValueError(f"timesteps must lie in [0, {N - 1}], got min {float(n.min())}, max {float(n.max())}")
    if not (n[1:] < n[:-1]).all():
        raise ValueError("timesteps must be strictly decreasing without duplicates (like scheduler.timesteps)")
    return torch.cat([(n + 1) / N, torch.zeros(1, dtype=_F64)])


def check_grid(ts) -> torch.Tensor:
    """Validate an explicit continuous grid: float64, 1-D, >= 2 entries, in [0, 1], strictly decreasing."""
    t = torch.as_tensor(ts, dtype=_F64).detach().cpu()
    if t.ndim != 1 or t.numel() < 2:
        raise ValueError(f"a time grid needs at least 2 entries in 1-D, got shape {tuple(t.shape)}")
    if torch.isnan(t).any() or (t < 0).any() or (t > 1).any():
        raise ValueError(f"grid times must lie in [0, 1], got min {float(t.min())}, max {float(t.max())}")
    if not (t[1:] < t[:-1]).all():
        raise ValueError("grid times must be strictly decreasing (from noise to data) without duplicates")
    return t


def time_grid(sde: VPSDE, steps: int, spacing: str = "uniform", t_start: float = 1.0,
              t_end: float = 0.0, rho: float = 7.0) -> torch.Tensor:
    """A descending float64 grid of ``steps + 1`` times from ``t_start`` to ``t_end``."""
    steps = _check_steps(steps)
    if spacing in DISCRETE_SPACINGS:
        if sde.num_train_steps is None:
            raise ValueError(f"spacing {spacing!r} needs a discrete VPSDE; for a continuous one use {CONTINUOUS_SPACINGS}")
        return grid_from_timesteps(sde, discrete_timesteps(sde.num_train_steps, steps, spacing))
    if spacing not in CONTINUOUS_SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
    if not (0.0 <= t_end < t_start <= 1.0):
        raise ValueError(f"need 0 <= t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    u = torch.linspace(0, 1, steps + 1, dtype=_F64)  # 0 .. 1 from noise to data
    if spacing == "uniform":
        ts = t_start + (t_end - t_start) * u
    elif spacing == "quadratic":
        ts = t_end + (t_start - t_end) * (1 - u) ** 2
    else:
        final_zero = t_end == 0.0
        t_min = t_end
        if final_zero:
            t_min = 1.0 / sde.num_train_steps if sde.num_train_steps else 1e-3
            if steps == 1 or t_min >= t_start:
                return torch.tensor([t_start, 0.0], dtype=_F64)
        k = steps - 1 if final_zero else steps
        v = torch.linspace(0, 1, k + 1, dtype=_F64)
        lam_max, lam_min = sde.log_snr(float(t_min)), sde.log_snr(float(t_start))
        if not (np.isfinite(lam_max) and np.isfinite(lam_min)):
            raise ValueError(f"spacing {spacing!r} needs a finite log-SNR at both ends; got lambda({t_start})={lam_min}, "
                             f"lambda({t_min})={lam_max} (use t_end = 0 or t_end >= 1e-12, t_start < 1 for zero-terminal-SNR)")
        if spacing == "logsnr":
            lam = lam_min + (lam_max - lam_min) * v
        else:  # karras: sigma_VE = exp(-lambda)
            smax, smin = np.exp(-lam_min), np.exp(-lam_max)
            sig = (smax ** (1 / rho) + v * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
            lam = -torch.log(sig)
        ts = sde.t_from_log_snr(lam)
        ts[0], ts[-1] = t_start, t_min
        if final_zero:
            ts = torch.cat([ts, torch.zeros(1, dtype=_F64)])
    ts[0], ts[-1] = t_start, t_end
    return check_grid(ts)
