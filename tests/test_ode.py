"""Adaptive probability-flow ODE solvers (``ode``: torchdiffeq, ``scipy``: solve_ivp) against the
exact Gaussian flow map (GaussianMixture.flow_map, closed form for one full-covariance Gaussian)."""

import pytest
import torch

from sde_diffusion.analytic import GaussianMixture
from sde_diffusion.model import NoisePredictor
from sde_diffusion.sampling import sample
from sde_diffusion.schedules import linear_betas, rescale_zero_terminal_snr
from sde_diffusion.sde import VPSDE

COV = torch.tensor([[1.0, 0.6, 0.2], [0.6, 0.8, 0.1], [0.2, 0.1, 0.3]], dtype=torch.float64)
G = GaussianMixture([[0.3, -0.5, 1.0]], COV)
SDES = {"linear": VPSDE.linear(), "discrete": VPSDE.from_betas(linear_betas(1000))}
X_T = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("solver", ["ode", "scipy"])
@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_reaches_exact_flow_without_denoising(solver, sde_name):
    sde = SDES[sde_name]
    r = sample(G.predictor(sde), X_T, solver=solver, ts=[1.0, 0.05], rtol=1e-7, atol=1e-7)
    exact = G.flow_map(X_T, 1.0, 0.05, sde)
    assert (r.samples - exact).abs().max() < 1e-4
    assert r.info["denoised"] is False and r.info["t_end"] == 0.05


@pytest.mark.parametrize("solver", ["ode", "scipy"])
@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_full_span_is_flow_to_t_eps_then_exact_x0(solver, sde_name):
    sde = SDES[sde_name]
    m = G.predictor(sde)
    r = sample(m, X_T, solver=solver, rtol=1e-7, atol=1e-7)  # default grid [1, 0]
    t_eps = 1 / 1000 if sde_name == "discrete" else 1e-3  # documented defaults
    assert r.info["t_end"] == t_eps and r.info["denoised"] is True
    x_eps = G.flow_map(X_T, 1.0, t_eps, sde)
    a, s = sde.alpha(t_eps), sde.sigma(t_eps)
    exact_x0 = (x_eps - s * G.eps(x_eps, t_eps, sde)) / a  # x0 = (x - sigma eps)/alpha at t_eps
    assert (r.samples - exact_x0).abs().max() < 1e-4


@pytest.mark.parametrize("solver", ["ode", "scipy"])
def test_time_variable_also_reaches_exact_flow(solver):
    sde = SDES["linear"]
    r = sample(G.predictor(sde), X_T, solver=solver, ts=[1.0, 0.05], rtol=1e-7, atol=1e-7, variable="t")
    assert (r.samples - G.flow_map(X_T, 1.0, 0.05, sde)).abs().max() < 1e-4


@pytest.mark.parametrize("solver", ["ode", "scipy"])
def test_intermediate_output_times(solver):
    sde = SDES["linear"]
    seen = []
    r = sample(G.predictor(sde), X_T, solver=solver, ts=[1.0, 0.5, 0.2], rtol=1e-7, atol=1e-7,
               callback=lambda d: seen.append(d))
    assert [d["i"] for d in seen] == [0, 1] and [d["t"] for d in seen] == [0.5, 0.2]
    assert (seen[0]["x"] - G.flow_map(X_T, 1.0, 0.5, sde)).abs().max() < 1e-4
    assert torch.equal(seen[1]["x"], r.samples)


@pytest.mark.parametrize("solver,method", [("ode", "dopri5"), ("ode", "bosh3"), ("ode", "rk4"), ("scipy", "RK45"),
                                           ("scipy", "DOP853")])
@pytest.mark.parametrize("ts", [[1.0, 0.3], [1.0, 0.0]])
def test_net_never_evaluated_beyond_end_time(solver, method, ts):
    sde = SDES["linear"]
    times = []

    def net(x, t):
        times.append(float(t.min()))
        return G.eps(x, t, sde).to(x.dtype)

    m = NoisePredictor(net, sde, "epsilon", time_input=lambda t: t, timestep_dtype=torch.float64)
    opts = {"options": {"step_size": 0.7}} if method == "rk4" else {}
    r = sample(m, X_T, solver=solver, ts=ts, method=method, **opts)
    t_end = r.info["t_end"]
    assert min(times) >= t_end * (1 - 1e-9) and min(times) > 0
    assert max(times) <= 1.0


def test_per_sample_result_and_nfe_do_not_depend_on_batch():
    m = G.predictor(SDES["linear"])
    batch = sample(m, X_T, solver="ode", per_sample=True)
    nfes = batch.info["nfe_per_sample"]
    assert sum(nfes) == batch.nfe and len(set(nfes)) > 1  # samples really took their own steps
    for k in range(X_T.shape[0]):
        alone = sample(m, X_T[k:k + 1], solver="ode", per_sample=True)
        assert torch.equal(alone.samples, batch.samples[k:k + 1])
        assert alone.nfe == nfes[k]


def test_tighter_tolerance_is_more_accurate_and_costs_more():
    sde = SDES["discrete"]
    exact = G.flow_map(X_T, 1.0, 0.05, sde)
    errs, nfes = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        r = sample(G.predictor(sde), X_T, solver="ode", ts=[1.0, 0.05], rtol=tol, atol=tol)
        errs.append(float((r.samples - exact).abs().max()))
        nfes.append(r.nfe)
    assert errs[0] > errs[1] > errs[2] and nfes[0] < nfes[1] < nfes[2]


@pytest.mark.parametrize("solver", ["ode", "scipy"])
def test_bad_options(solver):
    m = G.predictor(SDES["linear"])
    with pytest.raises(ValueError, match="dopri5|RK45"):
        sample(m, X_T, solver=solver, method="no_such_method")
    with pytest.raises(ValueError, match="lambda"):
        sample(m, X_T, solver=solver, variable="sigma")
    with pytest.raises(ValueError, match="t_eps"):
        sample(m, X_T, solver=solver, t_eps=0.0)
    with pytest.raises(ValueError, match="rtol"):
        sample(m, X_T, solver=solver, rtol=-1.0)
    ztsnr = VPSDE.from_betas(rescale_zero_terminal_snr(linear_betas(1000)))  # alpha(1) == 0 exactly
    v_model = NoisePredictor(lambda x, t: torch.zeros_like(x), ztsnr, "v")
    with pytest.raises(ValueError, match="alpha = 0"):
        sample(v_model, X_T, solver=solver)


@pytest.mark.parametrize("solver", ["ode", "scipy"])
def test_cosine_schedule_can_start_at_t_1_in_lambda(solver):
    """alpha(1) = 6e-17 for the cosine schedule: beta(1) is huge, but lambda(1) = -37 is finite."""
    sde = VPSDE.cosine()
    r = sample(G.predictor(sde), X_T, solver=solver, ts=[1.0, 0.05], rtol=1e-7, atol=1e-7)
    assert (r.samples - G.flow_map(X_T, 1.0, 0.05, sde)).abs().max() < 1e-4
