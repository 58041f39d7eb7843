import pytest
import torch

from sde_diffusion import GaussianMixture, VPSDE, linear_betas, sample
from sde_diffusion.tuning import tune_grid


def test_tuned_grid_beats_standard_spacings_on_held_out_noise():
    # an anisotropic Gaussian (stds 0.02 .. 1): its exact probability-flow map is the reference
    sde = VPSDE.from_betas(linear_betas(1000))
    stds = torch.logspace(-1.7, 0, 16, dtype=torch.float64)
    g = GaussianMixture(torch.linspace(-1, 1, 16, dtype=torch.float64)[None], stds[None])
    m = g.predictor(sde)
    draw = lambda s: torch.randn(64, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
    x_cal, x_test = draw(1), draw(2)
    exact = lambda x: g.flow_map(x, 1.0, 0.0, sde)
    res = tune_grid(m, "dpmpp_2m", 5, x_T=x_cal, reference=exact(x_cal), maxfev=120)
    ts = res["ts"]
    assert ts.dtype == torch.float64 and len(ts) == 6 and ts[0] == 1.0 and ts[-1] == 0.0
    rmse = lambda out: float(((out - exact(x_test)) ** 2).mean().sqrt())
    tuned = rmse(sample(m, x_test, solver="dpmpp_2m", ts=ts).samples)
    best_standard = min(rmse(sample(m, x_test, solver="dpmpp_2m", steps=5, spacing=s).samples)
                        for s in ("logsnr", "karras", "uniform", "quadratic"))
    assert tuned < 0.8 * best_standard, (tuned, best_standard)


def test_tuning_needs_two_steps():
    m = GaussianMixture([[0.0]], 1.0).predictor(VPSDE.linear())
    with pytest.raises(ValueError, match="steps >= 2"):
        tune_grid(m, "ddim", 1, x_T=torch.zeros(2, 1), reference=torch.zeros(2, 1))
