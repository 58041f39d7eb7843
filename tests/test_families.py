"""Gaussian path families (sde_diffusion/paths.py) over the solver registry.

Exact answers are written here in each family's own terms, independently of the VP mapping: for Gaussian
data N(mu, C) and x = a x0 + s eps the posterior mean is x0_hat = mu + a C (a^2 C + s^2 I)^{-1} (x - a mu),
eps_hat = (x - a x0_hat)/s, and the probability-flow map is
    x_2 = a_2 mu + (a_2^2 C + s_2^2 I)^{1/2} (a_1^2 C + s_1^2 I)^{-1/2} (x_1 - a_1 mu).
Every deterministic solver must converge to it on a flow-matching (velocity), an EDM (denoiser) and a VE
(score) model; NFE and batch invariance hold per family; peers: diffusers' FlowMatchEulerDiscreteScheduler
(shift 1 and 3), EDMEulerScheduler and EDMDPMSolverMultistepScheduler on a small random net.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

import diffusers  # a dev dependency: the peer tests fail without it
from sde_diffusion.interop.families import (edm_predictor, edm_ts, flow_match_predictor, flow_match_ts,
                                            score_sde_ve_predictor, score_sde_ve_ts)
from sde_diffusion.paths import (GaussianPath, PathPredictor, edm_path, flow_path, karras_sigmas, subvp_path,
                                 ts_from_sigmas, ve_path, vp_path)
from sde_diffusion.sampling import sample
from sde_diffusion.sde import VPSDE
from sde_diffusion.solvers import SPECS

F64 = torch.float64
D = 3
MU = torch.tensor([0.4, -0.8, 1.1], dtype=F64)
_A = torch.tensor([[0.6, 0.1, 0.0], [0.2, 0.5, -0.1], [0.0, 0.3, 0.4]], dtype=F64)
COV = _A @ _A.T + 0.05 * torch.eye(D, dtype=F64)
EV, U = torch.linalg.eigh(COV)
B0, B1 = 0.1, 20.0


# ---- each family's a(t), s(t) and derivatives from the net's own time input, written out here ----------

def _coeffs(family, tin):
    tin = torch.as_tensor(tin, dtype=F64).reshape(-1, 1)
    if family == "flow":
        return 1 - tin, tin, -torch.ones_like(tin), torch.ones_like(tin)
    if family in ("edm", "ve"):  # the net receives sigma
        return torch.ones_like(tin), tin, None, None
    if family == "sub-vp":  # the net receives t
        a = torch.exp(-0.25 * tin**2 * (B1 - B0) - 0.5 * tin * B0)
        return a, 1 - a**2, None, None
    raise AssertionError(family)


def _x0_hat(x, a, s):
    lam = a[:, :, None] ** 2 * EV + s[:, :, None] ** 2  # (B, 1, D) eigenvalues of a^2 C + s^2 I
    d = (x - a * MU) @ U
    return MU + ((a * d * EV / lam[:, 0]) @ U.T)


def exact_net(family, prediction):
    def net(x, tin, **_):
        x = x.to(F64)
        a, s, da, ds = _coeffs(family, tin)
        x0 = _x0_hat(x, a, s)
        eps = (x - a * x0) / s
        return {"x0": x0, "epsilon": eps, "score": -eps / s, "velocity": None if da is None else da * x0 + ds * eps}[prediction]
    return net


def exact_flow(x1, a1, s1, a2, s2):
    r = torch.sqrt((a2**2 * EV + s2**2) / (a1**2 * EV + s1**2))
    return a2 * MU + (((x1 - a1 * MU) @ U) * r) @ U.T


FAMILIES = {  # name -> (predictor, grid(K) ending at t_end > 0)
    "flow": (lambda: PathPredictor(exact_net("flow", "velocity"), flow_path(), "velocity", net_time_dtype=F64),
             lambda K: torch.linspace(1.0, 0.02, K + 1, dtype=F64)),
    "edm": (lambda: PathPredictor(exact_net("edm", "x0"), edm_path(80.0), "x0", net_time_dtype=F64),
            lambda K: ts_from_sigmas(edm_path(80.0).sde(), karras_sigmas(K + 1, 0.02, 80.0)[:-1])),
    "ve": (lambda: PathPredictor(exact_net("ve", "score"), ve_path(50.0), "score", net_time_dtype=F64),
           lambda K: ts_from_sigmas(ve_path(50.0).sde(), torch.exp(torch.linspace(math.log(50.0), math.log(0.02), K + 1, dtype=F64)))),
    "sub-vp": (lambda: PathPredictor(exact_net("sub-vp", "epsilon"), subvp_path(B0, B1), "epsilon", net_time_dtype=F64),
               lambda K: torch.linspace(1.0, 0.05, K + 1, dtype=F64)),
}


def _exact_end(model, x_T_path, ts):
    p = model.path
    t0, t1 = float(ts[0]), float(ts[-1])
    return exact_flow(x_T_path, float(p.a(t0)), float(p.s(t0)), float(p.a(t1)), float(p.s(t1)))


DETERMINISTIC = sorted(n for n, s in SPECS.items() if not s.stochastic and not s.adaptive)
SDE_LIMITS = sorted(n for n, s in SPECS.items() if s.stochastic and not s.adaptive and s.order is not None)


def _opts(name):
    spec = SPECS[name]
    return dict(spec.order_options) if spec.stochastic else {}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("name", DETERMINISTIC + SDE_LIMITS)
def test_every_solver_converges_on_every_family(family, name):
    make, grid = FAMILIES[family]
    model = make()
    x_T = torch.randn(6, D, dtype=F64, generator=torch.Generator().manual_seed(0))
    errs = []
    for K in (16, 32):
        ts = grid(K)
        exact = _exact_end(model, model.to_path_state(x_T, ts[0]), ts)
        out = model.to_path_state(sample(model, x_T, solver=name, ts=ts, seed=0, **_opts(name)).samples, ts[-1])
        errs.append(float((out - exact).abs().max() / max(1.0, float(exact.abs().max()))))
    assert errs[1] < 0.8 * errs[0] and errs[1] < 0.1, (family, name, errs)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("name", ["ode", "scipy"])
def test_adaptive_solvers_on_every_family(family, name):
    make, grid = FAMILIES[family]
    model = make()
    x_T = torch.randn(4, D, dtype=F64, generator=torch.Generator().manual_seed(1))
    ts = grid(4)
    ts = torch.tensor([min(float(ts[0]), 0.999), float(ts[-1])], dtype=F64)  # (the flow starts at alpha = 0)
    exact = _exact_end(model, model.to_path_state(x_T, ts[0]), ts)
    out = model.to_path_state(sample(model, x_T, solver=name, ts=ts, rtol=1e-6, atol=1e-6).samples, ts[-1])
    assert float((out - exact).abs().max() / max(1.0, float(exact.abs().max()))) < 1e-3


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("name", sorted(n for n, s in SPECS.items() if not s.adaptive))
def test_nfe_and_batch_invariance_per_family(family, name):
    make, _ = FAMILIES[family]
    calls = []
    model = make()
    inner = model.net.net
    model.net.net = lambda x, t, **c: (calls.append(1), inner(x, t, **c))[1]
    # start below t = 1: on the flow path alpha(1) = 0, where several solvers take a cheaper first-order step
    ts = torch.linspace(0.98, 0.0, 5, dtype=F64)
    r = sample(model, shape=(3, D), seed=11, solver=name, ts=ts)
    assert r.nfe == len(calls) == SPECS[name].expected_nfe(4, True, r.info)
    alone = sample(model, shape=(1, D), seed=12, solver=name, ts=ts)
    torch.testing.assert_close(r.samples[1:2], alone.samples, rtol=1e-9, atol=1e-9)


# ---- the mapping itself ---------------------------------------------------------------------------

def _custom():
    return GaussianPath("custom", lambda t: torch.cos(math.pi * t / 2), lambda t: torch.sin(math.pi * t / 2))


@pytest.mark.parametrize("make", [flow_path, lambda: edm_path(80.0), lambda: ve_path(1348.0), lambda: subvp_path(B0, B1), _custom],
                         ids=["flow", "edm", "ve", "sub-vp", "custom"])
def test_path_sde_is_the_vp_description(make):
    path = make()
    sde = path.sde()
    t = torch.linspace(0.01, 0.99, 99, dtype=F64)
    a, s = path.a(t), path.s(t)
    c = torch.sqrt(a**2 + s**2)
    assert torch.allclose(torch.as_tensor(sde.alpha(t)), a / c, rtol=1e-12, atol=1e-15)
    assert torch.allclose(torch.as_tensor(sde.sigma(t)), s / c, rtol=1e-12, atol=1e-15)
    assert torch.allclose(torch.as_tensor(sde.log_snr(t)), torch.log(a / s), rtol=1e-12, atol=1e-12)
    back = torch.as_tensor(sde.t_from_log_snr(torch.log(a / s)))
    assert (back - t).abs().max() < 1e-10
    # beta = -2 d log alpha / dt, against a central difference of log(a/c)
    h = 1e-6
    la = lambda u: torch.log(path.a(u) / torch.sqrt(path.a(u) ** 2 + path.s(u) ** 2))  # noqa: E731
    num = -2 * (la(t + h) - la(t - h)) / (2 * h)
    assert torch.allclose(torch.as_tensor(sde.beta(t)), num, rtol=1e-5, atol=1e-6)
    assert sde.alpha(0.0) == 1.0 and sde.log_snr(0.0) == math.inf


def test_flow_matching_velocity_conversion_by_hand():
    """flow: v = eps - x0; x0 = x - t v and eps = x + (1 - t) v; the VP state is x / sqrt((1-t)^2 + t^2)."""
    seen = {}

    def net(x, t):
        seen["x"], seen["t"] = x.clone(), t.clone()
        return torch.full_like(x, 0.25)

    m = PathPredictor(net, flow_path(), "velocity", net_time_dtype=F64)
    x_vp = torch.tensor([[1.0, -2.0]], dtype=F64)
    eps, x0 = m.predict(x_vp, 0.3)
    c = math.sqrt(0.7**2 + 0.3**2)
    assert torch.allclose(seen["x"], x_vp * c) and float(seen["t"]) == pytest.approx(0.3, abs=1e-15)
    assert torch.allclose(x0, x_vp * c - 0.3 * 0.25, atol=1e-14)
    assert torch.allclose(eps, x_vp * c + 0.7 * 0.25, atol=1e-14)


# ---- peers ----------------------------------------------------------------------------------------

class TinyNet(torch.nn.Module):
    def __init__(self, dim=6, seed=0, tscale=1000.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(dim + 8, 16, generator=g) * 0.4)
        self.w2 = torch.nn.Parameter(torch.randn(16, dim, generator=g) * 0.4)
        self.tscale = tscale

    def forward(self, x, timesteps):
        t = torch.as_tensor(timesteps, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        freqs = torch.exp(-torch.arange(4, dtype=x.dtype) * math.log(self.tscale) / 4)
        e = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], dim=1)
        return 0.3 * x + torch.tanh(torch.cat([x, e], dim=1) @ self.w1) @ self.w2


def _rel(a, b):
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [8, 28])
def test_flow_match_euler_equals_diffusers(shift, steps):
    net = TinyNet()
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(steps)
    x_T = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    x = x_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(net(x, t.expand(3)), t, x).prev_sample
    ts = flow_match_ts(sched, steps)
    assert (ts - sched.sigmas.double()).abs().max() < 1e-6  # our float64 grid is diffusers' float32 grid
    model = flow_match_predictor(net, sched)
    ours = sample(model, x_T, solver="euler", ts=sched.sigmas.double()).samples
    assert _rel(ours, x) < 1e-5
    assert _rel(sample(model, x_T, solver="euler", ts=ts).samples, x) < 1e-4


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [10, 25])
def test_edm_euler_equals_diffusers(prediction_type, steps):
    net = TinyNet(tscale=10.0)
    sched = diffusers.EDMEulerScheduler(prediction_type=prediction_type)
    sched.set_timesteps(steps)
    model = edm_predictor(net, sched)
    ts = edm_ts(sched, steps, model.sde)
    y_T = torch.randn(3, 6, generator=torch.Generator().manual_seed(1)) * 80.0
    y = y_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            y = sched.step(net(sched.scale_model_input(y, t), t.expand(3)), t, y).prev_sample
    ours = sample(model, model.from_path_state(y_T, ts[0]), solver="euler", ts=ts).samples
    assert _rel(ours, y) < 1e-5


@pytest.mark.parametrize("steps", [8, 20])
def test_edm_dpmpp_2m_equals_diffusers(steps):
    net = TinyNet(tscale=10.0)
    sched = diffusers.EDMDPMSolverMultistepScheduler()
    sched.set_timesteps(steps)
    model = edm_predictor(net, sched)
    ts = edm_ts(sched, steps, model.sde)
    y_T = torch.randn(3, 6, generator=torch.Generator().manual_seed(2)) * 80.0
    y = y_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            y = sched.step(net(sched.scale_model_input(y, t), t.expand(3)), t, y).prev_sample
    ours = sample(model, model.from_path_state(y_T, ts[0]), solver="dpmpp_2m", ts=ts).samples
    assert _rel(ours, y) < 1e-5


def test_score_sde_ve_loader():
    """score_sde's VE convention: net(x, sigma) = score; with the exact Gaussian score every solver is exact."""
    sched = diffusers.ScoreSdeVeScheduler(sigma_max=50.0, sigma_min=0.01)
    model = score_sde_ve_predictor(exact_net("ve", "score"), sched, net_time_dtype=F64)
    x_T = torch.randn(4, D, dtype=F64, generator=torch.Generator().manual_seed(3))
    errs = []
    for K in (40, 80):
        ts = score_sde_ve_ts(sched, K)[:-1]
        out = sample(model, x_T, solver="heun", ts=ts).samples
        errs.append(_rel(model.to_path_state(out, ts[-1]), _exact_end(model, model.to_path_state(x_T, ts[0]), ts)))
    assert errs[0] < 5e-3 and 3.5 < errs[0] / errs[1] < 4.5, errs  # Heun: second order


