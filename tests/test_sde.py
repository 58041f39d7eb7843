import math

import pytest
import torch
from hypothesis import given
from scipy import stats

from sde_diffusion import VPSDE, cosine_betas, linear_betas, rescale_zero_terminal_snr
from sde_diffusion.testing import assert_valid_sde, vp_sdes

F64 = torch.float64


@given(vp_sdes())
def test_property_every_sde(sde):
    assert_valid_sde(sde)


def test_discrete_exact_at_grid_and_zero_at_t0():
    sde = VPSDE.from_betas(linear_betas(1000))
    n = torch.arange(1000)
    t = sde.t_of_timestep(n.to(F64))
    assert torch.equal(t, (n.to(F64) + 1) / 1000)
    assert (sde.alpha(t) ** 2 - torch.cumprod(1 - linear_betas(1000), 0)).abs().max() < 1e-15
    assert sde.alpha(0.0) == 1.0 and sde.sigma(0.0) == 0.0 and sde.log_snr(0.0) == math.inf
    assert torch.equal(sde.timestep_of(t), n.to(F64))


def test_discrete_vs_continuous_linear_gap():
    # REFERENCES.md: max |sqrt(ac[n]) - alpha_linear(t_n)| = 9.9e-4 for N = 1000
    d, c = VPSDE.from_betas(linear_betas(1000)), VPSDE.linear(0.1, 20.0)
    t = (torch.arange(1000, dtype=F64) + 1) / 1000
    gap = (d.alpha(t) - c.alpha(t)).abs().max().item()
    assert 9.5e-4 < gap <= 1.1e-3


def test_linear_closed_forms():
    sde = VPSDE.linear(0.1, 20.0)
    t = torch.linspace(0, 1, 11, dtype=F64)
    assert torch.allclose(sde.log_alpha(t), -t**2 * 19.9 / 4 - t * 0.05, atol=1e-15)
    assert torch.allclose(sde.beta(t), 0.1 + 19.9 * t)
    # beta = -2 d log alpha / dt, checked by central differences (independent of the closed form)
    for s in (sde, VPSDE.cosine(), VPSDE.from_betas(cosine_betas(1000))):
        tt = torch.tensor([0.2531, 0.5017, 0.7503], dtype=F64)
        h = 1e-7
        fd = -2 * (s.log_alpha(tt + h) - s.log_alpha(tt - h)) / (2 * h)
        assert torch.allclose(s.beta(tt), fd, rtol=1e-5), s


def test_float_in_float_out_and_tensor_shapes():
    sde = VPSDE.from_betas(linear_betas(50))
    assert isinstance(sde.alpha(0.3), float)
    t = torch.rand(3, 4, dtype=torch.float32)
    assert sde.alpha(t).shape == (3, 4) and sde.alpha(t).dtype == F64


def test_drift_and_diffusion():
    sde = VPSDE.linear()
    x = torch.randn(4, 3)
    assert torch.allclose(sde.drift(x, 0.5), -0.5 * (0.1 + 19.9 * 0.5) * x)
    assert sde.diffusion(0.5) == pytest.approx(math.sqrt(0.1 + 19.9 * 0.5))


@pytest.mark.parametrize("t", [0.05, 0.5, 0.95])
def test_marginal_statistics(t):
    sde = VPSDE.from_betas(linear_betas(1000))
    x0 = torch.full((20000, 1), 1.5, dtype=F64)
    xt = sde.marginal(x0, t, generator=torch.Generator().manual_seed(0))
    a, s = float(sde.alpha(t)), float(sde.sigma(t))  # Python floats: newer scipy's ndtr refuses torch scalars
    # seeded KS test against N(alpha x0, sigma^2): the exact marginal (Ho et al. eq. 4)
    p = stats.kstest(xt.flatten().numpy().astype("float64"), "norm", args=(a * 1.5, s)).pvalue
    assert p > 1e-3
    assert stats.kstest(xt.flatten().numpy().astype("float64"), "norm", args=(a * 1.5 + 0.05 * s, s)).pvalue < 1e-3


def test_marginal_per_sample_times():
    sde = VPSDE.linear()
    x0, z = torch.ones(3, 2), torch.zeros(3, 2)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    out = sde.marginal(x0, t, noise=z)
    assert torch.allclose(out[:, 0], sde.alpha(t).float())


def test_prior_sample_per_sample_generators():
    sde = VPSDE.linear()
    g = [torch.Generator().manual_seed(k) for k in range(3)]
    x = sde.prior_sample((3, 5), g)
    assert torch.equal(x[1], torch.randn(5, generator=torch.Generator().manual_seed(1)))


def test_zero_terminal_snr_sde():
    sde = VPSDE.from_betas(rescale_zero_terminal_snr(linear_betas(1000)))
    assert sde.zero_terminal_snr and sde.alpha(1.0) == 0.0 and sde.log_snr(1.0) == -math.inf
    t = torch.tensor([0.9991, 0.9995, 0.9999], dtype=F64)
    assert torch.allclose(sde.t_from_log_snr(sde.log_snr(t)), t, atol=1e-9)
    assert (sde.alpha(t)[1:] < sde.alpha(t)[:-1]).all()


@pytest.mark.parametrize("call, msg", [
    (lambda: VPSDE.linear(0.0, 20.0), "beta_min"),
    (lambda: VPSDE.linear(5.0, 1.0), "beta_min"),
    (lambda: VPSDE.cosine(1.5), "s must"),
    (lambda: VPSDE.from_betas([0.1, 0.0]), r"\(0, 1\)"),
    (lambda: VPSDE.linear().alpha(1.5), r"\[0, 1\]"),
    (lambda: VPSDE.linear().alpha(float("nan")), r"\[0, 1\]"),
    (lambda: VPSDE.linear().timestep_of(0.5), "discrete"),
    (lambda: VPSDE.from_betas(linear_betas(10)).t_of_timestep(10), r"\[-1, 9\]"),
])
def test_invalid_input(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_marginal_on_cuda_stays_on_cuda_and_matches_the_cpu():
    """Per-sample times and the noise given: the CUDA marginal equals the CPU one to rounding."""
    sde = VPSDE.from_betas(linear_betas(1000))
    x0 = torch.linspace(-1, 1, 12, dtype=F64).reshape(4, 3)
    z = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.05, 0.3, 0.7, 0.99], dtype=F64)
    out = sde.marginal(x0.cuda(), t.cuda(), noise=z.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), sde.marginal(x0, t, noise=z), rtol=1e-12, atol=1e-12)
