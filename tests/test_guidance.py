"""Conditioning and classifier-free guidance, checked against exact answers.

The exact guided model: a Gaussian mixture whose components are the classes. The conditional eps
for class k is component k's closed-form eps, the unconditional eps is the whole mixture's; so the
guided eps has a closed form at every w, and guided sampling at w = 1 is exact conditional sampling
(for one Gaussian the probability-flow map is closed form too)."""

import math

import pytest
import torch

from sde_diffusion.analytic import GaussianMixture
from sde_diffusion.model import NoisePredictor
from sde_diffusion.sampling import sample
from sde_diffusion.schedules import linear_betas
from sde_diffusion.sde import VPSDE
from sde_diffusion.solvers import ADAPTIVE, SOLVERS, STOCHASTIC

SDE = VPSDE.from_betas(linear_betas(1000))
MEANS = [[1.5, -1.0, 0.5], [-1.0, 1.2, 0.0], [0.2, 0.3, -1.4]]
STDS = [0.3, 0.5, 0.4]
MIX = GaussianMixture(MEANS, STDS)
CLASSES = [GaussianMixture([m], [s]) for m, s in zip(MEANS, STDS)]
K = len(MEANS)
LABELS = {"class_labels": {"num_classes": K, "null_class": K}}


def exact_eps(x, t, y):
    """Per row: class y's eps, or the mixture's for the null class K."""
    out = torch.empty_like(x, dtype=torch.float64)
    for k in range(K + 1):
        rows = (y == k).nonzero().squeeze(1)
        if rows.numel():
            src = MIX if k == K else CLASSES[k]
            tt = t[rows] if torch.as_tensor(t).ndim else t
            out[rows] = src.eps(x[rows], tt, SDE)
    return out


class ClassNet:
    """eps(x, t, class_labels) of the class mixture; records the batch sizes it is called with."""

    def __init__(self, prediction="epsilon"):
        self.prediction, self.calls = prediction, []

    def __call__(self, x, t, class_labels=None):
        self.calls.append(x.shape[0])
        y = torch.full((x.shape[0],), K) if class_labels is None else class_labels
        eps = exact_eps(x, t, y)
        a = SDE.alpha(t).reshape(-1, 1)
        s = SDE.sigma(t).reshape(-1, 1)
        x0 = (x - s * eps) / a
        out = {"epsilon": eps, "x0": x0, "v": a * eps - s * x0, "score": -eps / s}[self.prediction]
        return out.to(x.dtype)


def model(prediction="epsilon", conditioning=LABELS):
    return NoisePredictor(ClassNet(prediction), SDE, prediction, time_input=lambda t: t,
                          timestep_dtype=torch.float64, sample_shape=(3,), conditioning=conditioning)


def xs(n=6, seed=0):
    return torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0])
@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v", "score"])
@pytest.mark.parametrize("t", [0.05, 0.4, 0.9])
def test_guided_eps_equals_closed_form(w, prediction, t):
    x, y = xs(), torch.tensor([0, 1, 2, 0, 1, 2])
    m = model(prediction)
    with m.conditioned({"class_labels": y}, guidance=w):
        got = m.eps(x, t)
    e_c, e_u = exact_eps(x, t, y), exact_eps(x, t, torch.full_like(y, K))
    torch.testing.assert_close(got, e_u + w * (e_c - e_u), rtol=1e-9, atol=1e-10)
    # one doubled batch per evaluation, unless guidance is off (w = 1)
    assert m.net.calls == ([6] if w == 1.0 else [12])


def test_guidance_rescale_matches_lin_et_al():
    x, y, t, w, phi = xs(), torch.tensor([0, 1, 2, 0, 1, 2]), 0.3, 4.0, 0.7
    m = model()
    with m.conditioned({"class_labels": y}, guidance=w, guidance_rescale=phi):
        got = m.raw(x, t)
    e_c, e_u = exact_eps(x, t, y), exact_eps(x, t, torch.full_like(y, K))
    cfg = e_u + w * (e_c - e_u)
    # Lin et al. 2024, eq. 15-16, per sample (std over the non-batch dimension)
    resc = cfg * (e_c.std(dim=1, keepdim=True) / cfg.std(dim=1, keepdim=True))
    torch.testing.assert_close(got, phi * resc + (1 - phi) * cfg, rtol=1e-9, atol=1e-10)


