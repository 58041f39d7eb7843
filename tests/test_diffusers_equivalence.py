"""Peer equivalence: our solvers == diffusers' schedulers on the same net, schedule and timesteps.

A small seeded conv net (float32) stands in for a trained model. Each diffusers scheduler runs its own
loop; we call ``sample(model, x_T, solver=..., timesteps=scheduler.timesteps)`` on
``NoisePredictor(net, VPSDE.from_betas(our betas))`` and compare the final samples, relative to their
scale, to 1e-4. Mapping notes:
* Euler/Heun (diffusers) carry y = x/alpha = x sqrt(sigma^2 + 1) and call the net on
  scale_model_input(y) = x. We start them from y_T = x_T / alpha(t_0) (not x_T * init_noise_sigma, which
  for "linspace"/"trailing" is sigma_max instead of sqrt(sigma_max^2 + 1)).
* diffusers' Euler/Heun "linspace" timesteps are fractional unless (N-1)/(K-1) is an integer; there
  they interpolate sigma linearly in the index, we interpolate log alpha linearly in t, so we compare on
  integer timesteps only (spacings leading/trailing, linspace with K = 10, custom integer timesteps).
* DDIM: diffusers steps to prev_timestep = t - N // K, which is the next entry of its timesteps only for
  "leading" and for "trailing" with N % K == 0; we compare there (our DDIM always steps to the next entry).
"""

from __future__ import annotations

import math

import pytest
import torch

try:  # a dev dependency: peer-equivalence tests fail (never skip) without it
    import diffusers
except ImportError as e:  # pragma: no cover
    raise ImportError("diffusers is missing: it is a dev dependency (pip install -e '.[dev]'), needed by the peer-equivalence tests") from e

from sde_diffusion import VPSDE, NoisePredictor, cosine_betas, linear_betas, scaled_linear_betas  # noqa: E402
from sde_diffusion.grids import discrete_timesteps  # noqa: E402
from sde_diffusion.sampling import sample  # noqa: E402

N = 1000
SCHEDULES = {  # diffusers beta_schedule name -> our betas
    "linear": lambda: linear_betas(N),
    "scaled_linear": lambda: scaled_linear_betas(N),
    "squaredcos_cap_v2": lambda: cosine_betas(N),
}
TOL = 1e-4


class TinyNet(torch.nn.Module):
    """eps-prediction net: conv features + sinusoidal timestep embedding; smooth in x and timestep."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 3, 3, padding=1)
        self.emb = torch.nn.Linear(8, 8)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x, timesteps):
        t = torch.as_tensor(timesteps, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        freqs = torch.exp(-torch.arange(4, dtype=x.dtype) * math.log(1000.0) / 4)
        e = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], dim=1)
        h = torch.nn.functional.silu(self.conv1(x) + self.emb(e)[:, :, None, None])
        return 0.5 * x + 0.5 * torch.tanh(self.conv2(h))


NET = TinyNet()
NET64 = TinyNet().double()  # same weights, float64 (internal equivalences at 1e-10)


def _setup(schedule: str, seed: int = 0):
    sde = VPSDE.from_betas(SCHEDULES[schedule]())
    model = NoisePredictor(NET, sde)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return sde, model, x_T


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |difference| relative to max(1, max |theirs|)."""
    return float((ours - theirs).abs().max() / max(1.0, float(theirs.abs().max())))


def _run_vp(sched, x, generator=None):
    """diffusers loop for schedulers working on the VP state (DDIM, DDPM, DPM-Solver, UniPC)."""
    with torch.no_grad():
        for t in sched.timesteps:
            kw = {"generator": generator} if generator is not None else {}
            x = sched.step(NET(x, t), t, x, **kw).prev_sample
    return x


def _run_karras(sched, y):
    """diffusers loop for Euler/Heun: state y = x/alpha, the net sees scale_model_input(y) = x."""
    with torch.no_grad():
        for t in sched.timesteps:
            y = sched.step(NET(sched.scale_model_input(y, t), t), t, y).prev_sample
    return y


def _sched(cls, schedule, **cfg):
    # explicit beta range: diffusers' defaults differ between schedulers (Heun: 0.00085/0.012, others 1e-4/0.02)
    cfg.update(beta_start=0.00085, beta_end=0.012) if schedule == "scaled_linear" else cfg.update(beta_start=1e-4, beta_end=0.02)
    return cls(num_train_timesteps=N, beta_schedule=schedule, **cfg)


# ---- DDIM and DDPM (ancestral) ------------------------------------------------------------------

