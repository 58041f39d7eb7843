"""Convergence orders against the exact probability flow of a Gaussian (``GaussianMixture.flow_map``).

Each case integrates the PF-ODE with the exact noise prediction from t = 1 to t = 0.05 (no final
denoising step) on grids of K steps and fits the slope of log(max error) vs log K; it must be within
TOL of the expected order. Multistep methods with their lower-order warm-up are pre-asymptotic below
K ~ 40 on this problem (measured local slopes up to 4.6 for order 3), so STEPS starts at 48.
The expected orders are the solvers' declared facts (``@solver(order=..., order_options=..., variants=...)``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sde_diffusion import VPSDE
from sde_diffusion.analytic import GaussianMixture
from sde_diffusion.grids import time_grid
from sde_diffusion.noise import NoiseSource
from sde_diffusion.sampling import sample
from sde_diffusion.solvers import SPECS
from sde_diffusion.solvers.dpm import dpm_solver_fast_orders

# (label, solver, options, declared order, spacing): every solver's declared order (``SolverSpec.order``
# with ``order_options``) on logsnr and uniform grids, and its declared variants on logsnr grids.
# Solvers with order None (adaptive; SDE solvers without an ODE limit) have nothing to measure here.
CASES = []
for _name, _spec in SPECS.items():
    if _spec.order is not None:
        for _sp in ("logsnr", "uniform"):
            CASES.append((_name, _name, dict(_spec.order_options), _spec.order, _sp))
    for _label, _opts, _order in _spec.variants:
        CASES.append((f"{_name}[{_label}]", _name, dict(_opts), _order, "logsnr"))
STEPS = [48, 96]
TOL = 0.3
T_START, T_END = 1.0, 0.05


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    D = 4
    A = torch.randn(D, D, dtype=torch.float64)
    cov = A @ A.T / D + 0.05 * torch.eye(D, dtype=torch.float64)
    g = GaussianMixture(torch.randn(1, D, dtype=torch.float64), cov[None])
    sde = VPSDE.linear()
    x_T = torch.randn(8, D, dtype=torch.float64)
    return g, sde, x_T, g.flow_map(x_T, T_START, T_END, sde)


def _slope(errs):
    return -np.polyfit(np.log(STEPS), np.log(errs), 1)[0]


def test_every_deterministic_solver_has_an_order_case():
    """A fixed-step solver without a measurable declared order fails here (it is not silently skipped)."""
    measured = {c[1] for c in CASES}
    for name, spec in SPECS.items():
        if not spec.adaptive and not spec.stochastic:
            assert name in measured, f"{name}: declare order= in its @solver facts"


@pytest.mark.parametrize("label,solver,opts,order,spacing", CASES, ids=[f"{c[0]}-{c[4]}" for c in CASES])
def test_convergence_order(problem, label, solver, opts, order, spacing):
    g, sde, x_T, exact = problem
    model = g.predictor(sde)
    errs = []
    for K in STEPS:
        ts = time_grid(sde, K, spacing, t_start=T_START, t_end=T_END)
        out = sample(model, x_T, solver=solver, ts=ts, **opts).samples
        errs.append(float((out - exact).abs().max()))
    slope = _slope(errs)
    assert abs(slope - order) < TOL, f"{label} on {spacing}: slope {slope:.2f}, expected {order}; errors {errs}"


def test_karras_grid_heun(problem):
    """EDM's own setting: Heun on the Karras sigma grid."""
    g, sde, x_T, exact = problem
    grids = [time_grid(sde, K, "karras", t_start=T_START, t_end=T_END) for K in STEPS]
    errs = [float((sample(g.predictor(sde), x_T, solver="heun", ts=ts).samples - exact).abs().max()) for ts in grids]
    assert abs(_slope(errs) - 2) < TOL