# ---- bad input: one-line errors -------------------------------------------------------------------

BAD_PATHS = [
    ("a(t) and s(t) must be finite and > 0", lambda: GaussianPath("neg", lambda t: 1 - 2 * t, lambda t: t)),
    ("must decrease strictly", lambda: GaussianPath("bump", lambda t: torch.ones_like(t), lambda t: 0.1 + torch.sin(6 * t) ** 2)),
    ("sigma_max must be", lambda: ve_path(-1.0)),
    ("beta_min", lambda: subvp_path(5.0, 1.0)),
]


@pytest.mark.parametrize("match,make", BAD_PATHS, ids=[m for m, _ in BAD_PATHS])
def test_bad_paths(match, make):
    with pytest.raises(ValueError, match=re.escape(match)) as e:
        make()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("path,prediction", [(ve_path(10.0), "velocity"), (flow_path(), "v"), (edm_path(), "v"),
                                             (subvp_path(), "velocity"), (vp_path(VPSDE.linear()), "velocity")])
def test_prediction_the_family_cannot_have(path, prediction):
    with pytest.raises(ValueError, match=f"not a prediction type of the {path.name} family; valid: ") as e:
        PathPredictor(lambda x, t: x, path, prediction)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("sigmas,match", [([80.0, 10.0, 10.0, 0.0], "decrease strictly"), ([1.0, 5.0, 0.0], "decrease strictly"),
                                          ([2.0, -1.0], "finite and >= 0"), ([float("nan"), 0.0], "finite"),
                                          ([100.0, 1.0, 0.0], "exceeds the largest noise level"), ([1.0], "at least 2")])
