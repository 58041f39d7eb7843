"""Likelihood by the probability-flow ODE and the DDPM ELBO, checked against closed forms.

The analytic Gaussian-mixture predictor is the exact eps of the noised data, so the PF-ODE density
at t_end equals GaussianMixture.log_prob(x, sde, t_end) up to the solver tolerance and the prior
mismatch N(0, I) vs p_1 (alpha(1) = 6.6e-3 for the linear VP: ~2e-3 nats/dim here).
"""

import math

import pytest
import torch

from sde_diffusion import VPSDE, linear_betas
from sde_diffusion.analytic import GaussianMixture
from sde_diffusion.likelihood import dequantize_offset, elbo_bpd, log_likelihood

F64 = torch.float64
LN2 = math.log(2)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def full_cov_gaussian(D=3, seed=0):
    g = gen(seed)
    A = torch.randn(D, D, dtype=F64, generator=g) * 0.3
    C = A @ A.T + 0.05 * torch.eye(D, dtype=F64)
    assert (C - torch.diag(torch.diag(C))).abs().max() > 0.01  # genuinely full
    return GaussianMixture(torch.randn(1, D, dtype=F64, generator=g) * 0.3, C[None])


def mixture3():
    covs = torch.tensor([[[0.04, 0.01], [0.01, 0.02]], [[0.03, -0.015], [-0.015, 0.05]],
                         [[0.02, 0.0], [0.0, 0.06]]], dtype=F64)
    return GaussianMixture([[-0.5, -0.3], [0.5, 0.0], [0.0, 0.6]], covs, weights=[0.3, 0.3, 0.4])


@pytest.mark.parametrize("sde_kind,method", [("linear", "dopri5"), ("discrete", "scipy:RK45")])
def test_exact_trace_matches_closed_form_density(sde_kind, method):
    gm = full_cov_gaussian()
    sde = VPSDE.linear() if sde_kind == "linear" else VPSDE.from_betas(linear_betas(1000))
    x = gm.sample(12, generator=gen(1))
    r = log_likelihood(gm.predictor(sde), x, trace="exact", dequantize=None, method=method)
    target = gm.log_prob(x, sde, 1e-5)
    assert ((r.log_prob - target).abs() / gm.D).max() < 0.005
    assert torch.allclose(r.log_prob, r.prior_logp + r.delta_logp)
    assert torch.allclose(r.bpd, -r.log_prob / (gm.D * LN2))  # no offset without dequantization
    # the end point is the exact probability-flow image of x
    assert torch.allclose(r.z, gm.flow_map(x, 1e-5, 1.0, sde), atol=1e-3)
    assert r.nfe > 10


def test_hutchinson_is_unbiased_and_probes_reduce_variance():
    gm = full_cov_gaussian(D=4, seed=3)
    sde = VPSDE.linear()
    m = gm.predictor(sde)
    x = gm.sample(64, generator=gen(2))
    exact = gm.log_prob(x, sde, 1e-5)
    spread = {}
    for noise, probes in [("rademacher", 1), ("gaussian", 1), ("rademacher", 4)]:
        r = log_likelihood(m, x, trace="hutchinson", probes=probes, noise=noise, dequantize=None,
                           method="scipy:RK45", generator=gen(7))
        d = r.log_prob - exact
        se = d.std() / math.sqrt(len(d))
        assert d.std() > 0.05  # really stochastic: one estimate per sample
        assert d.mean().abs() < 3.5 * se + 0.01, (noise, probes, float(d.mean()), float(se))
        spread[(noise, probes)] = float(d.std())
    assert spread[("rademacher", 4)] < 0.75 * spread[("rademacher", 1)]  # ~1/sqrt(4)


def test_gaussian_mixture_within_one_percent():
    gm = mixture3()
    sde = VPSDE.linear()
    x = gm.sample(24, generator=gen(4))
    r = log_likelihood(gm.predictor(sde), x, trace="exact", dequantize=None)
    target = gm.log_prob(x, sde, 1e-5)
    err = (r.log_prob - target).abs()
    assert err.mean() < 0.01 * target.abs().mean()
    assert (err / gm.D).max() < 0.005