@pytest.mark.parametrize("spacing", ["logsnr", "uniform", "karras"])
def test_unip_is_dpmpp_multistep(problem, spacing):
    """Two derivations, one method: UniP-2 (bh2, rho = 1/2) is DPM-Solver++(2M) and UniP-3 (bh2) is our
    Taylor-coefficient DPM-Solver++(3M) -- not the diffusers 3M formula (which halves the D2 term)."""
    g, sde, x_T, _ = problem
    m = g.predictor(sde)
    ts = time_grid(sde, 11, spacing, t_start=T_START, t_end=T_END)
    for order, name in ((2, "dpmpp_2m"), (3, "dpmpp_3m")):
        unip = sample(m, x_T, solver="unipc", ts=ts, order=order, corrector=False, lower_order_final=False).samples
        dpm = sample(m, x_T, solver=name, ts=ts, lower_order_final=False).samples
        assert (unip - dpm).abs().max() < 1e-12
    dif = sample(m, x_T, solver="dpmpp_3m", ts=ts, lower_order_final=False, variant="diffusers").samples
    assert (dif - dpm).abs().max() > 1e-6


# ---- the final step to t = 0 lands on the data prediction ----------------------------------------

FINAL_SOLVERS = [("ddim", {}), ("euler", {}), ("heun", {}), ("dpm_solver", {}), ("dpm_solver", dict(algorithm="dpmsolver")),
                 ("dpmpp_2m", {}), ("dpmpp_3m", {}), ("dpmpp_2m_sde", {}), ("unipc", {}), ("unipc", dict(order=3)),
                 ("heun", dict(S_churn=20.0))]


@pytest.mark.parametrize("solver,opts", FINAL_SOLVERS)
def test_point_mass_is_exact(solver, opts):
    """For a point mass the x0 prediction is exact (= mu) everywhere, so every solver must end exactly on mu
    and never evaluate the net at t = 0 (the analytic eps would divide by sigma = 0 and give NaN)."""
    mu = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    g = GaussianMixture(mu, 0.0)
    for sde in (VPSDE.linear(), VPSDE.from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))):
        x_T = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        seen = []
        res = sample(g.predictor(sde), x_T, solver=solver, steps=7, seed=1, callback=lambda d: seen.append(d["t"]), **opts)
        assert seen[-1] == 0.0
        assert (res.samples - mu).abs().max() < 1e-9, (solver, opts, sde)


# ---- NFE accounting and DPM-Solver-fast ---------------------------------------------------------

def test_nfe_counts():
    g = GaussianMixture(torch.zeros(1, 2, dtype=torch.float64), 1.0)
    sde = VPSDE.linear()
    m = g.predictor(sde)
    x_T = torch.randn(3, 2, dtype=torch.float64)
    assert sample(m, x_T, solver="heun", steps=10).nfe == 19  # 2K - 1: no correction on the step to sigma = 0
    assert sample(m, x_T, solver="heun", ts=time_grid(sde, 10, "karras", t_end=0.1)).nfe == 20
    assert sample(m, x_T, solver="dpm_solver", steps=6, order=3).nfe == 3 * 5 + 1  # last step to t = 0: 1 NFE
    assert sample(m, x_T, solver="dpm_solver", steps=6, order=2, algorithm="dpmsolver").nfe == 2 * 5 + 1
    for s in ("dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc", "euler"):
        assert sample(m, x_T, solver=s, steps=9).nfe == 9


@pytest.mark.parametrize("nfe,order,final,expected", [
    # Lu et al. 2022, Sec. 3.4: K = nfe // 3 + 1 steps; [3..3, 2, 1], [3..3, 1], [3..3, 2] for nfe mod 3 = 0, 1, 2
    (12, 3, False, [3, 3, 3, 2, 1]), (10, 3, False, [3, 3, 3, 1]), (20, 3, False, [3] * 6 + [2]),
    (7, 2, False, [2, 2, 2, 1]), (8, 2, False, [2, 2, 2, 2]), (4, 1, False, [1, 1, 1, 1]),
    (13, 3, True, [3, 3, 3, 2, 1, 1]), (11, 3, True, [3, 3, 3, 1, 1]), (1, 3, True, [1]), (2, 3, True, [1, 1]),
])
def test_fast_orders(nfe, order, final, expected):
    assert dpm_solver_fast_orders(nfe, order, final_to_zero=final) == expected