def test_bad_sigma_grids(sigmas, match):
    with pytest.raises(ValueError, match=match) as e:
        ts_from_sigmas(edm_path(80.0).sde(), sigmas)
    assert "\n" not in str(e.value)


def test_vp_family_is_the_vpsde():
    """On the vp family PathPredictor is the plain VP model: same samples as NoisePredictor."""
    from sde_diffusion.analytic import GaussianMixture

    sde = VPSDE.linear()
    g = GaussianMixture(MU[None], COV[None])
    net = lambda x, t: g.eps(x, t, sde)  # noqa: E731
    x_T = torch.randn(3, D, dtype=F64, generator=torch.Generator().manual_seed(0))
    a = sample(PathPredictor(net, vp_path(sde), "epsilon", net_time_dtype=F64), x_T, solver="dpmpp_2m", steps=10)
    b = sample(g.predictor(sde), x_T, solver="dpmpp_2m", steps=10)
    assert (a.samples - b.samples).abs().max() < 1e-10


# ---- diffusers folders of non-VP families load as PathPredictors --------------------------------

def _tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                                 norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval()


@pytest.mark.parametrize("sched,family,manual", [
    (lambda: diffusers.ScoreSdeVeScheduler(sigma_max=50.0), "ve", score_sde_ve_predictor),
    (lambda: diffusers.EDMEulerScheduler(), "edm", edm_predictor),
    (lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), "flow", flow_match_predictor),
], ids=["ve", "edm", "flow"])
def test_load_model_of_a_family_folder(tmp_path, sched, family, manual):
    from sde_diffusion import load_model

    unet, sc = _tiny_unet(), sched()
    diffusers.DDPMPipeline(unet=unet, scheduler=sc).save_pretrained(tmp_path)
    model = load_model(str(tmp_path))
    assert isinstance(model, PathPredictor) and model.path.name == family and model.sample_shape == (3, 8, 8)
    ref = manual(unet, sc)
    ts = torch.linspace(0.95, 0.0, 6, dtype=F64)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = sample(model, x_T, solver="heun", ts=ts).samples
        b = sample(ref, x_T, solver="heun", ts=ts).samples
    assert torch.equal(a, b) and torch.isfinite(a).all()


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("name", sorted(n for n, s in SPECS.items() if not s.adaptive))
def test_solvers_never_see_the_family(family, name):
    """The family's own exact net behind PathPredictor and the exact VP noise prediction of the same data on
    the family's PathSDE (analytic.GaussianMixture) are the same model: every solver gives the same samples."""
    from sde_diffusion.analytic import GaussianMixture

    make, grid = FAMILIES[family]
    model = make()
    vp = GaussianMixture(MU[None], COV[None]).predictor(model.sde)
    ts = torch.cat([grid(6), torch.zeros(1, dtype=F64)])
    ts[0] = min(float(ts[0]), 0.98)  # the VP eps-model cannot start at alpha = 0 (the flow path's t = 1)
    x_T = torch.randn(4, D, dtype=F64, generator=torch.Generator().manual_seed(5))
    a = sample(model, x_T, solver=name, ts=ts, seed=3, **_opts(name)).samples
    b = sample(vp, x_T, solver=name, ts=ts, seed=3, **_opts(name)).samples
    assert float((a - b).abs().max()) < 1e-9 * max(1.0, float(b.abs().max()))


