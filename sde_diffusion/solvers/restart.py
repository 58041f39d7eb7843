"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes", Alg. 1).

Deterministic Heun steps (EDM Alg. 1, ``karras.heun``) along the main grid, and at a chosen grid point with
noise level sigma_i (EDM's sigma = sigma_VP/alpha, ``sde.sigma_ve``) a restart loop, repeated n_repeats times:
    forward:  y <- y + S_noise sqrt(sigma_max^2 - sigma_i^2) z,  y = x/alpha, z = noise.fresh()   (Alg. 1 line 5:
              the exact forward-process jump from sigma_i to sigma_max)
    backward: Heun from sigma_max back to sigma_i on a Karras grid of n_steps intervals (EDM eq. 5, rho = 7).
The added noise contracts the accumulated error of the backward ODE (Xu et al., Thm. 2) while the ODE keeps the
discretisation error small. The restart point of an interval (sigma_min, sigma_max, n_steps, n_repeats) is the
grid point after ts[0] with 0 < sigma_i < sigma_max nearest to sigma_min in log sigma (none: no restart).
sigma_max is capped at sigma(ts[0]). With ``restarts=()`` the solver is ``heun``.
"""

from __future__ import annotations

import math

import torch

from .karras import heun
from .spec import solver

__all__ = ["restart"]

_DEFAULT_RESTARTS = ((0.1, 2.0, 4, 1),)


def _check_restarts(restarts):
    out = []
    for r in restarts:
        ok = isinstance(r, (tuple, list)) and len(r) == 4
        if ok:
            lo, hi, n, k = r
            ok = (all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) and 0 < lo < hi
                  and math.isfinite(hi) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (n, k)))
        if not ok:
            raise ValueError(f"each restart must be (sigma_min, sigma_max, n_steps, n_repeats) with 0 < sigma_min < "
                             f"sigma_max < inf and integers n_steps, n_repeats >= 1, got {r!r}")
        out.append((float(r[0]), float(r[1]), int(r[2]), int(r[3])))
    return out


def _sigma(sde, t: float) -> float:
    return sde.sigma_ve(t) if t > 0 and sde.alpha(t) > 0 else (0.0 if t == 0 else math.inf)


def _restart_points(sde, ts, restarts):
    """{grid index: [(sigma_max, n_steps, n_repeats), ...]} for each restart interval that has a point."""
    sig = [_sigma(sde, float(t)) for t in ts]
    sig_top = sig[0]
    points = {}
    for lo, hi, n, k in restarts:
        cand = [i for i in range(1, len(ts)) if 0 < sig[i] < hi]
        if not cand:
            continue
        i = min(cand, key=lambda j: abs(math.log(sig[j]) - math.log(lo)))
        hi = min(hi, sig_top)
        if hi > sig[i]:
            points.setdefault(i, []).append((hi, n, k))
    return points


def _karras_times(sde, sig_hi: float, sig_lo: float, n: int, t_lo: float) -> torch.Tensor:
    """Times of the Karras sigma grid sig_hi -> sig_lo with n intervals (rho = 7), ending exactly at t_lo."""
    rho = 7.0
    u = torch.linspace(0, 1, n + 1, dtype=torch.float64)
    sig = (sig_hi ** (1 / rho) + u * (sig_lo ** (1 / rho) - sig_hi ** (1 / rho))) ** rho
    ts = sde.t_from_log_snr(-torch.log(sig))
    ts[-1] = t_lo
    return ts


@solver(order=2, nfe="2*K - z + 8", default_spacing="karras", stochastic=True, adaptive=False, peers=(),
        order_options={"restarts": ()})
def restart(model, x, ts, *, noise, callback=None, restarts=_DEFAULT_RESTARTS, S_noise: float = 1.0):
    """Restart sampling (Xu et al. 2023, Alg. 1) with Heun steps.

    ``restarts``: intervals (sigma_min, sigma_max, n_steps, n_repeats) in EDM sigma units; the default
    ((0.1, 2.0, 4, 1),) restarts once from the grid point nearest sigma = 0.1 up to sigma = 2 and comes back in
    4 Heun steps. NFE = heun's (2K - 1 on grids to t = 0, else 2K) + 2 n_steps n_repeats per restart that
    finds a point (+8 with the default). ``restarts=()``: plain Heun (order 2, deterministic).
    """
    restarts = _check_restarts(restarts)
    if not (math.isfinite(S_noise) and S_noise >= 0):
        raise ValueError(f"S_noise must be a finite number >= 0, got {S_noise!r}")
    sde = model.sde
    points = _restart_points(sde, ts, restarts)
    for i in range(len(ts) - 1):
        seen = {}
        x = heun(model, x, ts[i:i + 2], noise=noise, callback=seen.update)  # one main Heun step
        t_i = float(ts[i + 1])
        for sig_hi, n, k in points.get(i + 1, ()):
            a_i, sig_i = sde.alpha(t_i), sde.sigma_ve(t_i)
            inner = _karras_times(sde, sig_hi, sig_i, n, t_i)
            a_hi = sde.alpha(float(inner[0]))
            for _ in range(k):
                # forward jump sigma_i -> sigma_max in y = x/alpha, then back to the VP state at sigma_max
                y = x / a_i + (S_noise * math.sqrt(sig_hi**2 - sig_i**2)) * noise.fresh()
                x = heun(model, y * a_hi, inner, noise=noise)
        if callback is not None:
            callback(dict(i=i, t=t_i, x=x, x0=seen.get("x0")))
    return x
