import pytest
import torch
from hypothesis import given, strategies as st

from sde_diffusion import NoisePredictor, VPSDE, linear_betas, rescale_zero_terminal_snr
from sde_diffusion.model import NonFiniteOutput

F64 = torch.float64


def _models(sde, x0_true, eps_true):
    """Four nets, one per prediction type, all encoding the same (x0, eps) pair."""
    def coef(t):
        a, s = sde.alpha(t.to(F64)), sde.sigma(t.to(F64))
        return a.reshape(-1, 1), s.reshape(-1, 1)

    def eps_net(x, n):
        return eps_true.clone()

    def x0_net(x, n):
        return x0_true.clone()

    def v_net(x, n):
        a, s = coef(last_t[0])
        return a * eps_true - s * x0_true

    def score_net(x, n):
        a, s = coef(last_t[0])
        return -eps_true / s

    last_t = [None]
    return last_t, {"epsilon": eps_net, "x0": x0_net, "v": v_net, "score": score_net}


@given(st.floats(0.01, 0.99), st.sampled_from(["discrete", "linear", "cosine"]))
def test_prediction_conversions_round_trip(t, kind):
    sde = {"discrete": VPSDE.from_betas(linear_betas(1000)), "linear": VPSDE.linear(), "cosine": VPSDE.cosine()}[kind]
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, dtype=F64, generator=g), torch.randn(3, 4, dtype=F64, generator=g)
    x = sde.alpha(t) * x0 + sde.sigma(t) * eps  # consistent state
    last_t, nets = _models(sde, x0, eps)
    last_t[0] = torch.full((3,), t, dtype=F64)
    for pred, net in nets.items():
        m = NoisePredictor(net, sde, pred)
        assert torch.allclose(m.eps(x, t), eps, atol=1e-9), pred
        assert torch.allclose(m.x0(x, t), x0, atol=1e-9 / sde.alpha(t)), pred
        assert torch.allclose(m.score(x, t), -eps / sde.sigma(t), atol=1e-8 / sde.sigma(t)), pred
        assert torch.allclose(m.v(x, t), sde.alpha(t) * eps - sde.sigma(t) * x0, atol=1e-8), pred


def test_net_receives_diffusers_timesteps_and_nfe_counts():
    seen = []
    sde = VPSDE.from_betas(linear_betas(1000))
    m = NoisePredictor(lambda x, n: (seen.append(n), torch.zeros_like(x))[1], sde)
    x = torch.zeros(2, 3)
    m.eps(x, 1.0)
    m.eps(x, torch.tensor([0.5, 0.0015], dtype=F64))
    assert seen[0].dtype == torch.float32 and seen[0].tolist() == [999.0, 999.0]
    assert seen[1].tolist() == pytest.approx([499.0, 0.5])  # fractional between grid points
    assert m.nfe == 2 and m.reset_nfe() == 2 and m.nfe == 0
    # continuous SDE: the net receives t; time_input changes that (score_sde's 999 t)
    m2 = NoisePredictor(lambda x, n: (seen.append(n), torch.zeros_like(x))[1], VPSDE.linear(), time_input=lambda t: 999 * t)
    m2.eps(x, 0.5)
    assert seen[-1].tolist() == [499.5, 499.5]


def test_bad_net_output():
    sde = VPSDE.linear()
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        NoisePredictor(lambda x, n: torch.zeros(2, 3), sde).eps(torch.zeros(2, 4), 0.5)
    with pytest.raises(NonFiniteOutput, match="NaN"):
        NoisePredictor(lambda x, n: torch.full_like(x, float("nan")), sde).eps(torch.zeros(2, 4), 0.5)
    # opt-out
    out = NoisePredictor(lambda x, n: torch.full_like(x, float("inf")), sde, check_finite=False).raw(torch.zeros(1, 2), 0.5)
    assert torch.isinf(out).all()


@pytest.mark.parametrize("call, msg", [
    (lambda: NoisePredictor(lambda x, n: x, VPSDE.linear(), "noise"), "epsilon, v, x0, score"),
    (lambda: NoisePredictor(3, VPSDE.linear()), "callable"),
    (lambda: NoisePredictor(lambda x, n: x, "linear"), "VPSDE"),
    (lambda: NoisePredictor(lambda x, n: x, VPSDE.from_betas(rescale_zero_terminal_snr(linear_betas(100)))), "zero-terminal-SNR"),
    (lambda: NoisePredictor(lambda x, n: x, VPSDE.linear()).eps(torch.zeros(2, 1), torch.zeros(3)), r"shape \(2,\)"),
])
def test_invalid(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_zero_snr_with_v_prediction_is_allowed():
    sde = VPSDE.from_betas(rescale_zero_terminal_snr(linear_betas(100)))
    m = NoisePredictor(lambda x, n: torch.ones_like(x), sde, "v")
    x = torch.randn(2, 3, dtype=F64)
    # at alpha = 0 (t = 1): x0 = alpha x - sigma v = -v
    assert torch.allclose(m.x0(x, 1.0), -torch.ones_like(x))