def test_score_sde_ve_callable_through_module_attr(tmp_path):
    """A score_sde-style VE net behind ``file.py:attr``: the attribute is a factory returning a PathPredictor."""
    from sde_diffusion.resolve import resolve_model

    (tmp_path / "ve_model.py").write_text(
        "import torch\n"
        "from sde_diffusion.paths import PathPredictor, ve_path\n"
        "def score(x, sigma):  # data N(0.5, 0.3^2): grad log N(x; 0.5, 0.09 + sigma^2)\n"
        "    s = sigma.reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)\n"
        "    return -(x - 0.5) / (0.09 + s * s)\n"
        "def make():\n"
        "    return PathPredictor(score, ve_path(sigma_max=50.0), 'score', net_time_dtype=torch.float64, sample_shape=(1,))\n")
    model = resolve_model(f"{tmp_path / 've_model.py'}:make")  # (what the CLI's --model does)
    assert isinstance(model, PathPredictor) and model.path.name == "ve"
    ts = ts_from_sigmas(model.sde, karras_sigmas(40, 0.002, 50.0))
    x_T = torch.randn(3, 1, dtype=F64, generator=torch.Generator().manual_seed(0))
    out = sample(model, x_T, solver="heun", ts=ts).samples
    exact = 0.5 + 0.3 * (model.to_path_state(x_T, ts[0]) - 0.5) / math.sqrt(0.09 + 50.0**2)  # exact flow map to t = 0
    assert float((out - exact).abs().max()) < 0.01  # Heun, 40 sigmas (measured 0.0062)
    out4 = sample(model, x_T, solver="heun", ts=ts_from_sigmas(model.sde, karras_sigmas(160, 0.002, 50.0))).samples
    assert float((out4 - exact).abs().max()) < float((out - exact).abs().max()) / 8  # second order