def test_net_never_sees_times_outside_the_interval():
    gm = full_cov_gaussian(D=2)
    sde = VPSDE.linear()
    m = gm.predictor(sde)
    seen = []
    net = m.net
    m.net = lambda x, t: (seen.append(t.clone()), net(x, t))[1]
    t_end = 1e-3
    log_likelihood(m, gm.sample(4, generator=gen(0)), trace="exact", dequantize=None, t_end=t_end, method="dopri5")
    ts = torch.cat(seen)
    assert ts.min() >= t_end and ts.max() <= 1.0
    assert ts.max() == 1.0 and ts.min() == t_end  # and it does reach both ends


@pytest.mark.parametrize("dequantize,num_bins,tol", [("uniform", 256, 0.003), ("centered", 256, 0.003),
                                                     ("uniform", 17, 0.04), ("centered", 17, 0.04)])
def test_dequantized_bpd_matches_discrete_nll(dequantize, num_bins, tol):
    """Binning N(mu, 0.3^2) into the dequantizer's bins gives an exact discrete NLL: the dequantized
    bits/dim must match it (the offsets 7 vs log2(127.5) differ by 0.0056 at K = 256, and
    log2(8.5) vs 3 by 0.087 at K = 17, both well beyond the tolerance)."""
    mu, std, K = torch.tensor([0.1, -0.2], dtype=F64), 0.3, num_bins
    gm = GaussianMixture(mu[None], std)
    xs = gm.sample(100, generator=gen(5)).clamp(-0.999, 0.999)
    if dequantize == "uniform":  # bins [2k/K - 1, 2(k+1)/K - 1)
        k = torch.floor((xs + 1) / 2 * K)
        lo, hi = k / K * 2 - 1, (k + 1) / K * 2 - 1
    else:  # bins of width 2/(K-1) centred on the levels
        k = torch.round((xs + 1) / 2 * (K - 1))
        lo, hi = 2 * k / (K - 1) - 1 - 1 / (K - 1), 2 * k / (K - 1) - 1 + 1 / (K - 1)
    xq = 2 * k / (K - 1) - 1
    nd = torch.distributions.Normal(mu, std)
    discrete_bpd = -torch.log(nd.cdf(hi) - nd.cdf(lo)).sum(1) / (2 * LN2)
    r = log_likelihood(gm.predictor(VPSDE.linear()), xq, trace="exact", dequantize=dequantize, num_bins=K,
                       method="scipy:RK45", generator=gen(0))
    assert ((r.x >= lo) & (r.x < hi)).all()  # each point dequantized inside its own bin
    assert torch.allclose(r.log_prob, gm.log_prob(r.x, VPSDE.linear(), 1e-5), atol=0.01)
    assert abs(float((r.bpd - discrete_bpd).mean())) < tol
    assert r.info["offset"] == dequantize_offset(dequantize, K)


def test_score_sde_offset_is_seven():
    assert dequantize_offset("uniform", 256) == 7.0
    assert dequantize_offset("centered", 17) == 3.0
    assert dequantize_offset(None, 256) == 0.0


# ---- ELBO -------------------------------------------------------------------------------------
def expected_elbo_gaussian(gm, sde, variance="small"):
    """E_x[ELBO] in closed form for one Gaussian N(mu, C) with the exact eps (decoder="gaussian"):
    E|x0 - x0_hat(x_n)|^2 = tr Cov(x0 | x_n) = tr (C^-1 + ab/(1-ab) I)^-1 and E|x0|^2 = |mu|^2 + tr C."""
    C, mu, D = gm.covs[0], gm.means[0], gm.D
    ab, b = sde.alphas_cumprod, sde.betas
    ab_prev = torch.cat([torch.ones(1, dtype=F64), ab[:-1]])
    pv = b * (1 - ab_prev) / (1 - ab)
    Ci = torch.linalg.inv(C)
    I = torch.eye(D, dtype=F64)

    def tr_post(n):
        return float(torch.trace(torch.linalg.inv(Ci + ab[n] / (1 - ab[n]) * I)))

    aT = float(ab[-1])
    total = 0.5 * (aT * (float(mu @ mu) + float(torch.trace(C))) - D * aT - D * math.log1p(-aT))
    for n in range(1, len(b)):
        vq = float(pv[n])
        vp = vq if variance == "small" else float(b[n])
        c1 = float(ab_prev[n].sqrt() * b[n] / (1 - ab[n]))
        total += 0.5 * (D * (vq / vp - 1 - math.log(vq / vp)) + c1**2 * tr_post(n) / vp)
    s2 = float(pv[1])
    total += 0.5 * (D * math.log(2 * math.pi * s2) + tr_post(0) / s2)
    return -total


