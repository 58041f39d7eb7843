"""Half-precision network evaluation: ``NoisePredictor(..., net_dtype=torch.bfloat16)`` runs the net in
bfloat16 (under autocast) while the solver state and the schedule stay float32/float64."""

import copy

import pytest
import torch

from sde_diffusion.model import NoisePredictor
from sde_diffusion.sampling import sample
from sde_diffusion.sde import VPSDE


def test_the_net_sees_net_dtype_and_the_solver_keeps_its_dtype():
    seen, states = [], []

    def net(x, t):
        seen.append(x.dtype)
        return 0.1 * x

    for dtype in (torch.float32, torch.float64):
        m = NoisePredictor(net, VPSDE.linear(), net_dtype=torch.bfloat16, sample_shape=(4,))
        x_T = torch.randn(3, 4, dtype=dtype, generator=torch.Generator().manual_seed(0))
        r = sample(m, x_T, solver="dpmpp_2m_sde", steps=4, seed=0, callback=lambda d: states.append(d["x"].dtype))
        assert r.samples.dtype == dtype and set(states) == {dtype}
        states.clear()
    assert set(seen) == {torch.bfloat16}


def test_net_dtype_must_be_a_floating_dtype():
    with pytest.raises(ValueError, match="net_dtype"):
        NoisePredictor(lambda x, t: x, VPSDE.linear(), net_dtype=torch.int8)


@pytest.mark.parametrize("convert_weights", [False, True], ids=["autocast-fp32-weights", "bf16-weights"])
def test_bfloat16_unet_on_cpu_is_close_to_float32_but_not_equal(convert_weights):
    """The shipped digits U-Net, 10 DPM-Solver++(2M) steps from the same x_T. bfloat16 keeps 8
    significand bits (relative rounding 2**-9 ~ 2e-3 per operation), so the samples (range ~[-1.2, 1.2])
    should differ from float32 by a few 1e-3 in RMS: clearly non-zero (the net did run in bfloat16),
    and far below the data scale."""
    from sde_diffusion import load_model

    m32 = load_model("digits")
    net = copy.deepcopy(m32.net).to(torch.bfloat16) if convert_weights else m32.net
    m16 = NoisePredictor(net, m32.sde, m32.prediction, net_dtype=torch.bfloat16, sample_shape=m32.sample_shape)
    a = sample(m32, shape=(16, 1, 8, 8), seed=0, solver="dpmpp_2m", steps=10).samples
    b = sample(m16, shape=(16, 1, 8, 8), seed=0, solver="dpmpp_2m", steps=10).samples
    assert b.dtype == torch.float32
    rms = float((a - b).pow(2).mean().sqrt())
    assert 1e-4 < rms < 2e-2, rms
    assert float((a - b).abs().max()) < 0.2


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        torch.nn.init.normal_(self.lin.weight, std=0.2, generator=torch.Generator().manual_seed(0))

    def forward(self, x, t):
        assert x.dtype == self.lin.weight.dtype, (x.dtype, self.lin.weight.dtype)
        return torch.tanh(self.lin(x)) + 0.001 * t[:, None].to(x.dtype)


def test_a_float64_solve_runs_a_float32_net_in_its_own_dtype():
    m = NoisePredictor(_Linear(), VPSDE.linear(), sample_shape=(4,))
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    a = sample(m, x, solver="dpmpp_2m", steps=6).samples
    b = sample(m, x.double(), solver="dpmpp_2m", steps=6).samples
    assert b.dtype == torch.float64
    assert 0 < float((a.double() - b).abs().max()) < 1e-4  # float32 net, float64 state: close, not identical


@pytest.mark.parametrize("x_T,match", [
    (torch.zeros(2, 4, dtype=torch.float16), "x_T is torch.float16: the solver state must be float32 or float64.*net_dtype"),
    (torch.zeros(2, 4, dtype=torch.bfloat16), "x_T is torch.bfloat16"),
    (torch.zeros(2, 4, device="meta"), "x_T is on meta but the model's weights are on cpu.*x_T.to\\('cpu'\\)"),
])
def test_half_or_misplaced_x_T_is_one_line_before_any_network_call(x_T, match):
    m = NoisePredictor(_Linear(), VPSDE.linear(), sample_shape=(4,))
    with pytest.raises(ValueError, match=match) as e:
        sample(m, x_T, steps=3)
    assert "\n" not in str(e.value) and m.nfe == 0