def test_sample_takes_sigmas():
    """``sample(..., sigmas=...)`` is ``ts=ts_from_sigmas(model.sde, sigmas)``; grid errors stay one line."""
    model = FAMILIES["edm"][0]()
    sg = karras_sigmas(10, 0.002, 80.0)
    x_T = torch.randn(2, D, dtype=F64, generator=torch.Generator().manual_seed(0))
    a = sample(model, x_T, solver="heun", sigmas=sg)
    b = sample(model, x_T, solver="heun", ts=ts_from_sigmas(model.sde, sg))
    assert torch.equal(a.samples, b.samples) and torch.equal(a.ts, b.ts) and a.nfe == 19
    with pytest.raises(ValueError, match="exactly one of"):
        sample(model, x_T, solver="heun", sigmas=sg, steps=10)
    with pytest.raises(ValueError, match="decrease strictly"):
        sample(model, x_T, solver="heun", sigmas=[1.0, 2.0, 0.0])


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_flow_model_samples_with_every_default_spacing(name):
    """``sample(flow_model, steps=K)`` with the solver's default spacing: log-SNR/Karras grids need a
    finite log-SNR at t = 1, so a zero-terminal-SNR path gets the grid uniform in t (diffusers'
    FlowMatchEuler grid, shift 1) - and the solve converges to the exact flow map from t = 1 to 0."""
    model = FAMILIES["flow"][0]()
    x_T = torch.randn(4, D, dtype=F64, generator=torch.Generator().manual_seed(3))
    errs = []
    for K in (16, 32):
        r = sample(model, x_T, solver=name, steps=K)
        torch.testing.assert_close(r.ts, torch.linspace(1.0, 0.0, K + 1, dtype=F64))
        exact = _exact_end(model, model.to_path_state(x_T, r.ts[0]), r.ts)
        errs.append(float((r.samples - exact).abs().max() / max(1.0, float(exact.abs().max()))))
    assert errs[1] < errs[0] and errs[1] < 0.1, (name, errs)
    with pytest.raises(ValueError, match="finite log-SNR"):  # an explicit spacing is never replaced
        sample(model, x_T, solver=name, steps=4, spacing="logsnr")