@pytest.mark.parametrize("variance,num_timesteps", [("small", None), ("large", None), ("small", 20)])
def test_elbo_matches_closed_form_expectation(variance, num_timesteps):
    gm = full_cov_gaussian(D=3, seed=1)
    sde = VPSDE.from_betas(linear_betas(100, 1e-3, 0.2))
    x = gm.sample(400, generator=gen(3))
    e = elbo_bpd(gm.predictor(sde), x, decoder="gaussian", variance=variance, num_timesteps=num_timesteps,
                 generator=gen(4))
    want = expected_elbo_gaussian(gm, sde, variance)
    se = float(e.elbo.std()) / math.sqrt(len(x))
    assert abs(float(e.elbo.mean()) - want) < 3.5 * se, (float(e.elbo.mean()), want, se)
    assert e.nfe == (100 if num_timesteps is None else num_timesteps + 1)
    assert torch.allclose(e.bpd, -e.elbo / (3 * LN2))
    assert torch.allclose(e.elbo, -(e.prior + e.diffusion + e.decoder))


def test_elbo_is_below_the_ode_likelihood_continuous_and_discrete():
    gm = full_cov_gaussian(D=3, seed=1)
    sde = VPSDE.from_betas(linear_betas(100, 1e-3, 0.2))
    m = gm.predictor(sde)  # exact eps: the ODE density is the data density, E[ELBO] <= E[log p]
    x = gm.sample(32, generator=gen(8))
    ode = log_likelihood(m, x, trace="exact", dequantize=None, method="scipy:RK45", rtol=1e-4, atol=1e-4)
    e = elbo_bpd(m, x, decoder="gaussian", generator=gen(9))
    gap = ode.log_prob - e.elbo
    assert gap.mean() > 3 * gap.std() / math.sqrt(len(x)) and gap.mean() > 0.1
    # discrete data: 17 levels (digits-like); both are bounds on a discrete NLL in bits/dim
    K = 17
    xq = (torch.round((x.clamp(-1, 1) + 1) / 2 * (K - 1)) / (K - 1) * 2 - 1)
    ode_q = log_likelihood(m, xq, trace="exact", dequantize="centered", num_bins=K, method="scipy:RK45", rtol=1e-4, atol=1e-4,
                           generator=gen(10))
    e_q = elbo_bpd(m, xq, decoder="discrete", num_bins=K, generator=gen(11))
    d = e_q.bpd - ode_q.bpd
    assert d.mean() > 3 * d.std() / math.sqrt(len(x))
    assert (e_q.decoder >= 0).all()  # a probability: -log P >= 0


def test_discrete_decoder_matches_a_direct_cdf_computation():
    """L_0 for one sample by hand: bins of half-width 1/(K-1), open at -1 and +1."""
    sde = VPSDE.from_betas(linear_betas(10, 1e-2, 0.3))
    x0_hat = torch.tensor([[-0.9, 0.2, 0.95, 0.0]], dtype=F64)
    from sde_diffusion.model import NoisePredictor

    def net(x, t):  # eps such that the x0 prediction is x0_hat everywhere
        a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        return (x - a * x0_hat) / s

    m = NoisePredictor(net, sde, time_input=lambda t: t, timestep_dtype=F64)
    x = torch.tensor([[-1.0, 0.25, 1.0, 0.0]], dtype=F64)
    K = 9
    e = elbo_bpd(m, x, decoder="discrete", num_bins=K, generator=gen(0))
    s = math.sqrt(float(sde.betas[1] * (1 - sde.alphas_cumprod[0]) / (1 - sde.alphas_cumprod[1])))
    nd = torch.distributions.Normal(x0_hat[0], s)
    h = 1 / (K - 1)
    p = torch.stack([nd.cdf(torch.tensor(-1 + h, dtype=F64))[0],
                     nd.cdf(torch.tensor(0.25 + h, dtype=F64))[1] - nd.cdf(torch.tensor(0.25 - h, dtype=F64))[1],
                     1 - nd.cdf(torch.tensor(1 - h, dtype=F64))[2],
                     nd.cdf(torch.tensor(h, dtype=F64))[3] - nd.cdf(torch.tensor(-h, dtype=F64))[3]])
    assert torch.allclose(e.decoder, -torch.log(p).sum()[None], rtol=1e-9)


