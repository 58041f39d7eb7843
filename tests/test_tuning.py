"""Model-tuned few-step solvers (sde_diffusion.tuning): exact answers from the Gaussian-mixture flow map,
file round trips, bitwise reproduction through ``sample(spacing="tuned")``, diffusers export, bad input."""

import json

import pytest
import torch

from sde_diffusion import GaussianMixture, VPSDE, linear_betas, sample
from sde_diffusion.model import NoisePredictor
from sde_diffusion.tuning import (export_diffusers, load_tuned, model_fingerprint, save_tuned, standard_coefficients,
                                  tune, tune_grid)


def _mixture():
    # an anisotropic Gaussian (stds 0.02 .. 1) on the 1000-step DDPM chain: the exact PF flow map is the reference
    sde = VPSDE.from_betas(linear_betas(1000))
    stds = torch.logspace(-1.7, 0, 16, dtype=torch.float64)
    g = GaussianMixture(torch.linspace(-1, 1, 16, dtype=torch.float64)[None], stds[None])
    return g, g.predictor(sde), (lambda x: g.flow_map(x, 1.0, 0.0, sde))


def _draw(seed, n=32):
    return torch.randn(n, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _rmse(a, b):
    return float(((a - b) ** 2).mean().sqrt())


@pytest.fixture(scope="module")
def mixture_tune():
    g, m, exact = _mixture()
    xc, xv, xh = _draw(1), _draw(2, 16), _draw(3, 64)
    r = tune(m, "dpmpp_2m", 4, x_T=xc, reference=exact(xc), x_val=xv, reference_val=exact(xv), x_holdout=xh,
             reference_holdout=exact(xh), maxfev=60)
    return m, exact, xh, r


def test_tuning_reduces_exact_error_on_held_out_noise(mixture_tune):
    m, exact, xh, r = mixture_tune
    assert r["steps"] == 4 and len(r["ts"]) == 5 and r["ts"][-1] == 0.0 and len(r["options"]["coefficients"]) == 3
    assert len(r["options"]["eval_times"]) == 4 and all(0 < t <= 1 for t in r["options"]["eval_times"])
    # the start: the best standard spacing with DPM-Solver++(2M)'s own weights, scored on the exact flow map
    best_standard = min(_rmse(sample(m, xh, solver="dpmpp_2m", steps=4, spacing=s).samples, exact(xh))
                        for s in ("logsnr", "karras", "uniform", "quadratic"))
    assert r["holdout"]["rmse"] < 0.3 * best_standard, (r["holdout"], best_standard)
    assert r["parameters"] == 4 + 3 + 4  # free start + 3 increments, 3 weights, 4 network times: 3K - 1


@pytest.mark.parametrize("solver", ["ddim", "unipc", "dpmpp_3m"])
def test_tuning_never_worse_than_its_start_on_held_out_noise(solver):
    g, m, exact = _mixture()
    xc, xv, xh = _draw(11), _draw(12, 16), _draw(13, 64)
    r = tune(m, solver, 3, x_T=xc, reference=exact(xc), x_val=xv, reference_val=exact(xv), x_holdout=xh,
             reference_holdout=exact(xh), maxfev=30)
    assert r["holdout"]["rmse"] <= r["holdout"]["start_rmse"]
    assert r["validation"]["rmse"] <= r["validation"]["start_rmse"]
    # the start is a standard grid: its held-out error is that of sample(steps=3, spacing=start)
    start = sample(m, xh, solver=solver, steps=3, spacing=r["start"]["spacing"]).samples
    assert r["holdout"]["start_rmse"] == pytest.approx(_rmse(start, exact(xh)), rel=1e-12)


def test_standard_coefficients_reproduce_dpmpp_2m():
    g, m, exact = _mixture()
    x = _draw(5, 8)
    ts = torch.tensor([0.9, 0.5, 0.2, 0.05, 0.01, 0.0], dtype=torch.float64)
    a = sample(m, x, solver="dpmpp_2m", ts=ts).samples
    b = sample(m, x, solver="dpmpp_2m", ts=ts, coefficients=standard_coefficients(m, ts).tolist()).samples
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    # the Lu et al. 2022b weight 1/(2r), r = h_prev/h, on an interior step, by hand
    lam = m.sde.log_snr(ts[:4])
    assert standard_coefficients(m, ts)[1] == pytest.approx(0.5 * float(lam[3] - lam[2]) / float(lam[2] - lam[1]))


def test_tuned_file_round_trips_and_sample_reproduces_the_tuned_run_bitwise(mixture_tune, tmp_path):
    m, exact, xh, r = mixture_tune
    f = tmp_path / "t.json"
    save_tuned(r, f)
    (c,) = load_tuned(f)
    assert c == json.loads(json.dumps(r))
    out = sample(m, xh, solver="dpmpp_2m", steps=4, tuned=f).samples
    # the held-out error the tune reported is exactly the error of these samples
    assert _rmse(out, exact(xh)) == r["holdout"]["rmse"]
    direct = sample(m, xh, solver="dpmpp_2m", ts=torch.tensor(r["ts"], dtype=torch.float64), **r["options"]).samples
    assert torch.equal(out, direct)


def test_shipped_tuned_configuration_is_used_by_spacing_tuned():
    from sde_diffusion.checkpoints import ASSETS_DIR, load_model

    m = load_model("digits")
    configs = load_tuned(ASSETS_DIR / "digits" / "tuned.json")
    c = configs[0]
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    a = sample(m, x, solver=c["solver"], steps=c["steps"], spacing="tuned").samples
    b = sample(m, x, solver=c["solver"], ts=torch.tensor(c["ts"], dtype=torch.float64), **c["options"]).samples
    assert torch.equal(a, b)
    assert all(cc["model_sha256"] == m.config["weights"]["sha256"] for cc in configs)


def test_diffusers_export_gives_diffusers_our_grid(mixture_tune):
    pytest.importorskip("diffusers")
    from sde_diffusion.grids import grid_from_timesteps
    from sde_diffusion.interop.peers import make_scheduler

    m, exact, xh, r = mixture_tune
    ex = export_diffusers(r, m)
    N = m.sde.num_train_steps
    # the exported indices are the tuned times to the nearest training step (t = (n + 1)/N)
    for n, t in zip(ex["timesteps"], r["ts"][:-1]):
        assert abs((n + 1) / N - t) <= 0.5 / N + 1e-12
    sched = make_scheduler("dpmpp_2m", m, "trailing")
    sched.set_timesteps(timesteps=ex["timesteps"])
    assert [int(t) for t in sched.timesteps] == ex["timesteps"]
    # same method (DPM-Solver++(2M), standard weights) on that grid: diffusers' samples equal ours
    x = xh[:8].float()
    y = x * sched.init_noise_sigma
    with torch.no_grad():
        for tau in sched.timesteps:
            y = sched.step(m.eps(y, (float(tau) + 1.0) / N), tau, y).prev_sample
    ours = sample(m, x, solver="dpmpp_2m", timesteps=ex["timesteps"]).samples
    assert grid_from_timesteps(m.sde, ex["timesteps"])[-1] == 0
    assert torch.allclose(y.double(), ours.double(), atol=1e-4), float((y.double() - ours.double()).abs().max())


# ---- bad input: one line, before any network call -------------------------------------------------

class _Counting(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([float(w)]))
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        return self.w * x


def _small(w=0.1):
    net = _Counting(w)
    return net, NoisePredictor(net, VPSDE.from_betas(linear_betas(1000)), "epsilon", sample_shape=(2,))


@pytest.mark.parametrize("solver,nfe,kw,match", [
    ("nope", 5, {}, "unknown solver 'nope'"),
    ("ancestral", 5, {}, "stochastic"),
    ("ode", 5, {}, "adaptive"),
    ("heun", 2, {}, "heun.*NFE >= 3"),
    ("dpmpp_2m", 1, {}, "cannot make 2 steps"),
    ("dpmpp_2m", 5, {"calibration": 8}, "calibration must be an integer >= 16"),
    ("unipc", 5, {"coefficients": True}, "takes no per-step coefficients"),
])
def test_bad_tune_input_is_one_line_before_any_network_call(solver, nfe, kw, match):
    net, m = _small()
    with pytest.raises(ValueError, match=match) as e:
        tune(m, solver, nfe, **kw)
    assert "\n" not in str(e.value) and net.calls == 0


def test_tuned_file_for_other_weights_or_other_steps_is_refused(tmp_path):
    net, m = _small(0.1)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r = tune(m, "ddim", 3, x_T=x, reference=torch.zeros_like(x), validation=0, holdout=0, maxfev=5)
    f = tmp_path / "t.json"
    save_tuned(r, f)
    assert r["model_sha256"] == model_fingerprint(m)
    other_net, other = _small(0.2)
    with pytest.raises(ValueError, match="made for other weights"):
        sample(other, x, solver="ddim", steps=3, tuned=f)
    with pytest.raises(ValueError, match=r"no tuned configuration ddim/4 .*available: ddim/3"):
        sample(m, x, solver="ddim", steps=4, tuned=f)
    with pytest.raises(ValueError, match=r"no tuned configuration unipc/3 .*available: ddim/3"):
        sample(m, x, solver="unipc", steps=3, tuned=f)
    assert other_net.calls == 0


def test_spacing_tuned_without_configuration_names_what_exists():
    from sde_diffusion.checkpoints import load_model

    net, m = _small()
    with pytest.raises(ValueError, match="ships none"):
        sample(m, torch.zeros(1, 2), solver="ddim", steps=3, spacing="tuned")
    assert net.calls == 0
    digits = load_model("digits")
    with pytest.raises(ValueError, match=r"no tuned configuration ddim/7 in .*tuned.json; available: "):
        sample(digits, torch.zeros(1, 1, 8, 8), solver="ddim", steps=7, spacing="tuned")


def test_tune_grid_needs_two_steps():
    m = GaussianMixture([[0.0]], 1.0).predictor(VPSDE.linear())
    with pytest.raises(ValueError, match="steps >= 2"):
        tune_grid(m, "ddim", 1, x_T=torch.zeros(16, 1), reference=torch.zeros(16, 1))


def _cli(argv):
    import argparse

    from sde_diffusion.commands import tune as cmd

    p = argparse.ArgumentParser()
    cmd.register(p.add_subparsers(dest="command"))
    return p.parse_args(argv)


@pytest.mark.parametrize("argv,match", [
    (["--solver", "ancestral", "--nfe", "5"], "stochastic"),
    (["--solver", "dpmpp_2m", "--nfe", "5", "--calibration", "8"], "--calibration must be >= 16"),
    (["--solver", "dpmpp_2m"], "give --nfe"),
    (["--solver", "dpmpp_2m", "--nfe", "5", "--guidance", "2"], "--guidance needs --class"),
])
def test_tune_command_refuses_bad_input_before_loading(argv, match):
    a = _cli(["tune", *argv])
    with pytest.raises(ValueError, match=match):
        a.func(a)


def test_tune_command_exports_a_file_for_diffusers(mixture_tune, tmp_path, capsys):
    m, exact, xh, r = mixture_tune
    f = tmp_path / "t.json"
    save_tuned(r, f)
    from sde_diffusion.commands import tune as cmd

    a = _cli(["tune", "--from", str(f), "--export", "diffusers"])
    ex = cmd.export_for(load_tuned(f)[0], m)
    assert ex["timesteps"] == export_diffusers(r, m)["timesteps"]
    assert a.from_ == str(f)


def test_guided_tune_on_an_exact_class_mixture(tmp_path):
    # classes = components of a 3-D mixture; cond eps closed form, null class = the whole mixture
    sde = VPSDE.from_betas(linear_betas(1000))
    means, stds = [[1.5, -1.0, 0.5], [-1.0, 1.2, 0.0], [0.2, 0.3, -1.4]], [0.3, 0.5, 0.4]
    mix, classes = GaussianMixture(means, stds), [GaussianMixture([m], [s]) for m, s in zip(means, stds)]

    def net(x, t, class_labels=None):
        y = torch.full((x.shape[0],), 3) if class_labels is None else class_labels
        out = torch.empty_like(x, dtype=torch.float64)
        for k in range(4):
            rows = (y == k).nonzero().squeeze(1)
            if rows.numel():
                tt = t[rows] if torch.as_tensor(t).ndim else t
                out[rows] = (mix if k == 3 else classes[k]).eps(x[rows], tt, sde)
        return out.to(x.dtype)

    m = NoisePredictor(net, sde, "epsilon", time_input=lambda t: t, timestep_dtype=torch.float64, sample_shape=(3,),
                       conditioning={"class_labels": {"num_classes": 3, "null_class": 3}})
    draw = lambda s, n: torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(s))  # noqa: E731
    r = tune(m, "dpmpp_2m", 3, x_T=draw(1, 16), x_val=draw(2, 6), x_holdout=draw(3, 12),
             cond={"class_labels": torch.arange(3)}, guidance=2.0, maxfev=30)
    assert r["guidance"] == 2.0 and r["holdout"]["rmse"] < r["holdout"]["start_rmse"]
    f = tmp_path / "g.json"
    save_tuned(r, f)
    y = torch.arange(12) % 3
    out = sample(m, draw(3, 12), solver="dpmpp_2m", tuned=f, cond={"class_labels": y}, guidance=2.0).samples
    ref = sample(m, draw(3, 12), solver="ode", rtol=1e-6, atol=1e-6, cond={"class_labels": y}, guidance=2.0).samples
    assert _rmse(out, ref) == pytest.approx(r["holdout"]["rmse"], rel=1e-9)
    with pytest.raises(ValueError, match="available: dpmpp_2m/3/guidance=2"):
        sample(m, draw(3, 2), solver="dpmpp_2m", tuned=f, cond={"class_labels": y[:2]})


def test_shipped_guided_configurations_are_picked_by_steps_and_guidance():
    from sde_diffusion.checkpoints import ASSETS_DIR, load_model
    from sde_diffusion.tuned_files import resolve_tuned

    m = load_model("digits-cond")
    configs = load_tuned(ASSETS_DIR / "digits-cond" / "tuned.json")
    assert sorted(int(c["nfe"]) for c in configs) == [3, 4, 5, 6, 8, 10]
    for c in configs:
        ts, opts = resolve_tuned(m, c["solver"], c["steps"], guidance=2.0)
        assert ts.tolist() == c["ts"] and opts == c["options"] and c["model_sha256"] == model_fingerprint(m)
    with pytest.raises(ValueError, match="no tuned configuration dpmpp_2m/5/guidance=3.0 .*dpmpp_2m/5/guidance=2.0"):
        resolve_tuned(m, "dpmpp_2m", 5, guidance=3.0)
    with pytest.raises(ValueError, match="guidance=2.0000001"):
        resolve_tuned(m, "dpmpp_2m", 5, guidance=2.0000001)
