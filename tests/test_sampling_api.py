"""sample(): grid arguments, adaptive solvers, user solvers, callbacks, progress bar."""

import pytest
import torch

from sde_diffusion.analytic import GaussianMixture
from sde_diffusion.sampling import sample
from sde_diffusion.schedules import linear_betas
from sde_diffusion.sde import VPSDE
from sde_diffusion.solvers import ADAPTIVE

SDE = VPSDE.from_betas(linear_betas(1000))
G = GaussianMixture([[0.5, -1.0], [-0.8, 0.3]], 0.4)
M = G.predictor(SDE)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(steps=5, timesteps=[999, 500]), "exactly one"),
    (dict(steps=5, ts=[1.0, 0.0]), "exactly one"),
    (dict(timesteps=[999, 500], ts=[1.0, 0.0]), "exactly one"),
    (dict(spacing="uniform"), "spacing needs steps"),
    (dict(ts=[1.0, 0.0], spacing="uniform"), "spacing needs steps"),
    (dict(), "give the grid"),
    (dict(steps=0), "steps"),
    (dict(steps=5, spacing="no_such_spacing"), "uniform"),
    (dict(ts=[0.0, 1.0]), "decreasing"),
    (dict(timesteps=[500, 999]), "decreasing"),
    (dict(timesteps=[1000]), "999"),
])
def test_grid_argument_errors(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        sample(M, shape=(2, 2), seed=0, solver="ddim", **kwargs)


@pytest.mark.parametrize("name", sorted(ADAPTIVE))
def test_steps_to_adaptive_solver_points_to_tolerances(name):
    with pytest.raises(ValueError, match="rtol/atol"):
        sample(M, shape=(2, 2), seed=0, solver=name, steps=10)
    r = sample(M, shape=(2, 2), seed=0, solver=name)  # default span [1, 0]
    assert r.ts.tolist() == [1.0, 0.0]


def test_timesteps_get_a_final_zero():
    r = sample(M, shape=(2, 2), seed=0, solver="ddim", timesteps=[999, 499, 9])
    assert r.ts.dtype == torch.float64
    assert r.ts.tolist() == [1.0, 0.5, 0.01, 0.0]  # t_n = (n + 1)/N, then 0
    assert r.nfe == 3


def test_user_callable_solver():
    def halfway(model, x, ts, *, noise, callback=None, scale=1.0):
        """Jump straight to the x0 prediction, scaled (a toy solver)."""
        x0 = model.predict(x, float(ts[0])).x0
        if callback is not None:
            callback(dict(i=0, t=float(ts[-1]), x=scale * x0, x0=x0))
        return scale * x0, {"note": "toy"}

    x_T = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r = sample(M, x_T, solver=halfway, steps=4, scale=2.0)
    a, s = SDE.alpha(1.0), SDE.sigma(1.0)
    torch.testing.assert_close(r.samples, 2.0 * (x_T - s * G.eps(x_T, 1.0, SDE)) / a)
    assert r.nfe == 1 and r.info == {"note": "toy", "network_rows": 3}
    with pytest.raises(TypeError, match="bogus"):
        sample(M, x_T, solver=halfway, steps=4, bogus=1)


@pytest.mark.parametrize("name", ["ddim", "euler_maruyama", "pc", "ode"])
def test_callback_gets_i_t_x_x0(name):
    seen = []
    kw = {} if name in ADAPTIVE else dict(steps=4, spacing="uniform")
    r = sample(M, shape=(2, 2), seed=0, solver=name, callback=seen.append, **kw)
    assert [d["i"] for d in seen] == list(range(len(r.ts) - 1))
    assert [d["t"] for d in seen] == r.ts[1:].tolist()
    for d in seen:
        assert {"i", "t", "x", "x0"} <= set(d) and d["x"].shape == (2, 2)
    assert torch.equal(seen[-1]["x"], r.samples)
    assert seen[-1]["x0"] is not None  # the step to t = 0 returns the x0 prediction


def test_progress_bar(capsys, monkeypatch):
    r = sample(M, shape=(2, 2), seed=0, solver="ddim", steps=3, progress=True)
    assert "ddim" in capsys.readouterr().err and r.samples.shape == (2, 2)

    import tqdm.auto

    made = []

    class Bar:  # records what sample() tells the bar
        def __init__(self, total=None, desc=None, **kw):
            self.total, self.desc, self.n, self.closed = total, desc, 0, False
            made.append(self)

        def update(self, k=1):
            self.n += k

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    sample(M, shape=(2, 2), seed=0, solver="pc", steps=5, progress=True)
    (bar,) = made
    assert (bar.total, bar.n, bar.desc, bar.closed) == (5, 5, "pc", True)


def test_seed_and_generator_conflict():
    with pytest.raises(ValueError, match="seed or generator"):
        sample(M, shape=(2, 2), seed=0, generator=torch.Generator(), solver="ddim", steps=3)