# ---- bad input --------------------------------------------------------------------------------
def test_bad_input_raises_one_line_value_errors():
    gm = full_cov_gaussian(D=2)
    m = gm.predictor(VPSDE.linear())
    x = torch.zeros(2, 2, dtype=F64)
    cases = [
        (dict(x=torch.zeros(2, 3, dtype=F64)), "shape"),
        (dict(x=torch.zeros(2)), "shape"),
        (dict(x=torch.full((2, 2), 1.5, dtype=F64)), r"\[-1, 1\]"),
        (dict(x=torch.full((2, 2), 0.1, dtype=F64), num_bins=256), "grid"),
        (dict(probes=0), ">= 1"),
        (dict(trace="sketchy"), "exact, hutchinson"),
        (dict(noise="uniform"), "rademacher, gaussian"),
        (dict(dequantize="variational"), "'uniform', 'centered'"),
        (dict(method="rk99"), "dopri5"),
        (dict(method="scipy:BDF"), "scipy:RK45"),
        (dict(t_end=0.0), "t_end"),
    ]
    for kw, msg in cases:
        xx = kw.pop("x", x)
        with pytest.raises(ValueError, match=msg) as ei:
            log_likelihood(m, xx, **kw)
        assert "\n" not in str(ei.value)
    with pytest.raises(ValueError, match="one per sample"):
        log_likelihood(m, x, dequantize=None, generator=[gen(0), gen(1), gen(2)])
    with pytest.raises(ValueError, match="discrete VPSDE"):
        elbo_bpd(m, x)
    md = gm.predictor(VPSDE.from_betas(linear_betas(10)))
    with pytest.raises(ValueError, match="discrete, gaussian"):
        elbo_bpd(md, x, decoder="logistic")
    with pytest.raises(ValueError, match="one per sample"):
        elbo_bpd(md, x, decoder="gaussian", generator=[gen(0)])
    with pytest.raises(ValueError, match="num_timesteps"):
        elbo_bpd(md, x, num_timesteps=10)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        elbo_bpd(md, torch.full((2, 2), -1.2, dtype=F64))


# ---- the command line -------------------------------------------------------------------------
GAUSSIAN_DIGITS = '''
import torch
from sde_diffusion import VPSDE, linear_betas
from sde_diffusion.analytic import GaussianMixture
from sde_diffusion.data import load_digits

def model():
    """The exact predictor of a Gaussian fitted to the digits train split (std >= 0.1 per pixel)."""
    x = load_digits("train").reshape(-1, 64).double()
    cov = torch.cov(x.T) + 0.01 * torch.eye(64, dtype=torch.float64)
    gm = GaussianMixture(x.mean(0)[None], cov[None], data_shape=(1, 8, 8))
    return gm.predictor(VPSDE.from_betas(linear_betas(1000)))
'''


