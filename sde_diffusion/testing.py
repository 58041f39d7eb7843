"""Property-test your own schedule or sampler in three lines.

    from hypothesis import given
    from sde_diffusion.testing import vp_sdes, assert_valid_sde
    given(sde=vp_sdes())(lambda sde: assert_valid_sde(sde))()

Strategies (need ``hypothesis``): ``beta_schedules``, ``vp_sdes``, ``time_grids``.
Assertion helpers (plain functions, usable from any test runner): ``assert_valid_betas``,
``assert_valid_sde``, ``assert_valid_grid``, ``assert_converges``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from .grids import CONTINUOUS_SPACINGS, DISCRETE_SPACINGS, time_grid
from .schedules import alphas_cumprod_of, cosine_betas, linear_betas, scaled_linear_betas
from .sde import VPSDE

__all__ = ["beta_schedules", "vp_sdes", "time_grids", "assert_valid_betas", "assert_valid_sde",
           "assert_valid_grid", "convergence_order", "assert_converges"]


# ---- hypothesis strategies -------------------------------------------------------------------
def beta_schedules(min_size: int = 2, max_size: int = 1000):
    """Valid beta schedules: linear, scaled-linear and cosine of random length and range, and
    arbitrary monotone or non-monotone sequences in (0, 1) (float64 tensors)."""
    from hypothesis import strategies as st

    n = st.integers(min_size, max_size)
    lo = st.floats(1e-6, 1e-2)
    span = st.floats(1.0, 500.0)

    @st.composite
    def linear(draw, fn):
        a = draw(lo)
        b = min(a * draw(span), 0.5)
        return fn(draw(n), a, max(b, a * 1.0001))

    @st.composite
    def cosine(draw):
        return cosine_betas(draw(n), s=draw(st.floats(0.0, 0.05)), max_beta=draw(st.floats(0.5, 0.999)))

    @st.composite
    def arbitrary(draw):
        k = draw(st.integers(min_size, min(max_size, 64)))
        vals = draw(st.lists(st.floats(1e-5, 0.9), min_size=k, max_size=k))
        return torch.tensor(vals, dtype=torch.float64)

    return st.one_of(linear(linear_betas), linear(scaled_linear_betas), cosine(), arbitrary())


def vp_sdes(discrete: bool = True, continuous: bool = True):
    """VPSDEs: discrete chains over ``beta_schedules()`` and continuous linear/cosine SDEs."""
    from hypothesis import strategies as st

    options = []
    if discrete:
        options.append(beta_schedules().map(VPSDE.from_betas))
    if continuous:
        options.append(st.builds(lambda a, b: VPSDE.linear(a, a + b), st.floats(0.01, 1.0), st.floats(1.0, 30.0)))
        options.append(st.floats(0.0, 0.05).map(VPSDE.cosine))
    return st.one_of(options)


def time_grids(sde: VPSDE = None):
    """(sde, grid, spacing, steps) tuples: any spacing valid for the SDE, any step count."""
    from hypothesis import strategies as st

    @st.composite
    def grids(draw):
        s = sde if sde is not None else draw(vp_sdes())
        spacings = list(CONTINUOUS_SPACINGS)
        if s.num_train_steps is not None:
            spacings += list(DISCRETE_SPACINGS)
        spacing = draw(st.sampled_from(spacings))
        hi = s.num_train_steps if spacing in DISCRETE_SPACINGS else 200
        steps = draw(st.integers(1, max(1, min(hi, 200))))
        t_start = 1.0 if s.kind != "cosine" else 0.99
        return s, time_grid(s, steps, spacing, t_start=t_start), spacing, steps

    return grids()


# ---- assertion helpers -------------------------------------------------------------------------
def assert_valid_betas(betas) -> None:
    """Betas are float64, finite, in (0, 1) (1 allowed last for zero terminal SNR), and
    alphas_cumprod strictly decreases."""
    b = torch.as_tensor(betas)
    assert b.dtype == torch.float64, f"betas must be float64, got {b.dtype}"
    assert torch.isfinite(b).all(), "betas must be finite"
    assert (b[:-1] > 0).all() and (b[:-1] < 1).all() and 0 < b[-1] <= 1, "betas must lie in (0, 1)"
    ac = alphas_cumprod_of(b)
    assert (ac[1:] < ac[:-1]).all() or (ac[-1] == 0), "alphas_cumprod must strictly decrease"


def assert_valid_sde(sde: VPSDE, n_points: int = 257) -> None:
    """alpha^2 + sigma^2 = 1; alpha and lambda strictly decrease; t_from_log_snr inverts log_snr;
    a discrete SDE is exact at its grid points."""
    t_hi = 1.0 if not sde.zero_terminal_snr and sde.kind != "cosine" else 0.99
    t = torch.linspace(1e-3, t_hi, n_points, dtype=torch.float64)
    a, s, lam = sde.alpha(t), sde.sigma(t), sde.log_snr(t)
    assert a.dtype == torch.float64 and s.dtype == torch.float64
    assert torch.allclose(a**2 + s**2, torch.ones_like(a), atol=1e-12), "alpha^2 + sigma^2 != 1"
    assert (a[1:] < a[:-1]).all(), "alpha(t) must strictly decrease"
    assert (lam[1:] < lam[:-1]).all(), "log-SNR must strictly decrease"
    back = sde.t_from_log_snr(lam)
    assert torch.allclose(back, t, atol=1e-9, rtol=0), f"t_from_log_snr(log_snr(t)) off by {float((back - t).abs().max())}"
    assert sde.alpha(0.0) == 1.0, "alpha(0) must be 1 (t = 0 is clean data)"
    if sde.num_train_steps is not None:
        N = sde.num_train_steps
        tn = (torch.arange(N, dtype=torch.float64) + 1) / N
        err = (sde.alpha(tn) ** 2 - sde.alphas_cumprod).abs().max()
        assert err <= 1e-14, f"alpha(t_n)^2 != alphas_cumprod[n] (max error {float(err):.3g})"


def assert_valid_grid(grid, steps: int, t_start: float = None, t_end: float = None) -> None:
    """float64, 1-D, steps + 1 entries, strictly decreasing, in [0, 1], optional exact endpoints."""
    g = torch.as_tensor(grid)
    assert g.dtype == torch.float64, f"grid must be float64, got {g.dtype}"
    assert g.shape == (steps + 1,), f"grid must have steps + 1 = {steps + 1} entries, got {tuple(g.shape)}"
    assert (g[1:] < g[:-1]).all(), "grid must strictly decrease"
    assert (g >= 0).all() and (g <= 1).all(), "grid must lie in [0, 1]"
    if t_start is not None:
        assert float(g[0]) == t_start, f"grid starts at {float(g[0])}, expected {t_start}"
    if t_end is not None:
        assert float(g[-1]) == t_end, f"grid ends at {float(g[-1])}, expected {t_end}"


def convergence_order(steps: Sequence[int], errors: Sequence[float]) -> float:
    """Least-squares slope of -log(error) against log(steps): the empirical order."""
    x, y = np.log(np.asarray(steps, float)), np.log(np.asarray(errors, float))
    return float(-np.polyfit(x, y, 1)[0])


def assert_converges(error_of_steps: Callable[[int], float], steps: Sequence[int], order: float,
                     tol: float = 0.3) -> float:
    """Assert the empirical order of ``error_of_steps`` over ``steps`` is ``order`` within ``tol``
    (as diffrax's ``test_ode_order``). Returns the measured order."""
    errs = [float(error_of_steps(k)) for k in steps]
    assert all(math.isfinite(e) and e > 0 for e in errs), f"errors must be finite and > 0: {errs}"
    p = convergence_order(steps, errs)
    assert abs(p - order) <= tol, f"empirical order {p:.3f}, expected {order} +- {tol} (errors {errs})"
    return p
