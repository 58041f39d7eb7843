"""The bespoke linear solver (solvers/bespoke.py) and its fit (tuning_bespoke.py): every base solver is its
coefficient matrix, DDIM's matrix is the closed form, learned matrices beat learned grids on exact flow maps."""

import math

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from sde_diffusion import VPSDE, sample
from sde_diffusion.model import NoisePredictor
from sde_diffusion.solvers.bespoke import BASES, linear_coefficients
from sde_diffusion.tuning import tune


def _net_model():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 6, dtype=torch.float64, generator=g) * 0.5

    def net(x, t):  # smooth, nonlinear in x and t
        return torch.tanh(x @ W) + torch.sin(3 * t)[:, None].to(x.dtype) * x

    return NoisePredictor(net, VPSDE.linear(), timestep_dtype=torch.float64, time_input=lambda t: t)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("K", [2, 7])
def test_bespoke_with_a_base_reproduces_that_solver(base, K):
    m = _net_model()
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = sample(m, x, solver=base, steps=K, spacing="logsnr")
    out = sample(m, x, solver="bespoke", steps=K, spacing="logsnr", base=base)
    assert out.nfe == ref.nfe == K
    torch.testing.assert_close(out.samples, ref.samples, rtol=1e-11, atol=1e-11)


def test_ddim_matrix_is_the_closed_form():
    # DDIM (Song et al. 2021, eq. 12, eta = 0): x_{i+1} = (s_{i+1}/s_i) x_i + (a_{i+1} - a_i s_{i+1}/s_i) D_i
    sde = VPSDE.linear()
    ts = torch.tensor([1.0, 0.7, 0.3, 0.05, 0.0], dtype=torch.float64)
    a, s = sde.alpha(ts).tolist(), sde.sigma(ts).tolist()
    K = len(ts) - 1
    A = torch.zeros(K + 1, K + 1, dtype=torch.float64)
    A[0, 0] = 1.0
    for i in range(K):
        r = s[i + 1] / s[i]
        A[i + 1] = r * A[i]
        A[i + 1, i + 1] += a[i + 1] - a[i] * r
    torch.testing.assert_close(linear_coefficients(sde, "ddim", ts), A, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("base,opts,match", [
    ("heun", {}, "base must be one of"),
    ("unipc", {"order": 0}, "order"),
    ("unipc", "order=2", "base_options must be a dict"),
])
def test_bad_base_is_one_line(base, opts, match):
    with pytest.raises(ValueError, match=match):
        linear_coefficients(VPSDE.linear(), base, torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64), opts)


@pytest.mark.parametrize("coefficients,match", [
    ([[1.0], [0.5, 0.5]], "K \\+ 1 = 3 rows"),
    ([[1.0], [0.5, 0.5], [0.0, 0.1]], "row i with at least i \\+ 1 numbers"),
    ([[1.0, 2.0], [0.5, 0.5], [0.0, 0.1, 0.9]], "row 0 uses a network evaluation not made yet"),
    ([[1.0], [0.5, float("nan")], [0.0, 0.1, 0.9]], "row 1 has a non-finite number"),
    ("abc", "lower-triangular matrix"),
])
def test_bad_coefficients_are_refused_before_any_network_call(coefficients, match):
    m = _net_model()
    with pytest.raises(ValueError, match=match):
        sample(m, torch.zeros(2, 6, dtype=torch.float64), solver="bespoke", steps=2, coefficients=coefficients)
    assert m.nfe == 0


def test_learned_matrix_beats_a_learned_grid_on_an_exact_flow_map():
    # exact Gaussian targets: the flow map is closed form, so every error below is exact
    from test_tuning import _draw, _mixture, _rmse

    g, m, exact = _mixture()
    xc, xv, xh = _draw(21), _draw(22, 16), _draw(23, 64)
    sets = dict(x_T=xc, reference=exact(xc), x_val=xv, reference_val=exact(xv), x_holdout=xh,
                reference_holdout=exact(xh))
    grid_only = tune(m, "unipc", 4, maxfev=40, **sets)
    r = tune(m, "bespoke", 4, maxfev=40, options={"base": "unipc"}, **sets)
    assert r["parameters"] == 4 + 4 * 7 // 2  # free start + 3 increments, rows 1..4 of the matrix
    assert r["holdout"]["rmse"] <= r["holdout"]["start_rmse"]
    assert r["holdout"]["rmse"] < 0.25 * grid_only["holdout"]["rmse"], (r["holdout"], grid_only["holdout"])
    # the tuned run is what sample() runs from the JSON options, to the last bit
    out = sample(m, xh, solver="bespoke", ts=torch.tensor(r["ts"], dtype=torch.float64), **r["options"]).samples
    assert _rmse(out, exact(xh)) == r["holdout"]["rmse"]
    assert math.isfinite(r["validation"]["rmse"]) and r["validation"]["rmse"] <= r["validation"]["start_rmse"]


def test_probe_turns_a_time_shifted_dpmpp_2m_into_a_bespoke_matrix():
    # dpmpp_2m with learned weights and network times (tuning's output) is linear too: its matrix on the grid of
    # its network times reproduces it, which is how a bespoke tune starts from a shipped dpmpp_2m configuration
    from sde_diffusion.solvers import SOLVERS
    from sde_diffusion.solvers.bespoke import probe_matrix

    m = _net_model()
    x = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ts = torch.tensor([0.97, 0.7, 0.45, 0.2, 0.0], dtype=torch.float64)
    opts = dict(coefficients=[0.3, -0.2, 0.8], eval_times=[0.99, 0.66, 0.47, 0.18])
    ref = sample(m, x, solver="dpmpp_2m", ts=ts, **opts).samples
    A, times = probe_matrix(m.sde, SOLVERS["dpmpp_2m"], ts, opts)
    assert times == pytest.approx(opts["eval_times"], abs=1e-15)
    grid = torch.tensor(times + [0.0], dtype=torch.float64)
    out = sample(m, x, solver="bespoke", ts=grid, coefficients=[A[i, : i + 1].tolist() for i in range(5)]).samples
    torch.testing.assert_close(out, ref, rtol=1e-11, atol=1e-11)


@settings(max_examples=25, deadline=None)
@given(base=st.sampled_from(BASES), times=st.lists(st.floats(0.02, 0.98), min_size=1, max_size=6, unique=True),
       start=st.floats(0.99, 1.0))
def test_any_grid_the_probe_matrix_reproduces_the_base(base, times, start):
    m = _net_model()
    ts = torch.tensor([start] + sorted(times, reverse=True) + [0.0], dtype=torch.float64)
    assume(bool((ts[:-1] - ts[1:] >= 1e-3).all()))  # nearly repeated times: not a grid a solver is meant for
    x = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ref = sample(m, x, solver=base, ts=ts).samples
    out = sample(m, x, solver="bespoke", ts=ts, base=base).samples
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
