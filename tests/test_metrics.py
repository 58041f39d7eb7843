"""Correctness of the benchmark metrics against closed forms and independent implementations."""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from sde_diffusion import metrics as M


def _spd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T + (1e-3 * np.eye(d) if rank is None else 0.0)


def test_fd_of_a_set_with_itself_is_zero():
    f = np.random.default_rng(0).standard_normal((300, 16)) @ np.diag(np.linspace(0.1, 3, 16))
    assert M.fd_from_features(f, f) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("d", [1, 5, 32])
def test_fd_matches_scipy_sqrtm_formula(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _spd(rng, d), _spd(rng, d)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    expected = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * root))
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8, abs=1e-9)


def test_fd_closed_form_for_commuting_and_singular_covariances():
    # diagonal covariances: FD = |dmu|^2 + sum (sqrt a - sqrt b)^2, also when one is singular
    a = np.array([4.0, 1.0, 0.0, 2.0])
    b = np.array([1.0, 9.0, 1.0, 0.0])
    mu1, mu2 = np.zeros(4), np.array([1.0, 0, 0, 2])
    expected = 5.0 + float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # a rotated rank-deficient pair stays finite and symmetric
    rng = np.random.default_rng(3)
    s1, s2 = _spd(rng, 20, rank=5), _spd(rng, 20, rank=7)
    fd12 = M.frechet_distance(mu1[:1].repeat(20), s1, mu1[:1].repeat(20), s2)
    fd21 = M.frechet_distance(mu1[:1].repeat(20), s2, mu1[:1].repeat(20), s1)
    assert math.isfinite(fd12) and fd12 == pytest.approx(fd21, rel=1e-6)


def test_fd_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError):
        M.fd_from_features(np.full((5, 2), np.nan), np.zeros((5, 2)))


def test_kid_is_unbiased_on_equal_distributions():
    vals = []
    for s in range(300):
        rng = np.random.default_rng(s)
        vals.append(M.kid(rng.standard_normal((40, 4)), rng.standard_normal((60, 4))))
    vals = np.array(vals)
    # the biased V-statistic would sit at ~ +0.1 here; the unbiased one is 0 within noise
    assert abs(vals.mean()) < 3 * vals.std() / math.sqrt(len(vals))


def test_kid_detects_a_shift_and_matches_a_direct_sum():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((30, 3)), rng.standard_normal((20, 3)) + 1.0
    k = lambda a, b: (a @ b / 3 + 1) ** 3
    sxx = sum(k(x[i], x[j]) for i in range(30) for j in range(30) if i != j) / (30 * 29)
    syy = sum(k(y[i], y[j]) for i in range(20) for j in range(20) if i != j) / (20 * 19)
    sxy = sum(k(a, b) for a in x for b in y) / 600
    assert M.kid(x, y) == pytest.approx(sxx + syy - 2 * sxy, rel=1e-10)
    assert M.kid(x, y) > 0.5


def test_wasserstein_1d_matches_scipy_for_unequal_sizes():
    rng = np.random.default_rng(2)
    for n, m in [(2, 3), (17, 5), (100, 37)]:
        a, b = rng.standard_normal(n), rng.exponential(size=m)
        got = float(M._wasserstein_1d(a[:, None], b[:, None], 1.0)[0])
        assert got == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=1e-10)
    # by hand: {0, 1} vs {0, 1/2, 1} -> 1/6
    assert float(M._wasserstein_1d(np.array([[0.0], [1]]), np.array([[0.0], [0.5], [1]]), 1)[0]) == pytest.approx(1 / 6)


