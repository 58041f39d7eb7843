"""Peer equivalence with k-diffusion (Crowson), float64, to 1e-10.

k-diffusion's samplers work on EDM's variance-exploding state y = x/alpha with a denoiser D(y; sigma) and a
descending sigma grid; ours work on the VP state x with times t. The same model seen both ways: an EDM-style
denoiser D(y; sigma) = c_skip y + c_out F(c_in y, log sigma / 4) with a small random MLP F (Karras et al.
2022, Table 1 preconditioning, sigma_data = 0.5) is given to k-diffusion as is, and to us as the EDM family
of ``sde_diffusion.paths`` (``PathPredictor(D, edm_path(sigma_max), "x0")``); the grids are Karras and VE (geometric) sigma grids.

Only k-diffusion's ``sampling.py`` is loaded (its package __init__ pulls image/training dependencies); its
one helper from ``utils`` is stubbed here. Stochastic samplers get the same noise on both sides: a table of
draws handed out in call order.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from pathlib import Path

import pytest
import torch

from sde_diffusion.noise import NoiseSource
from sde_diffusion.paths import PathPredictor, edm_path, karras_sigmas, ts_from_sigmas
from sde_diffusion.sampling import sample

TOL = 1e-10
SIGMA_DATA = 0.5


def _load_kdiffusion_sampling():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or importlib.util.find_spec("torchsde") is None:
        raise ImportError("the k-diffusion peer tests need torchsde (in [dev]) and k-diffusion installed WITHOUT its "
                          "dependencies, which would replace torch: pip install --no-deps 'k-diffusion==0.1.1.post1' "
                          "(.ci/run does)")
    name = "_kdiffusion_peer"
    if name + ".sampling" in sys.modules:
        return sys.modules[name + ".sampling"]
    pkg = types.ModuleType(name)
    pkg.__path__ = []
    utils = types.ModuleType(name + ".utils")
    utils.append_dims = lambda v, n: v.reshape(*v.shape, *([1] * (n - v.ndim)))
    pkg.utils = utils
    sys.modules[name], sys.modules[name + ".utils"] = pkg, utils
    path = Path(spec.submodule_search_locations[0]) / "sampling.py"
    mod_spec = importlib.util.spec_from_file_location(name + ".sampling", path)
    mod = importlib.util.module_from_spec(mod_spec)
    sys.modules[name + ".sampling"] = mod
    mod_spec.loader.exec_module(mod)
    return mod


K = _load_kdiffusion_sampling()


class Denoiser(torch.nn.Module):
    """EDM-preconditioned random MLP: D(y; sigma) = c_skip y + c_out F(c_in y, c_noise), float64."""

    def __init__(self, dim=6, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(dim + 1, 16, generator=g, dtype=torch.float64) * 0.5
        self.w2 = torch.randn(16, dim, generator=g, dtype=torch.float64) * 0.5

    def forward(self, y, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1).expand(y.shape[0], 1)
        c_skip = SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2)
        c_out = sigma * SIGMA_DATA / (sigma**2 + SIGMA_DATA**2).sqrt()
        c_in = 1 / (sigma**2 + SIGMA_DATA**2).sqrt()
        h = torch.tanh(torch.cat([c_in * y, sigma.log() / 4], dim=1) @ self.w1)
        return c_skip * y + c_out * (h @ self.w2)


D = Denoiser()


class Replay(NoiseSource):
    """The k-th request (interval or fresh) gets table[k]: the same draws as the peer's noise sampler."""

    def __init__(self, table):
        self.table, self.k = table, 0

    def _next(self):
        z = self.table[self.k]
        self.k += 1
        return z

    def interval(self, t0, t1):
        return self._next()

    def fresh(self):
        return self._next()


def _table(shape, n=200, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]


def _grids():
    karras = karras_sigmas(12, 0.002, 80.0, rho=7.0)
    ve = torch.cat([torch.exp(torch.linspace(math.log(50.0), math.log(0.01), 10, dtype=torch.float64)),
                    torch.zeros(1, dtype=torch.float64)])
    return {"karras": karras, "ve": ve}


GRIDS = _grids()


def _ours(name, sigmas, y_T, noise=None, **opts):
    model = PathPredictor(D, edm_path(sigma_max=float(sigmas[0])), "x0", net_time_dtype=torch.float64)
    ts = ts_from_sigmas(model.sde, sigmas)
    x_T = model.from_path_state(y_T, ts[0])
    out = sample(model, x_T, solver=name, ts=ts, noise=noise if noise is not None else "gaussian", **opts).samples
    return model.to_path_state(out, ts[-1])