@pytest.mark.parametrize("nfe", [5, 10, 15, 20])
def test_fast_orders_spend_the_budget(nfe):
    g = GaussianMixture(torch.zeros(1, 2, dtype=torch.float64), 1.0)
    m = g.predictor(VPSDE.linear())
    orders = dpm_solver_fast_orders(nfe)
    x_T = torch.randn(2, 2, dtype=torch.float64)
    res = sample(m, x_T, solver="dpm_solver", steps=len(orders), spacing="logsnr", orders=orders)
    assert res.nfe == nfe and res.info["orders"] == orders


def test_bad_options():
    g = GaussianMixture(torch.zeros(1, 2, dtype=torch.float64), 1.0)
    m = g.predictor(VPSDE.linear())
    x = torch.randn(2, 2, dtype=torch.float64)
    for solver, opts in [("dpm_solver", dict(order=4)), ("dpm_solver", dict(algorithm="ddim")),
                         ("dpm_solver", dict(orders=[1, 2])), ("unipc", dict(order=0)), ("unipc", dict(variant="bh3")), ("dpmpp_3m", dict(variant="k")),
                         ("heun", dict(S_churn=-1.0)), ("heun", dict(S_tmin=2.0, S_tmax=1.0)), ("dpmpp_2m_sde", dict(eta=-0.5))]:
        with pytest.raises(ValueError):
            sample(m, x, solver=solver, steps=4, **opts)
    with pytest.raises(ValueError):
        dpm_solver_fast_orders(0)


# ---- Heun with churn (EDM Alg. 2) ---------------------------------------------------------------

def test_churn_samples_the_right_distribution():
    """With churn, Heun is a stochastic sampler; for 1-D Gaussian data and the exact model its samples
    must have the data mean and std (n = 4000: standard errors ~0.016 and ~0.011)."""
    mu, std = 0.7, 0.5
    g = GaussianMixture(torch.tensor([[mu]], dtype=torch.float64), std)
    sde = VPSDE.linear()
    res = sample(g.predictor(sde), shape=(4000, 1), solver="heun", steps=25, seed=0, S_churn=40.0, S_tmin=0.05, S_tmax=50.0)
    x = res.samples.flatten()
    assert abs(float(x.mean()) - mu) < 0.06 and abs(float(x.std()) - std) < 0.04
    assert res.nfe == 2 * 25 - 1
    det = sample(g.predictor(sde), shape=(4000, 1), solver="heun", steps=25, seed=0).samples
    assert (det - res.samples).abs().max() > 1e-2  # churn really injected noise


def test_churn_capped_at_t1():
    """Churn at the first step (t = 1) cannot raise sigma beyond sigma(1): it adds no noise there."""
    g = GaussianMixture(torch.zeros(1, 2, dtype=torch.float64), 1.0)
    sde = VPSDE.linear()
    x_T = torch.randn(3, 2, dtype=torch.float64)
    seen = []
    sample(g.predictor(sde), x_T, solver="euler", ts=[1.0, 0.5], S_churn=10.0, seed=0, callback=lambda d: seen.append(d["x"]))
    ref = sample(g.predictor(sde), x_T, solver="euler", ts=[1.0, 0.5]).samples
    assert torch.allclose(seen[-1], ref, atol=0, rtol=0)


# ---- zero terminal SNR (alpha(1) = 0, v-prediction) ---------------------------------------------