def test_guidance_interval_plain_conditional_outside():
    x, y, w = xs(), torch.tensor([0, 1, 2, 0, 1, 2]), 3.0
    m = model()
    e_c = exact_eps(x, 0.8, y)
    with m.conditioned({"class_labels": y}, guidance=w, guidance_interval=(0.2, 0.5)):
        outside = m.eps(x, 0.8)
        inside = m.eps(x, 0.3)
    torch.testing.assert_close(outside, e_c, rtol=1e-12, atol=1e-12)
    e_c3, e_u3 = exact_eps(x, 0.3, y), exact_eps(x, 0.3, torch.full_like(y, K))
    torch.testing.assert_close(inside, e_u3 + w * (e_c3 - e_u3), rtol=1e-9, atol=1e-10)
    assert m.net.calls == [6, 12]  # outside the interval only the conditional half is evaluated


def test_w1_is_exact_conditional_sampling():
    """Guided PF sampling at w = 1 follows class k's own probability flow: the closed-form map."""
    x_T, y = xs(6, seed=3), torch.tensor([0, 1, 2, 2, 1, 0])
    r = sample(model(), x_T, solver="dpmpp_3m", steps=60, cond={"class_labels": y}, guidance=1.0)
    exact = torch.cat([CLASSES[int(k)].flow_map(x_T[i:i + 1], 1.0, 0.0, SDE) for i, k in enumerate(y)])
    torch.testing.assert_close(r.samples, exact, rtol=0, atol=2e-3)
    assert r.info["network_rows"] == 6 * r.nfe


def test_conditioning_unused_outside_block():
    m = model()
    x = xs()
    with m.conditioned({"class_labels": torch.zeros(6, dtype=torch.long)}, guidance=2.0):
        pass
    torch.testing.assert_close(m.eps(x, 0.5), exact_eps(x, 0.5, torch.full((6,), K)))


FIXED = sorted(n for n in SOLVERS if n not in ADAPTIVE)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_solver_guided_nfe_rows_and_batch_invariance(name):
    """Same NFE as the unguided solve, two network rows per sample per evaluation, and each sample
    of a guided batch equals that sample solved alone (its own seed and label)."""
    grid = {} if name in ADAPTIVE else {"steps": 4}
    opts = {"per_sample": True} if name in ADAPTIVE else {}
    y = torch.tensor([2, 0, 1])
    x_T = xs(3, seed=1)
    m = model()
    plain = sample(m, x_T, solver=name, seed=7, **grid, **opts)
    r = sample(m, x_T, solver=name, seed=7, cond={"class_labels": y}, guidance=2.5, **grid, **opts)
    assert r.nfe == plain.nfe if name not in ADAPTIVE else r.nfe > 0
    assert r.info["network_rows"] == 2 * 3 * r.nfe or name in ADAPTIVE
    if name not in ADAPTIVE:
        for k in range(3):
            one = sample(model(), x_T[k:k + 1], solver=name, seed=7 + k, cond={"class_labels": y[k:k + 1]},
                         guidance=2.5, **grid, **opts)
            torch.testing.assert_close(one.samples[0], r.samples[k], rtol=1e-10, atol=1e-12)
    # guidance changes the result, and it is the guided flow that was solved
    assert not torch.allclose(plain.samples, r.samples)


def test_guidance_raises_class_posterior():
    """Guidance sharpens p(x|k)^w p(x)^(1-w): the exact posterior p(k | x) of the asked class,
    averaged over samples, rises from w = 1 to w = 4 (Ho & Salimans 2022, Sec. 3.2)."""
    n = 60
    y = torch.arange(n) % K
    x_T = xs(n, seed=11)

    def log_posterior(w):
        x = sample(model(), x_T, solver="dpmpp_2m", steps=20, cond={"class_labels": y}, guidance=w).samples
        logp = torch.stack([c.log_prob(x) for c in CLASSES], dim=1) - math.log(K)
        return (logp.log_softmax(dim=1)[torch.arange(n), y]).mean()

    lp0, lp1, lp4 = log_posterior(0.0), log_posterior(1.0), log_posterior(4.0)
    assert lp0 < -1.0  # w = 0 is unconditional sampling: a third of the samples are in the asked class
    assert lp4 > 10 * lp1  # both negative: guidance cuts the remaining posterior deficit tenfold


def test_unconditional_sampling_of_conditional_model_uses_null_class():
    m = model()
    x_T = xs(4, seed=2)
    r = sample(m, x_T, solver="ddim", steps=5)
    plain = NoisePredictor(lambda x, t: MIX.eps(x, t, SDE), SDE, time_input=lambda t: t,
                           timestep_dtype=torch.float64)
    torch.testing.assert_close(r.samples, sample(plain, x_T, solver="ddim", steps=5).samples)


class NeverCalled:
    def __call__(self, *a, **k):
        raise AssertionError("the network must not be called for bad input")


