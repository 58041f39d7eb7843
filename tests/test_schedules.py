import math

import pytest
import torch
from hypothesis import given, strategies as st

from sde_diffusion import cosine_betas, linear_betas, rescale_zero_terminal_snr, scaled_linear_betas
from sde_diffusion.schedules import alphas_cumprod_of
from sde_diffusion.testing import assert_valid_betas, beta_schedules


@given(beta_schedules())
def test_generated_schedules_are_valid(betas):
    assert_valid_betas(betas)


@given(st.integers(1, 2000))
def test_builders_float64_length_and_range(n):
    for b in (linear_betas(n), scaled_linear_betas(n, 1e-4, 0.02), cosine_betas(n)):
        assert b.dtype == torch.float64 and b.shape == (n,)
        assert (b > 0).all() and (b < 1).all()


def test_ddpm_numbers_from_the_literature():
    # REFERENCES.md: alphas_cumprod[999] = 4.036e-5 for linspace(1e-4, 0.02, 1000)
    ac = alphas_cumprod_of(linear_betas(1000))
    assert ac[-1].item() == pytest.approx(4.036e-5, rel=1e-3)
    # Nichol & Dhariwal 2021 eq. 17 at the first step: 1 - f(1)/f(0)
    s = 0.008
    f = lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    assert cosine_betas(1000)[0].item() == pytest.approx(1 - f(1 / 1000) / f(0), rel=1e-12)
    assert cosine_betas(1000)[-1].item() == 0.999  # clipped at max_beta


def test_schedules_equal_diffusers():
    diffusers = pytest.importorskip("diffusers")
    for kind, ours in [("linear", linear_betas(1000)), ("scaled_linear", scaled_linear_betas(1000, 0.00085, 0.012)),
                       ("squaredcos_cap_v2", cosine_betas(1000))]:
        sch = diffusers.DDPMScheduler(beta_schedule=kind, beta_start=0.00085 if kind == "scaled_linear" else 1e-4,
                                      beta_end=0.012 if kind == "scaled_linear" else 0.02)
        assert torch.allclose(ours.float(), sch.betas, rtol=1e-6, atol=0), kind


@given(beta_schedules(min_size=2))
def test_zero_terminal_snr_rescale(betas):
    out = rescale_zero_terminal_snr(betas)
    ac_in, ac_out = alphas_cumprod_of(betas), alphas_cumprod_of(out)
    assert out[-1] == 1.0 and ac_out[-1] == 0.0
    assert ac_out[0].item() == pytest.approx(ac_in[0].item(), rel=1e-12)  # first value kept
    # sqrt(alphas_cumprod) is an affine map of the original (Lin et al. 2023, Alg. 1)
    a_in, a_out = ac_in.sqrt(), ac_out.sqrt()
    slope = (a_out[0] - a_out[-1]) / (a_in[0] - a_in[-1])
    assert torch.allclose(a_out, (a_in - a_in[-1]) * slope, atol=1e-10)


@pytest.mark.parametrize("call, msg", [
    (lambda: linear_betas(0), "integer >= 1"),
    (lambda: linear_betas(2.5), "integer >= 1"),
    (lambda: linear_betas(10, 0.0, 0.02), "beta_start"),
    (lambda: linear_betas(10, 1e-4, 1.5), "beta_end"),
    (lambda: scaled_linear_betas(10, float("nan"), 0.1), "beta_start"),
    (lambda: cosine_betas(-3), "integer >= 1"),
    (lambda: cosine_betas(10, max_beta=1.0), "max_beta"),
    (lambda: rescale_zero_terminal_snr(torch.tensor([0.1, float("nan")], dtype=torch.float64)), "NaN"),
    (lambda: rescale_zero_terminal_snr(torch.tensor([0.1, 1.2], dtype=torch.float64)), r"\(0, 1\)"),
    (lambda: rescale_zero_terminal_snr(torch.tensor([0.1])), "at least 2"),
])
def test_invalid_input_raises(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()