def test_zero_terminal_snr_v_prediction():
    """Start at alpha = 0 (sigma_VE = lambda = inf): every solver must take a finite first step and
    converge to the exact flow map of a Gaussian (x0 = mu + sqrt(c) x_T)."""
    from sde_diffusion import NoisePredictor, linear_betas, rescale_zero_terminal_snr

    sde = VPSDE.from_betas(rescale_zero_terminal_snr(linear_betas(1000)))
    mu, c = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.3

    def vnet(x, n):  # exact v = alpha eps - sigma x0 from the Gaussian posterior mean x0(x)
        t = (n.double() + 1) / 1000
        a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        x0 = mu + a * c * (x - a * mu) / (a * a * c + s * s)
        return a * (x - a * x0) / s - s * x0

    model = NoisePredictor(vnet, sde, "v", timestep_dtype=torch.float64)
    x_T = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = mu + c**0.5 * x_T
    for solver, opts in [("euler", {}), ("heun", {}), ("dpm_solver", {}), ("dpm_solver", dict(order=2)), ("dpmpp_2m", {}),
                         ("dpmpp_3m", {}), ("dpmpp_2m_sde", dict(eta=0.0)), ("unipc", {}), ("unipc", dict(order=3))]:
        e10, e40 = (float((sample(model, x_T, solver=solver, steps=K, spacing="trailing", **opts).samples - exact).abs().max())
                    for K in (10, 40))
        assert e40 < 0.15 and e40 < e10 / 3, (solver, opts, e10, e40)


# ---- weak orders of the stochastic solvers (declared ``weak_order``), computed exactly -----------------

class _UnitDraws(NoiseSource):
    """A noise source whose k-th draw is 1 in batch row 2 + k and 0 elsewhere (1-D data). For Gaussian
    data every step of these solvers is affine in the state and the draws, so row 0 (x_T at the prior mean)
    carries the output mean, row 1 (one prior std above) the state gain, rows 2.. each draw's gain."""

    def __init__(self, n):
        self.n, self.k = n, 0

    def interval(self, t0, t1):
        z = torch.zeros(self.n, 1, dtype=torch.float64)
        z[2 + self.k] = 1.0
        self.k += 1
        return z

    def fresh(self):
        return self.interval(0.0, 0.0)


def _weak_error(name, K, mu=0.7, c=0.3, t_end=0.05):
    """|mean - exact| + |variance - exact| of the output at t_end for N(mu, c) data, exactly."""
    g = GaussianMixture(torch.tensor([[mu]], dtype=torch.float64), c**0.5)
    sde = VPSDE.linear()
    ts = time_grid(sde, K, SPECS[name].default_spacing, t_start=1.0, t_end=t_end)
    n = 2 + 8 * K + 8
    a1, s1 = sde.alpha(1.0), sde.sigma(1.0)
    x = torch.full((n, 1), a1 * mu, dtype=torch.float64)
    x[1] += math.sqrt(a1**2 * c + s1**2)
    src = _UnitDraws(n)
    out = sample(g.predictor(sde), x, solver=name, ts=ts, noise=src).samples[:, 0]
    assert 0 < src.k <= n - 2 and (out[2 + src.k:] == out[0]).all()  # unused rows untouched: the probe is sound
    mean, var = float(out[0]), float((out[1] - out[0]) ** 2 + ((out[2:2 + src.k] - out[0]) ** 2).sum())
    ae, se = sde.alpha(t_end), sde.sigma(t_end)
    return abs(mean - ae * mu) + abs(var - (ae**2 * c + se**2))


WEAK = sorted(n for n, s in SPECS.items() if s.weak_order is not None)


@pytest.mark.parametrize("name", WEAK)
def test_weak_order(name):
    """Slope of the exact weak error at K = 96, 192 on the solver's default spacing (measured: ancestral
    0.95, euler_maruyama 1.02, dpmpp_2m_sde 1.89) against the declared ``weak_order``."""
    e = [_weak_error(name, K) for K in (96, 192)]
    slope = -math.log(e[1] / e[0]) / math.log(2)
    assert abs(slope - SPECS[name].weak_order) < 0.3, f"{name}: weak slope {slope:.2f}, declared {SPECS[name].weak_order}; {e}"