def test_cli_reports_what_the_library_computes(tmp_path, capsys):
    """`sde-diffusion nll` = log_likelihood/elbo_bpd on the same images with per-sample seeds
    seed + k, 17 levels and centred dequantization for digits."""
    import re

    from sde_diffusion.cli import main
    from sde_diffusion.data import load_digits
    from sde_diffusion.randomness import per_sample_generators

    f = tmp_path / "gaussian_digits.py"
    f.write_text(GAUSSIAN_DIGITS)
    opts = dict(method="scipy:RK45", rtol=1e-4, atol=1e-4)
    rc = main(["nll", "--model", f"{f}:model", "--n", "6", "--batch-size", "3", "--elbo-steps", "10", "--seed", "5",
               "--method", opts["method"], "--rtol", "1e-4", "--atol", "1e-4", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    ode = float(re.search(r"ODE\s+(-?[\d.]+) \+- ([\d.]+) bits/dim of the 17-level data", out).group(1))
    elbo = float(re.search(r"ELBO\s+(-?[\d.]+) \+-", out).group(1))

    ns = {}
    exec(GAUSSIAN_DIGITS, ns)
    m, x = ns["model"](), load_digits("test")[:6]
    bpd, ebpd = [], []
    for s in (0, 3):
        r = log_likelihood(m, x[s:s + 3], dequantize="centered", num_bins=17,
                           generator=per_sample_generators(5 + s, 3), **opts)
        assert r.info["offset"] == 3.0
        bpd.append(r.bpd)
        ebpd.append(elbo_bpd(m, x[s:s + 3], num_timesteps=10, num_bins=17, generator=per_sample_generators(5 + s, 3)).bpd)
    assert abs(ode - float(torch.cat(bpd).mean())) < 1e-4
    assert abs(elbo - float(torch.cat(ebpd).mean())) < 1e-4


def test_cli_bad_options_give_one_line_errors(capsys):
    from sde_diffusion.cli import main

    assert main(["nll", "--n", "0"]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err
    assert main(["nll", "--trace", "sketchy"]) == 2
    assert "exact, hutchinson" in capsys.readouterr().err
    assert main(["nll", "--dequantize", "logistic"]) == 2
    assert "centered, uniform, none" in capsys.readouterr().err


# ---- the shared probability-flow engine (pf_ode.py): t and log-SNR forms ---------------------------
def _exact_estimator_target(gm, x, sde, t_end):
    """What log_likelihood computes when solved exactly: log p_{t_end}(x) - log p_1(z) + log N(z; 0, I)."""
    z = gm.flow_map(x, t_end, 1.0, sde)
    return gm.log_prob(x, sde, t_end) - gm.log_prob(z, sde, 1.0) - 0.5 * (gm.D * math.log(2 * math.pi) + (z**2).sum(1))


@pytest.mark.parametrize("variable,method", [("t", "dopri5"), ("lambda", "dopri5"), ("lambda", "scipy:RK45")])
def test_both_variables_converge_to_the_exact_estimator(variable, method):
    """On the continuous linear VP both forms reach the exact value to the solver tolerance
    (measured: t 1.9e-6, lambda 2.3e-7 nats/dim at rtol = atol = 1e-6, benchmarks/likelihood_nfe.py)."""
    gm = full_cov_gaussian()
    sde = VPSDE.linear()
    x = gm.sample(12, generator=gen(1))
    r = log_likelihood(gm.predictor(sde), x, trace="exact", dequantize=None, rtol=1e-6, atol=1e-6,
                       variable=variable, method=method)
    assert ((r.log_prob - _exact_estimator_target(gm, x, sde, 1e-5)).abs() / gm.D).max() < 2e-5
    assert r.info["variable"] == variable


def test_lambda_converges_on_a_discrete_chain():
    """On the 1000-step chain the lambda form converges (2.4e-7 nats/dim at rtol 1e-6, 140 NFE);
    the t form stalls at 3e-4..9e-4 for any tolerance (the kinks of beta(t)), at 152..6074 NFE."""
    gm = full_cov_gaussian()
    sde = VPSDE.from_betas(linear_betas(1000))
    x = gm.sample(12, generator=gen(1))
    target = _exact_estimator_target(gm, x, sde, 1e-5)
    r = log_likelihood(gm.predictor(sde), x, trace="exact", dequantize=None, rtol=1e-6, atol=1e-6)
    assert ((r.log_prob - target).abs() / gm.D).max() < 1e-5 and r.nfe < 300


def test_lambda_needs_alpha_positive_at_t_1():
    from sde_diffusion import rescale_zero_terminal_snr

    from sde_diffusion import NoisePredictor

    m = NoisePredictor(lambda x, t: torch.zeros_like(x), VPSDE.from_betas(rescale_zero_terminal_snr(linear_betas(1000))), "v")
    with pytest.raises(ValueError, match="alpha") as e:
        log_likelihood(m, torch.zeros(2, 2, dtype=F64), dequantize=None)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="lambda, t"):
        log_likelihood(full_cov_gaussian(D=2).predictor(VPSDE.linear()), torch.zeros(2, 2, dtype=F64),
                       dequantize=None, variable="sigma")
