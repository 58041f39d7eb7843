"""UNet: shapes across resolutions/channels, timestep handling, config round trip, errors."""

import json

import pytest
import torch

from sde_diffusion.nets.unet import AttentionBlock, UNet, timestep_embedding




def _randomize(net, seed=0):
    """Zero-initialised output layers make a fresh UNet return exactly 0; perturb every weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net


def tiny(**kw):
    cfg = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,), image_size=8,
               dropout=0.0, head_channels=8)
    cfg.update(kw)
    return UNet(**cfg)


@pytest.mark.parametrize("res", [8, 16, 32])
@pytest.mark.parametrize("ch", [1, 3])
def test_output_shape(res, ch):
    net = tiny(in_channels=ch, image_size=res, attention_resolutions=(res // 2,))
    x = torch.randn(3, ch, res, res)
    y = net(x, torch.tensor([0.0, 17.5, 999.0]))
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_64px_and_other_out_channels():
    net = tiny(in_channels=3, out_channels=6, channel_mults=(1, 2, 2, 2), image_size=64, attention_resolutions=(16,))
    y = net(torch.randn(2, 3, 64, 64), torch.tensor([3.0, 500.0]))
    assert y.shape == (2, 6, 64, 64)


def test_fresh_net_outputs_zero_then_learnable():
    net = tiny()
    x = torch.randn(2, 1, 8, 8)
    assert torch.count_nonzero(net(x, torch.tensor([1.0, 2.0]))) == 0  # zero-init output conv (ADM)


def test_timesteps_matter_and_fractional_timesteps_are_used():
    net = _randomize(tiny()).eval()
    x = torch.randn(1, 1, 8, 8)
    a, b, c = (net(x, torch.tensor([t])) for t in (10.0, 10.5, 11.0))
    assert not torch.allclose(a, b) and not torch.allclose(b, c)
    # scalar timestep broadcasts to the batch
    x2 = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(net(x2, 7.25), net(x2, torch.full((4,), 7.25)))


def test_timestep_embedding_values():
    e = timestep_embedding(torch.tensor([0.0, 1.0]), 6)
    assert e.shape == (2, 6)
    # at t = 0: cos = 1, sin = 0; at t = 1 the first frequency is 1 rad
    torch.testing.assert_close(e[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))
    assert abs(float(e[1, 0]) - 0.5403023) < 1e-6 and abs(float(e[1, 3]) - 0.8414710) < 1e-6


def test_batch_independence():
    net = _randomize(tiny()).eval()
    x = torch.randn(5, 1, 8, 8)
    t = torch.tensor([1.0, 50.0, 300.0, 700.0, 999.0])
    full = net(x, t)
    for k in range(5):
        torch.testing.assert_close(net(x[k:k + 1], t[k:k + 1]), full[k:k + 1], atol=1e-5, rtol=1e-5)


def test_dropout_only_in_train_mode():
    net = _randomize(tiny(dropout=0.5))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5.0, 6.0])
    net.train()
    assert not torch.equal(net(x, t), net(x, t))
    net.eval()
    assert torch.equal(net(x, t), net(x, t))


def test_config_round_trip():
    net = _randomize(tiny(in_channels=3, channel_mults=(1, 2, 2), attention_resolutions=(4, 2), num_res_blocks=2))
    cfg = json.loads(json.dumps(net.config))  # JSON-serialisable
    twin = UNet(**cfg)
    twin.load_state_dict(net.state_dict())
    net.eval(), twin.eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(net(x, torch.tensor([3.0, 4.0])), twin(x, torch.tensor([3.0, 4.0])))
    assert twin.config == net.config


def test_attention_placement():
    def n_attn(net):
        return sum(isinstance(m, AttentionBlock) for m in net.modules())

    assert n_attn(tiny(attention_resolutions=())) == 1  # middle block only
    # 4x4 level: 1 block down + 2 blocks up, plus the middle block
    assert n_attn(tiny(attention_resolutions=(4,))) == 4
    assert n_attn(tiny(attention_resolutions=(8, 4))) == 7


@pytest.mark.parametrize("kw", [dict(base_channels=0), dict(channel_mults=()), dict(dropout=1.0),
                                dict(num_res_blocks=0), dict(in_channels=2.5)])
def test_bad_config(kw):
    with pytest.raises(ValueError):
        tiny(**kw)


def test_bad_inputs():
    net = tiny()
    with pytest.raises(ValueError, match="expects input"):
        net(torch.randn(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(2, 1, 9, 9), torch.zeros(2))
    with pytest.raises(ValueError, match="timesteps"):
        net(torch.randn(2, 1, 8, 8), torch.zeros(3))
