"""diffusers' schedulers driving one of our models, for side-by-side benchmarks.

Each peer runs the scheduler's own loop (``set_timesteps``, ``init_noise_sigma``,
``scale_model_input``, ``step``) on the same network and the same x_T as our solvers. The network
is reached through the ``NoisePredictor``: a diffusers timestep tau (integer, or fractional for
Euler/Heun sigmas) is the time t = (tau + 1) / N, and the predictor's eps is handed back (so
``prediction_type="epsilon"`` for every model) and every call is counted in ``model.nfe``.

Schedulers are built from the model's own betas (``trained_betas``) with ``clip_sample`` and
thresholding off, so they solve the same problem as our solvers. diffusers is optional (the
``bench`` extra) and imported here only.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..validation import positive_int

__all__ = ["PEERS", "PEER_SPACINGS", "peer_spacings", "peer_nfe", "make_scheduler", "run_peer"]

# name -> (diffusers class, config overrides); defaults otherwise (e.g. UniPC bh2 order 2, DEIS order 3)
PEERS = {
    "ddpm": ("DDPMScheduler", {"variance_type": "fixed_small", "clip_sample": False}),
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"solver_order": 2}),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
}
STOCHASTIC_PEERS = {"ddpm"}

# timestep_spacing values, plus "karras" (use_karras_sigmas, linspace timesteps) and
# "lu" (DPM-Solver's use_lu_lambdas: uniform in log-SNR)
PEER_SPACINGS = ("linspace", "leading", "trailing", "karras", "lu")


def _cls(name: str):
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; valid: {', '.join(PEERS)}")
    try:
        import diffusers
    except ImportError as e:
        raise ImportError("diffusers peers need the 'bench' extra: pip install 'sde-diffusion[bench]'") from e
    cls_name, overrides = PEERS[name]
    return getattr(diffusers, cls_name), overrides


def peer_spacings(name: str) -> tuple:
    """The spacings peer ``name`` supports (its default first)."""
    cls, _ = _cls(name)
    import inspect

    params = inspect.signature(cls.__init__).parameters
    default = params["timestep_spacing"].default if "timestep_spacing" in params else "leading"
    out = [default] + [s for s in ("linspace", "leading", "trailing") if s != default]
    if "use_karras_sigmas" in params:
        out.append("karras")
    if "use_lu_lambdas" in params:
        out.append("lu")
    return tuple(out)


def peer_nfe(name: str, steps: int) -> int:
    """Network evaluations of peer ``name`` for ``steps`` inference steps (Heun: 2K - 1)."""
    return 2 * steps - 1 if name == "heun" else steps


def make_scheduler(name: str, model, spacing: Optional[str] = None):
    """A diffusers scheduler for ``model``'s discrete chain (its betas) with ``spacing``."""
    cls, overrides = _cls(name)
    sde = model.sde
    if sde.betas is None:
        raise ValueError(f"diffusers peers need a discrete VPSDE (from_betas), got {sde!r}")
    spacing = spacing or peer_spacings(name)[0]
    if spacing not in peer_spacings(name):
        raise ValueError(f"peer {name!r} does not support spacing {spacing!r}; valid: {', '.join(peer_spacings(name))}")
    cfg = dict(num_train_timesteps=sde.num_train_steps, trained_betas=sde.betas.numpy(),
               prediction_type="epsilon", **overrides)
    if spacing == "karras":
        cfg.update(use_karras_sigmas=True, timestep_spacing="linspace")
    elif spacing == "lu":
        cfg.update(use_lu_lambdas=True, timestep_spacing="linspace")
    else:
        cfg["timestep_spacing"] = spacing
    return cls(**cfg)


def run_peer(model, name: str, steps: int, x_T: torch.Tensor, spacing: Optional[str] = None,
             generator=None) -> tuple:
    """Sample with peer ``name`` in ``steps`` inference steps from x_T; returns (samples, nfe).

    ``generator``: one torch.Generator or one per sample, for the stochastic DDPM peer."""
    positive_int("steps", steps)
    sched = make_scheduler(name, model, spacing)
    sched.set_timesteps(steps)
    N = model.sde.num_train_steps
    nfe0 = model.nfe
    x = x_T * sched.init_noise_sigma
    with torch.no_grad():
        for tau in sched.timesteps:
            inp = sched.scale_model_input(x, tau) if hasattr(sched, "scale_model_input") else x
            t = (float(tau) + 1.0) / N  # diffusers index -> our continuous time
            eps = model.eps(inp, t)
            kw = {"generator": generator} if name in STOCHASTIC_PEERS else {}
            x = sched.step(eps, tau, x, **kw).prev_sample
    if not torch.isfinite(x).all():
        raise ValueError(f"diffusers peer {name!r} ({spacing}, {steps} steps) returned NaN/inf")
    return x, model.nfe - nfe0
