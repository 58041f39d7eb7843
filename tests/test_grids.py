import pytest
import torch
from hypothesis import given, strategies as st

from sde_diffusion import VPSDE, linear_betas, time_grid
from sde_diffusion.grids import discrete_timesteps, grid_from_timesteps
from sde_diffusion.testing import assert_valid_grid, time_grids

F64 = torch.float64


@given(time_grids())
def test_property_grids(args):
    sde, grid, spacing, steps = args
    assert_valid_grid(grid, steps, t_end=0.0)
    if spacing not in ("leading", "linspace"):
        assert float(grid[0]) == (1.0 if sde.kind != "cosine" else 0.99)


@given(st.integers(1, 60), st.floats(0.3, 1.0), st.one_of(st.just(0.0), st.floats(1e-9, 0.2)))
def test_continuous_endpoints_exact(steps, t_start, t_end):
    sde = VPSDE.linear()
    for sp in ("uniform", "quadratic", "logsnr", "karras"):
        assert_valid_grid(time_grid(sde, steps, sp, t_start=t_start, t_end=t_end), steps, t_start, t_end)


def test_logsnr_is_uniform_in_lambda_and_karras_formula():
    sde = VPSDE.linear()
    g = time_grid(sde, 10, "logsnr", t_end=1e-3)
    lam = sde.log_snr(g)
    assert torch.allclose(lam.diff(), lam.diff()[0].expand(10), rtol=1e-9)
    g = time_grid(sde, 10, "karras", t_end=1e-3)
    sig = sde.sigma_ve(g)
    r = sig ** (1 / 7)
    assert torch.allclose(r.diff(), r.diff()[0].expand(10), rtol=1e-8)  # EDM eq. 5


def test_discrete_spacings_equal_diffusers():
    diffusers = pytest.importorskip("diffusers")
    for spacing in ("leading", "trailing", "linspace"):
        for steps in (1, 7, 10, 50, 999, 1000):
            sch = diffusers.DDIMScheduler(timestep_spacing=spacing)
            sch.set_timesteps(steps)
            ours = discrete_timesteps(1000, steps, spacing)
            assert ours.tolist() == sch.timesteps.tolist(), (spacing, steps)


def test_grid_from_timesteps_appends_zero_and_uses_next_entry():
    sde = VPSDE.from_betas(linear_betas(1000))
    g = time_grid(sde, 4, "trailing")
    assert g.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    g = grid_from_timesteps(sde, [999, 500, 3])
    assert g.tolist() == [1.0, 0.501, 0.004, 0.0]


@pytest.mark.parametrize("call, msg", [
    (lambda s: time_grid(s, 0, "uniform"), "steps"),
    (lambda s: time_grid(s, 3, "cubic"), "uniform, quadratic"),
    (lambda s: time_grid(s, 1001, "trailing"), "cannot exceed"),
    (lambda s: time_grid(VPSDE.linear(), 3, "leading"), "discrete"),
    (lambda s: time_grid(s, 3, "uniform", t_start=0.1, t_end=0.5), "t_end < t_start"),
    (lambda s: time_grid(s, 3, "logsnr", t_end=5e-324), "finite log-SNR"),
    (lambda s: grid_from_timesteps(s, [10, 10, 3]), "strictly decreasing"),
    (lambda s: grid_from_timesteps(s, [3, 10]), "strictly decreasing"),
    (lambda s: grid_from_timesteps(s, [1000, 3]), r"\[0, 999\]"),
])
def test_invalid(call, msg):
    with pytest.raises(ValueError, match=msg):
        call(VPSDE.from_betas(linear_betas(1000)))