@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("spacing,steps", [("leading", 10), ("leading", 7), ("trailing", 25), ("trailing", 8)])
def test_ddim_eta0(schedule, spacing, steps):
    sched = _sched(diffusers.DDIMScheduler, schedule, set_alpha_to_one=True, clip_sample=False, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    sde, model, x_T = _setup(schedule)
    theirs = _run_vp(sched, x_T.clone())
    ours = sample(model, x_T, solver="ddim", timesteps=sched.timesteps).samples
    assert _close(ours, theirs) < TOL


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("spacing,steps", [("leading", 10), ("trailing", 7), ("linspace", 12)])
def test_ddpm_ancestral_same_noise(schedule, spacing, steps):
    """Same generator seed on both sides: ours draws the per-step noise in the same order and shape."""
    sched = _sched(diffusers.DDPMScheduler, schedule, clip_sample=False, variance_type="fixed_small", timestep_spacing=spacing)
    sched.set_timesteps(steps)
    sde, model, x_T = _setup(schedule)
    theirs = _run_vp(sched, x_T.clone(), generator=torch.Generator().manual_seed(7))
    ours = sample(model, x_T, solver="ancestral", timesteps=sched.timesteps, generator=torch.Generator().manual_seed(7)).samples
    assert _close(ours, theirs) < TOL


# ---- Euler and Heun (Karras et al.) --------------------------------------------------------------

KARRAS_CASES = [("leading", 10), ("trailing", 10), ("trailing", 7), ("linspace", 10), ("leading", 4)]


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("spacing,steps", KARRAS_CASES)
@pytest.mark.parametrize("solver,cls", [("euler", "EulerDiscreteScheduler"), ("heun", "HeunDiscreteScheduler")])
def test_euler_heun(schedule, spacing, steps, solver, cls):
    sched = _sched(getattr(diffusers, cls), schedule, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    timesteps = sched.timesteps if solver == "euler" else sched.timesteps[::2]  # Heun repeats interior ones
    assert torch.equal(timesteps, timesteps.round()), "fractional timesteps: not comparable (see module doc)"
    sde, model, x_T = _setup(schedule)
    t0 = float(timesteps[0] + 1) / N
    theirs = _run_karras(sched, x_T / sde.alpha(t0))
    res = sample(model, x_T, solver=solver, timesteps=timesteps)
    assert _close(res.samples, theirs) < TOL
    assert res.nfe == (steps if solver == "euler" else 2 * steps - 1)


@pytest.mark.parametrize("solver,cls", [("euler", "EulerDiscreteScheduler"), ("heun", "HeunDiscreteScheduler")])
def test_euler_heun_custom_timesteps(solver, cls):
    """Irregular integer timesteps passed to both sides."""
    custom = [951, 803, 640, 400, 222, 97, 31, 5]
    sched = _sched(getattr(diffusers, cls), "scaled_linear")
    sched.set_timesteps(timesteps=custom)
    sde, model, x_T = _setup("scaled_linear", seed=3)
    theirs = _run_karras(sched, x_T / sde.alpha((custom[0] + 1) / N))
    ours = sample(model, x_T, solver=solver, timesteps=custom).samples
    assert _close(ours, theirs) < TOL


# ---- DPM-Solver++ multistep and UniPC -------------------------------------------------------------

MULTISTEP_CASES = [("linspace", 5), ("linspace", 10), ("linspace", 20), ("leading", 12), ("trailing", 8)]


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("spacing,steps", MULTISTEP_CASES)
def test_dpmpp_2m_default_config(schedule, spacing, steps):
    sched = _sched(diffusers.DPMSolverMultistepScheduler, schedule, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    sde, model, x_T = _setup(schedule)
    theirs = _run_vp(sched, x_T.clone())
    res = sample(model, x_T, solver="dpmpp_2m", timesteps=sched.timesteps)
    assert _close(res.samples, theirs) < TOL
    assert res.nfe == steps


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("steps", [6, 12, 20])
def test_dpmpp_3m_diffusers_variant(schedule, steps):
    """solver_order=3 (lower-order final steps below 15 steps) equals our variant="diffusers" (not our default)."""
    sched = _sched(diffusers.DPMSolverMultistepScheduler, schedule, solver_order=3)
    sched.set_timesteps(steps)
    sde, model, x_T = _setup(schedule)
    theirs = _run_vp(sched, x_T.clone())
    ours = sample(model, x_T, solver="dpmpp_3m", timesteps=sched.timesteps, variant="diffusers").samples
    assert _close(ours, theirs) < TOL
    taylor = sample(model, x_T, solver="dpmpp_3m", timesteps=sched.timesteps).samples
    assert _close(taylor, theirs) > 2 * TOL  # the default really is a different (third-order) method


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
@pytest.mark.parametrize("steps", [5, 15])
def test_dpmpp_2m_sde_same_noise(schedule, steps):
    sched = _sched(diffusers.DPMSolverMultistepScheduler, schedule, algorithm_type="sde-dpmsolver++")
    sched.set_timesteps(steps)
    sde, model, x_T = _setup(schedule)
    theirs = _run_vp(sched, x_T.clone(), generator=torch.Generator().manual_seed(11))
    ours = sample(model, x_T, solver="dpmpp_2m_sde", timesteps=sched.timesteps,
                  generator=torch.Generator().manual_seed(11)).samples
    assert _close(ours, theirs) < TOL


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("spacing,steps", MULTISTEP_CASES)
def test_unipc_default_config(schedule, spacing, steps):
    sched = _sched(diffusers.UniPCMultistepScheduler, schedule, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    sde, model, x_T = _setup(schedule)
    theirs = _run_vp(sched, x_T.clone())
    res = sample(model, x_T, solver="unipc", timesteps=sched.timesteps)
    assert _close(res.samples, theirs) < TOL
    assert res.nfe == steps


@pytest.mark.parametrize("order,variant,steps", [(3, "bh2", 10), (3, "bh1", 7), (2, "bh1", 10), (1, "bh2", 6)])
def test_unipc_options(order, variant, steps):
    """bh1: diffusers' last step to sigma = 0 computes B(h) * 0 = -inf * 0 = NaN, so for bh1 we compare
    the state after K - 1 steps (our callback's x, the uncorrected predictor output like theirs)."""
    sched = _sched(diffusers.UniPCMultistepScheduler, "scaled_linear", solver_order=order, solver_type=variant)
    sched.set_timesteps(steps)
    sde, model, x_T = _setup("scaled_linear", seed=5)
    x, states = x_T.clone(), []
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(NET(x, t), t, x).prev_sample
            states.append(x)
    seen = []
    res = sample(model, x_T, solver="unipc", timesteps=sched.timesteps, order=order, variant=variant,
                 callback=lambda d: seen.append(d["x"]))
    assert _close(seen[-2], states[-2]) < TOL
    if variant == "bh2":
        assert _close(res.samples, states[-1]) < TOL
    else:
        assert torch.isnan(states[-1]).all() and torch.isfinite(res.samples).all()


def test_unipc_without_corrector():
    sched = _sched(diffusers.UniPCMultistepScheduler, "linear", disable_corrector=list(range(100)))
    sched.set_timesteps(9)
    sde, model, x_T = _setup("linear", seed=2)
    theirs = _run_vp(sched, x_T.clone())
    ours = sample(model, x_T, solver="unipc", timesteps=sched.timesteps, corrector=False).samples
    assert _close(ours, theirs) < TOL


# ---- internal equivalences on continuous grids ---------------------------------------------------

@pytest.mark.parametrize("spacing", ["uniform", "logsnr", "karras"])
def test_first_order_solvers_agree(spacing):
    """DDIM(eta=0) == Euler in sigma space == DPM-Solver-1 (both forms) == UniPC-1 without corrector."""
    sde = VPSDE.linear()
    model = NoisePredictor(NET64, sde, time_input=lambda t: 999 * t, timestep_dtype=torch.float64)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = sample(model, x_T, solver="ddim", steps=9, spacing=spacing).samples
    for solver, opts in [("euler", {}), ("dpm_solver", dict(order=1)), ("dpm_solver", dict(order=1, algorithm="dpmsolver")),
                         ("unipc", dict(order=1, corrector=False)), ("dpmpp_2m_sde", dict(eta=0.0, lower_order_final=True))]:
        out = sample(model, x_T, solver=solver, steps=9, spacing=spacing, **opts).samples
        if solver == "dpmpp_2m_sde":  # eta = 0 is dpmpp_2m, not first order: compare to it instead
            assert (out - sample(model, x_T, solver="dpmpp_2m", steps=9, spacing=spacing).samples).abs().max() < 1e-10
            continue
        assert (out - ref).abs().max() < 1e-10, (solver, opts)


def test_discrete_timesteps_match_diffusers():
    """Our discrete spacings reproduce the integer timesteps of diffusers' DDPM/DDIM (what the above relies on)."""
    for spacing in ("leading", "trailing", "linspace"):
        for steps in (7, 10, 50):
            sched = _sched(diffusers.DDPMScheduler, "linear", timestep_spacing=spacing)
            sched.set_timesteps(steps)
            assert torch.equal(discrete_timesteps(N, steps, spacing), sched.timesteps.long())