@pytest.mark.parametrize("d", [2, 8])
def test_sliced_wasserstein_of_a_known_shift(d):
    # y = x + c e1: each projection theta sees the same sample shifted by c theta_1, whose W_p is exactly
    # |c theta_1|; so SW_1 -> |c| E|theta_1| = |c| G(d/2) / (sqrt(pi) G((d+1)/2)) and SW_2 -> |c| / sqrt(d)
    x = np.random.default_rng(0).standard_normal((200, d))
    c = 0.7
    y = x.copy()
    y[:, 0] += c
    e_abs = math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)
    assert M.sliced_wasserstein(x, y, n_proj=20000, p=1) == pytest.approx(c * e_abs, rel=0.02)
    assert M.sliced_wasserstein(x, y, n_proj=20000, p=2) == pytest.approx(c / math.sqrt(d), rel=0.02)
    assert M.sliced_wasserstein(x, x, n_proj=64) == pytest.approx(0.0, abs=1e-12)
    # the presorted path gives the same number
    ys = np.sort(y @ M.projections(d, 64, 5), axis=0)
    assert M.sliced_wasserstein(x, y, 64, 5, y_proj_sorted=ys) == pytest.approx(M.sliced_wasserstein(x, y, 64, 5))


def test_rmse_and_bootstrap_ci():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 3))
    assert M.rmse(a, a + 0.5) == pytest.approx(0.5)
    v = rng.normal(2.0, 1.0, 400)
    lo, hi = M.bootstrap_ci(lambda i: v[i].mean(), 400, n_boot=400, seed=1)
    half = 1.96 / math.sqrt(400)
    assert lo < v.mean() < hi and (hi - lo) == pytest.approx(2 * half, rel=0.25)
    with pytest.raises(ValueError):
        M.rmse(a, a[:3])


def test_mode_stats_on_a_mixture():
    from sde_diffusion.analytic import GaussianMixture

    gm = GaussianMixture([[-1.0, 0.0], [1.0, 0.0], [0.0, 2.0]], 0.1, [0.5, 0.25, 0.25])
    x = gm.sample(4000, generator=torch.Generator().manual_seed(0))
    s = M.mode_stats(gm, x)
    assert s["coverage"] == 1.0
    assert s["off_mode"] == pytest.approx(math.exp(-4.5), abs=0.006)  # P(chi2_2 > 9)
    assert s["mode_tv"] < 0.03
    one = gm.means[1] + 0.05 * torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    s1 = M.mode_stats(gm, one)
    assert s1["coverage"] == pytest.approx(1 / 3) and s1["counts"][1] == 500
    assert s1["mode_tv"] == pytest.approx(0.75)


def test_noise_floor_needs_two_disjoint_sets():
    real = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
    assert M.noise_floor_fd(real, 50) > 0
    with pytest.raises(ValueError):
        M.noise_floor_fd(real, 51)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_mixture_and_mode_stats_run_on_the_input_device(device):
    """GaussianMixture's densities, score and flow map, and mode_stats, follow the input's device and
    agree with the CPU values."""
    from sde_diffusion.analytic import GaussianMixture
    from sde_diffusion.sde import VPSDE

    sde = VPSDE.linear()
    gm = GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], [[0.3, 0.2], [0.1, 0.4]], [0.6, 0.4])
    x = gm.sample(300, generator=torch.Generator().manual_seed(0))
    xd = x.to(device)
    for f in (lambda v: gm.log_prob(v), lambda v: gm.log_prob(v, sde, 0.4), lambda v: gm.score(v, 0.4, sde),
              lambda v: gm.eps(v, torch.full((300,), 0.7, dtype=torch.float64), sde)):
        out = f(xd)
        assert out.device == xd.device
        torch.testing.assert_close(out.cpu(), f(x), rtol=1e-10, atol=1e-12)
    one = GaussianMixture([[0.5, -0.5]], 0.3)
    fm = one.flow_map(xd, 0.9, 0.2, sde)
    assert fm.device == xd.device
    torch.testing.assert_close(fm.cpu(), one.flow_map(x, 0.9, 0.2, sde), rtol=1e-10, atol=1e-12)
    s_dev, s_cpu = M.mode_stats(gm, xd), M.mode_stats(gm, x)
    np.testing.assert_array_equal(s_dev["counts"], s_cpu["counts"])
    assert s_dev["off_mode"] == s_cpu["off_mode"]