def test_ancestral_starts_at_zero_snr_and_samples_the_data_law():
    # the flow path has alpha(1) = 0: DDPM's posterior step from there is x_t ~ N(alpha_t x0_hat, sigma_t^2)
    model = FAMILIES["flow"][0]()
    n = 4000
    x_T = torch.randn(n, D, dtype=F64, generator=torch.Generator().manual_seed(5))
    out = sample(model, x_T, solver="ancestral", ts=torch.linspace(1.0, 0.0, 201, dtype=F64), seed=11).samples
    se = torch.sqrt(torch.diagonal(COV) / n)
    assert ((out.mean(0) - MU).abs() < 4 * se + 0.01).all(), (out.mean(0), MU)
    cov = torch.cov(out.T)
    assert (cov - COV).abs().max() < 0.04, (cov, COV)  # entries' sampling sd at n = 4000 is <= 0.008


@pytest.mark.parametrize("name", ["euler_maruyama", "pc"])
def test_reverse_sde_solvers_refuse_a_zero_snr_start_in_one_line(name):
    model = FAMILIES["flow"][0]()
    with pytest.raises(ValueError, match="infinite where alpha\\(t\\) = 0.*start the grid below") as e:
        sample(model, torch.zeros(2, D, dtype=F64), solver=name, steps=4, seed=0)
    assert "\n" not in str(e.value) and model.nfe == 0