BAD = [
    ({"cond": {"class_labels": torch.tensor([0, 1, 4])}}, "outside the model's classes 0..2"),
    ({"cond": {"class_labels": torch.tensor([0, -1, 1])}}, "outside the model's classes"),
    ({"cond": {"class_labels": torch.tensor([0, 1])}}, "batch dimension 3 first"),
    ({"cond": {"class_labels": torch.tensor([0.0, 1.0, 1.0])}}, "integer labels"),
    ({"cond": {"prompt": torch.zeros(3)}}, "unknown condition"),
    ({"cond": {"class_labels": torch.tensor([0, 1, 1])}, "guidance": float("nan")}, "guidance must be a finite number"),
    ({"cond": {"class_labels": torch.tensor([0, 1, 1])}, "guidance": math.inf}, "guidance must be a finite number"),
    ({"cond": {"class_labels": torch.tensor([0, 1, 1])}, "guidance": -1.0}, "guidance must be a finite number"),
    ({"cond": {"class_labels": torch.tensor([0, 1, 1])}, "guidance": 2.0, "guidance_interval": (0.5, 0.2)}, "0 <= t_lo <= t_hi <= 1"),
    ({"cond": {"class_labels": torch.tensor([0, 1, 1])}, "guidance": 2.0, "guidance_interval": (-0.1, 0.5)}, "0 <= t_lo <= t_hi <= 1"),
    ({"cond": {"class_labels": torch.tensor([0, 1, 1])}, "guidance": 2.0, "guidance_rescale": 1.5}, "guidance_rescale must be"),
    ({"guidance": 2.0}, "needs cond"),
]


@pytest.mark.parametrize("kwargs,msg", BAD, ids=[m for _, m in BAD])
def test_bad_conditioning_refused_before_any_network_call(kwargs, msg):
    m = NoisePredictor(NeverCalled(), SDE, time_input=lambda t: t, timestep_dtype=torch.float64,
                       sample_shape=(3,), conditioning=LABELS)
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        sample(m, xs(3), solver="ddim", steps=3, **kwargs)


def test_unconditional_model_refuses_cond():
    m = NoisePredictor(NeverCalled(), SDE, sample_shape=(3,))
    with pytest.raises(ValueError, match="unconditional and takes no cond"):
        sample(m, xs(3), solver="ddim", steps=3, cond={"class_labels": torch.tensor([0, 1, 2])})
    with pytest.raises(ValueError, match="model is unconditional"):
        sample(m, xs(3), solver="ddim", steps=3, guidance=2.0)


def test_text_condition_needs_a_null():
    """An embedding condition without a declared null must get one from the user for guidance."""
    calls = []

    def net(x, t, encoder_hidden_states):
        calls.append(encoder_hidden_states.clone())
        return x * 0 + encoder_hidden_states.sum(dim=(1, 2)).reshape(-1, 1)

    m = NoisePredictor(net, SDE, time_input=lambda t: t, timestep_dtype=torch.float64, sample_shape=(3,),
                       conditioning={"encoder_hidden_states": {}})
    emb = torch.ones(2, 4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="declares no null condition"):
        sample(m, xs(2), solver="ddim", steps=2, cond={"encoder_hidden_states": emb}, guidance=3.0)
    null = torch.zeros(4, 5, dtype=torch.float64)  # one row, broadcast over the batch
    with m.conditioned({"encoder_hidden_states": emb}, guidance=3.0, null_cond={"encoder_hidden_states": null}):
        out = m.raw(xs(2), 0.5)
    # cond branch outputs 20, null branch 0: guided = 0 + 3 (20 - 0)
    torch.testing.assert_close(out, torch.full((2, 3), 60.0, dtype=torch.float64))
    assert calls[-1].shape == (4, 4, 5) and torch.equal(calls[-1][2:], torch.zeros(2, 4, 5, dtype=torch.float64))


def test_unet_class_embedding():
    from sde_diffusion.nets.unet import UNet

    torch.manual_seed(0)
    net = UNet(num_classes=10, base_channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[]).eval()
    torch.nn.init.normal_(net.conv_out.weight)  # zero-initialised output layers would hide the labels
    for blk in list(net.down) + list(net.up):
        if hasattr(blk, "res"):
            torch.nn.init.normal_(blk.res.conv2.weight)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([10.0, 500.0, 900.0])
    a = net(x, t, class_labels=torch.tensor([1, 2, 3]))
    b = net(x, t, class_labels=torch.tensor([1, 2, 4]))
    torch.testing.assert_close(a[:2], b[:2])
    assert not torch.allclose(a[2], b[2])
    torch.testing.assert_close(net(x, t), net(x, t, class_labels=torch.tensor([10, 10, 10])))
    with pytest.raises(ValueError, match="must lie in 0..9"):
        net(x, t, class_labels=torch.tensor([1, 2, 11]))
    with pytest.raises(ValueError, match="unconditional"):
        UNet(base_channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[])(x, t, class_labels=torch.tensor([1, 2, 3]))