def _y_T(sigmas, seed=0):
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * float(sigmas[0])


def _rel(a, b):
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


# (our solver, our options, k-diffusion sampler, its options)
DETERMINISTIC = [
    ("euler", {}, "sample_euler", {}),
    ("heun", {}, "sample_heun", {}),
    ("dpm_solver", dict(order=2, algorithm="dpmsolver"), "sample_dpm_2", {}),
    ("dpmpp_2m", dict(lower_order_final=False), "sample_dpmpp_2m", {}),
    ("dpmpp_2s_ancestral", dict(eta=0.0), "sample_dpmpp_2s_ancestral", dict(eta=0.0)),
    ("euler_ancestral", dict(eta=0.0), "sample_euler_ancestral", dict(eta=0.0)),
    ("dpmpp_sde", dict(eta=0.0), "sample_dpmpp_sde", dict(eta=0.0)),
    ("dpmpp_2m_sde", dict(eta=0.0, lower_order_final=False), "sample_dpmpp_2m_sde", dict(eta=0.0)),
    ("dpmpp_3m_sde", dict(eta=0.0, lower_order_final=False, variant="k-diffusion"), "sample_dpmpp_3m_sde", dict(eta=0.0)),
]

STOCHASTIC = [
    ("euler_ancestral", {}, "sample_euler_ancestral", {}),
    ("euler_ancestral", dict(eta=0.6, S_noise=1.1), "sample_euler_ancestral", dict(eta=0.6, s_noise=1.1)),
    ("dpmpp_2s_ancestral", {}, "sample_dpmpp_2s_ancestral", {}),
    ("dpmpp_sde", {}, "sample_dpmpp_sde", {}),
    ("dpmpp_sde", dict(r=1 / 3, eta=0.5), "sample_dpmpp_sde", dict(r=1 / 3, eta=0.5)),
    ("dpmpp_2m_sde", dict(lower_order_final=False), "sample_dpmpp_2m_sde", {}),
    ("dpmpp_3m_sde", dict(lower_order_final=False, variant="k-diffusion"), "sample_dpmpp_3m_sde", {}),
    ("dpmpp_3m_sde", dict(lower_order_final=False, variant="k-diffusion", eta=0.5), "sample_dpmpp_3m_sde", dict(eta=0.5)),
]


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("ours,opts,theirs,kopts", DETERMINISTIC, ids=[c[0] + str(c[1]) for c in DETERMINISTIC])
def test_deterministic_equals_kdiffusion(grid, ours, opts, theirs, kopts):
    sigmas = GRIDS[grid]
    y_T = _y_T(sigmas)
    ref = getattr(K, theirs)(D, y_T.clone(), sigmas, disable=True, **kopts)
    assert _rel(_ours(ours, sigmas, y_T, **opts), ref) < TOL


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("ours,opts,theirs,kopts", STOCHASTIC, ids=[c[0] + str(c[1]) for c in STOCHASTIC])
def test_stochastic_equals_kdiffusion_same_noise(grid, ours, opts, theirs, kopts):
    sigmas = GRIDS[grid]
    y_T = _y_T(sigmas)
    table = _table(y_T.shape)
    peer = Replay(table)  # k-diffusion's noise_sampler(sigma, sigma_next): the next draw of the same table
    ref = getattr(K, theirs)(D, y_T.clone(), sigmas, disable=True, noise_sampler=peer.interval, **kopts)
    used = peer.k
    src = Replay(table)
    out = _ours(ours, sigmas, y_T, noise=src, **opts)
    assert src.k == used, f"we drew {src.k} noise tensors, k-diffusion {used}"
    assert _rel(out, ref) < TOL


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_lms_equals_kdiffusion(grid, order):
    """k-diffusion's LMS continues its polynomial to sigma = 0; ours returns the x0 prediction there, so we
    compare on the grid without its final zero, and then check our last step separately."""
    sigmas = GRIDS[grid][:-1]
    y_T = _y_T(sigmas)
    ref = K.sample_lms(D, y_T.clone(), sigmas, disable=True, order=order)
    assert _rel(_ours("lms", sigmas, y_T, order=order), ref) < TOL
    full = GRIDS[grid]
    ours_full = _ours("lms", full, y_T, order=order)
    assert _rel(ours_full, D(ref, sigmas[-1:])) < TOL
