"""Stochastic samplers: exact landing on a point mass, KS tests of their marginals on Gaussian data,
and the Brownian noise source (additivity, N(0, 1) increments, one path across step counts)."""

import math

import pytest
import torch
from scipy import stats

from sde_diffusion.analytic import GaussianMixture
from sde_diffusion.noise import BrownianNoise
from sde_diffusion.sampling import sample
from sde_diffusion.schedules import linear_betas
from sde_diffusion.sde import VPSDE
from sde_diffusion.solvers import SOLVERS

SDE = VPSDE.linear()

# (solver, options) of every stochastic sampler we know of; absent solvers are skipped
SAMPLERS = [
    ("ancestral", {}),
    ("ddim", {"eta": 1.0}),
    ("euler_maruyama", {}),
    ("pc", {}),
    ("pc", {"predictor": "ancestral"}),
    ("dpmpp_2m_sde", {}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" if o else n for n, o in SAMPLERS]


def need(name):
    if name not in SOLVERS:
        pytest.skip(f"solver {name!r} is not registered")


@pytest.mark.parametrize("name,opts", SAMPLERS, ids=IDS)
@pytest.mark.parametrize("sde", [SDE, VPSDE.from_betas(linear_betas(1000))], ids=["linear", "discrete"])
def test_lands_exactly_on_a_point_mass(name, opts, sde):
    """With data = one point, x0_hat(x, t) = mu exactly for every x, so the final step lands on mu."""
    need(name)
    mu = torch.tensor([0.7, -1.2, 0.1], dtype=torch.float64)
    g = GaussianMixture(mu[None], 0.0)
    r = sample(g.predictor(sde), shape=(5, 3), seed=0, solver=name, steps=10, **opts)
    assert (r.samples - mu.to(r.samples.dtype)).abs().max() < 1e-6


MU, STD = 0.5, 0.5


def ks_pvalue(x, mu=MU, std=STD):
    return stats.kstest(((x - mu) / std).flatten().numpy(), "norm").pvalue


@pytest.mark.parametrize("name,opts,steps", [
    ("ancestral", {}, 300),
    ("ddim", {"eta": 1.0}, 300),
    ("euler_maruyama", {}, 400),
    ("dpmpp_2m_sde", {}, 100),
], ids=["ancestral", "ddim-eta1", "euler_maruyama", "dpmpp_2m_sde"])
def test_marginal_ks_1d_gaussian(name, opts, steps):
    need(name)
    g = GaussianMixture([[MU]], STD)
    x = sample(g.predictor(SDE), shape=(3000, 1), generator=torch.Generator().manual_seed(1), solver=name,
               steps=steps, **opts).samples.double()
    assert ks_pvalue(x) > 0.01
    assert ks_pvalue(x, mu=MU + 0.15 * STD) < 0.01  # the test has the power to see a 0.15 std shift


@pytest.mark.parametrize("predictor", ["euler_maruyama", "ancestral"])
def test_pc_marginal_ks(predictor):
    """The Langevin step uses ||z|| / ||score|| per sample, which needs a high-dimensional sample
    (in 1-D the ratio is heavy-tailed and the corrector diverges, as in score_sde). Isotropic
    Gaussian data in D = 64; KS on coordinate 0 across 1000 independent samples."""
    g = GaussianMixture([[MU] * 64], STD)
    x = sample(g.predictor(SDE), shape=(1000, 64), generator=torch.Generator().manual_seed(2), solver="pc",
               steps=150, predictor=predictor).samples.double()
    assert ks_pvalue(x[:, 0]) > 0.01
    assert ks_pvalue(x[:, 0], mu=MU + 0.2 * STD) < 0.01


def test_euler_maruyama_first_step_matches_the_formula():
    """One EM step from s = 1 to t = 0.5 by hand: x + B/2 x + B score + sqrt(B) z, B = int beta."""
    g = GaussianMixture([[MU]], STD)
    x = torch.tensor([[0.3], [-1.0]], dtype=torch.float64)
    z = torch.randn(2, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    r = sample(g.predictor(SDE), x.clone(), solver="euler_maruyama", ts=[1.0, 0.5],
               generator=torch.Generator().manual_seed(3))
    B = 0.1 * 0.5 + 0.5 * (20 - 0.1) * (1 - 0.25)  # int_0.5^1 (b0 + u (b1 - b0)) du
    score = g.score(x, 1.0, SDE)
    torch.testing.assert_close(r.samples, x + B / 2 * x + B * score + math.sqrt(B) * z, rtol=1e-12, atol=1e-12)


# ---- Brownian noise ---------------------------------------------------------------------------
def test_brownian_increments_add_up_exactly():
    src = BrownianNoise((3, 4), seeds=[10, 11, 12], dtype=torch.float64)
    times = sorted(torch.rand(7, generator=torch.Generator().manual_seed(0), dtype=torch.float64).tolist(), reverse=True)
    parts = sum(src.interval(a, b) * math.sqrt(a - b) for a, b in zip(times[:-1], times[1:]))
    whole = src.interval(times[0], times[-1]) * math.sqrt(times[0] - times[-1])
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-12)


def test_brownian_increments_are_standard_normal_and_independent():
    src = BrownianNoise((1, 2000), seeds=[7], dtype=torch.float64)
    ts = [1.0, 0.8, 0.55, 0.3, 0.1, 0.0]
    zs = [src.interval(a, b).flatten() for a, b in zip(ts[:-1], ts[1:])]
    for z in zs:
        assert stats.kstest(z.numpy(), "norm").pvalue > 0.01
    for a, b in zip(zs[:-1], zs[1:]):  # disjoint intervals: uncorrelated
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 4 / math.sqrt(2000)


def test_runs_at_different_step_counts_share_the_brownian_path():
    """sum_i sqrt(h_i) z_i over any grid from 1 to 0 is W(0) - W(1) of the same path."""
    totals = {}

    def probe(model, x, ts, *, noise, callback=None):
        w = sum(noise.interval(float(a), float(b)) * math.sqrt(float(a - b)) for a, b in zip(ts[:-1], ts[1:]))
        totals[len(ts) - 1] = w
        return x

    m = GaussianMixture([[0.0, 0.0]]).predictor(SDE)
    for K in (3, 8, 20):
        sample(m, shape=(4, 2), seed=5, solver=probe, steps=K, noise="brownian", spacing="quadratic")
    torch.testing.assert_close(totals[3], totals[8], rtol=0, atol=1e-6)
    torch.testing.assert_close(totals[3], totals[20], rtol=0, atol=1e-6)


def test_euler_maruyama_converges_strongly_on_a_shared_path():
    """With one Brownian path per sample, EM at K and 2K steps approach each other (strong
    convergence); with fresh Gaussian noise per run they stay O(1) apart."""
    g = GaussianMixture([[MU]], STD)
    m = g.predictor(SDE)

    def run(K, noise):
        return sample(m, shape=(8, 1), seed=3, solver="euler_maruyama", steps=K, noise=noise).samples.double()

    ref = run(256, "brownian")
    gaps = [float((run(K, "brownian") - ref).abs().mean()) for K in (32, 128)]
    assert gaps[1] < gaps[0] / 2 and gaps[1] < 0.06
    fresh_gap = float((sample(m, shape=(8, 1), generator=torch.Generator().manual_seed(9), solver="euler_maruyama",
                              steps=256).samples.double() - ref).abs().mean())
    assert fresh_gap > 0.2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("noise", ["gaussian", "brownian"])
@pytest.mark.parametrize("name,opts", SAMPLERS, ids=IDS)
def test_stochastic_samplers_on_cuda_match_cpu(name, opts, noise):
    """Counter-based noise is device independent, so a seeded run on CUDA equals the CPU run to
    float tolerance (TF32 plays no part: the analytic net has no matmul in float32)."""
    from sde_diffusion.randomness import draw_x_T

    need(name)
    g = GaussianMixture([[MU, -MU]], STD)
    cpu = sample(g.predictor(SDE), shape=(16, 2), seed=4, solver=name, steps=12, noise=noise, **opts).samples
    x_T = draw_x_T((16, 2), 4, device="cuda")
    gpu = sample(g.predictor(SDE), x_T, seed=4, solver=name, steps=12, noise=noise, **opts).samples
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
