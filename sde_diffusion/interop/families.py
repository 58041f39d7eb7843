"""diffusers schedulers of non-VP families -> ``PathPredictor`` (see ``sde_diffusion.paths``) and their grids.

    scheduler                          path                      net input              prediction
    FlowMatchEulerDiscreteScheduler    flow (a = 1 - t, s = t)   t N (diffusers' sigma*N)  velocity v = eps - x0
    EDMEulerScheduler,                 edm (a = 1, s = sigma)    c_in x, c_noise          D(x; sigma) with EDM's
    EDMDPMSolverMultistepScheduler                                                        preconditioning
    ScoreSdeVeScheduler                ve (a = 1, s = sigma)     sigma                    score

EDM preconditioning (Karras et al. 2022, Table 1; diffusers' ``precondition_*``): c_in = 1/sqrt(sigma^2 + sd^2),
c_noise = log(sigma)/4, c_skip = sd^2/(sigma^2 + sd^2), c_out = +-sigma sd/sqrt(sigma^2 + sd^2) (minus for
prediction_type "v_prediction"), D = c_skip x + c_out F(c_in x, c_noise).
Grids: ``flow_match_ts`` (= diffusers' set_timesteps with a static ``shift``), ``edm_ts`` (Karras or
exponential sigmas of the config, then 0), ``score_sde_ve_ts``; pass them as ``ts=`` to ``sample``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ..paths import PathPredictor, edm_path, flow_match_sigmas, karras_sigmas, ts_from_sigmas, ve_path, flow_path
from .diffusers_config import config_of

__all__ = ["flow_match_predictor", "flow_match_ts", "edm_predictor", "edm_ts", "score_sde_ve_predictor",
           "score_sde_ve_ts", "EDMPreconditioned", "family_of_config", "family_predictor"]


def _cfg(scheduler_or_config, expected: str) -> dict:
    cfg = dict(config_of(scheduler_or_config))
    name = cfg.get("_class_name") or (None if isinstance(scheduler_or_config, Mapping) else type(scheduler_or_config).__name__)
    if name is not None and expected not in name:
        raise ValueError(f"expected a {expected}* scheduler (or its config), got {name}")
    return cfg


# ---- flow matching --------------------------------------------------------------------------------

def flow_match_predictor(net, scheduler_or_config, **kwargs) -> PathPredictor:
    """A flow-matching net (``net(x, t N)`` -> velocity eps - x0, diffusers' convention) on the flow path."""
    cfg = _cfg(scheduler_or_config, "FlowMatchEulerDiscreteScheduler")
    for key in ("invert_sigmas",):
        if cfg.get(key):
            raise ValueError(f"FlowMatchEulerDiscreteScheduler with {key}=True is not supported; valid: {key}=False")
    N = int(cfg.get("num_train_timesteps", 1000))
    return PathPredictor(net, flow_path(), "velocity", time_input=lambda t: t * N, **kwargs)


def flow_match_ts(scheduler_or_config, steps: int) -> torch.Tensor:
    """diffusers' FlowMatchEulerDiscreteScheduler grid for ``steps`` (static ``shift``; then t = 0)."""
    cfg = _cfg(scheduler_or_config, "FlowMatchEulerDiscreteScheduler")
    if cfg.get("use_dynamic_shifting"):
        raise ValueError("use_dynamic_shifting=True needs a resolution-dependent mu; build the grid with "
                         "paths.flow_match_sigmas(steps, shift) for the shift you want")
    if any(cfg.get(k) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "shift_terminal")):
        raise ValueError("only the plain (shifted linear) FlowMatchEuler grid is reproduced; valid: use_karras_sigmas, "
                         "use_exponential_sigmas, use_beta_sigmas False and shift_terminal None")
    return flow_match_sigmas(steps, float(cfg.get("shift", 1.0)), int(cfg.get("num_train_timesteps", 1000)))


# ---- EDM ------------------------------------------------------------------------------------------

class EDMPreconditioned:
    """D(x; sigma) = c_skip x + c_out F(c_in x, log(sigma)/4) around a raw net F (EDM Table 1)."""

    def __init__(self, net, sigma_data: float = 0.5, prediction_type: str = "epsilon"):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"EDM prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
        self.net, self.sd, self.sign = net, float(sigma_data), 1.0 if prediction_type == "epsilon" else -1.0

    def __call__(self, x, sigma, **cond):
        sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        shape = (-1,) + (1,) * (x.ndim - 1)
        c_in = (1 / torch.sqrt(sig**2 + self.sd**2)).reshape(shape).to(x.dtype)
        c_skip = (self.sd**2 / (sig**2 + self.sd**2)).reshape(shape).to(x.dtype)
        c_out = (self.sign * sig * self.sd / torch.sqrt(sig**2 + self.sd**2)).reshape(shape).to(x.dtype)
        c_noise = (0.25 * torch.log(sig)).to(device=x.device, dtype=x.dtype)
        out = self.net(c_in.to(x.device) * x, c_noise, **cond)
        if hasattr(out, "sample") and not isinstance(out, torch.Tensor):
            out = out.sample
        return c_skip.to(x.device) * x + c_out.to(x.device) * out.to(x.dtype)


def edm_predictor(net, scheduler_or_config, **kwargs) -> PathPredictor:
    """A raw EDM net (diffusers' EDMEulerScheduler / EDMDPMSolverMultistepScheduler convention) on the edm path."""
    cfg = _cfg(scheduler_or_config, "EDM")
    D = EDMPreconditioned(net, cfg.get("sigma_data", 0.5), cfg.get("prediction_type", "epsilon"))
    return PathPredictor(D, edm_path(float(cfg.get("sigma_max", 80.0)), float(cfg.get("rho", 7.0))), "x0",
                         net_time_dtype=torch.float64, **kwargs)


def edm_ts(scheduler_or_config, steps: int, sde=None) -> torch.Tensor:
    """The times of the config's sigma grid (Karras or exponential, ``steps`` points, then 0 or sigma_min as
    ``final_sigmas_type`` says), on the edm path of ``edm_predictor``."""
    cfg = _cfg(scheduler_or_config, "EDM")
    smin, smax, rho = float(cfg.get("sigma_min", 0.002)), float(cfg.get("sigma_max", 80.0)), float(cfg.get("rho", 7.0))
    kind = cfg.get("sigma_schedule", "karras")
    if kind == "karras":
        sg = karras_sigmas(steps, smin, smax, rho)
    elif kind == "exponential":
        sg = torch.cat([torch.exp(torch.linspace(math.log(smax), math.log(smin), steps, dtype=torch.float64)),
                        torch.zeros(1, dtype=torch.float64)])
    else:
        raise ValueError(f"sigma_schedule must be 'karras' or 'exponential', got {kind!r}")
    if cfg.get("final_sigmas_type", "zero") == "sigma_min":
        sg = sg[:-1]  # ends at sigma_min (no step to 0)
    return ts_from_sigmas(sde if sde is not None else edm_path(smax, rho).sde(), sg)


# ---- score_sde VE ---------------------------------------------------------------------------------

def score_sde_ve_predictor(net, scheduler_or_config, **kwargs) -> PathPredictor:
    """A score_sde VE net (``net(x, sigma)`` -> score, as diffusers' ScoreSdeVePipeline calls it) on the ve path
    with sigma_max of the config (default 1348)."""
    cfg = _cfg(scheduler_or_config, "ScoreSdeVeScheduler")
    return PathPredictor(net, ve_path(float(cfg.get("sigma_max", 1348.0))), "score", **kwargs)


def score_sde_ve_ts(scheduler_or_config, steps: int) -> torch.Tensor:
    """score_sde's VE grid: sigma geometric from sigma_max to sigma_min over ``steps`` points, then 0."""
    cfg = _cfg(scheduler_or_config, "ScoreSdeVeScheduler")
    smin, smax = float(cfg.get("sigma_min", 0.01)), float(cfg.get("sigma_max", 1348.0))
    sg = torch.cat([torch.exp(torch.linspace(math.log(smax), math.log(smin), steps, dtype=torch.float64)),
                    torch.zeros(1, dtype=torch.float64)])
    return ts_from_sigmas(ve_path(smax).sde(), sg)


# ---- dispatch by the scheduler's class name (diffusers folders) ------------------------------------

_FAMILY_OF = {"FlowMatchEulerDiscreteScheduler": "flow", "EDMEulerScheduler": "edm",
              "EDMDPMSolverMultistepScheduler": "edm", "ScoreSdeVeScheduler": "ve"}


def family_of_config(scheduler_or_config):
    """"flow", "edm" or "ve" for the schedulers above (by ``_class_name`` or class), None otherwise."""
    cfg = config_of(scheduler_or_config)
    name = cfg.get("_class_name") or type(scheduler_or_config).__name__
    return _FAMILY_OF.get(name)


def family_predictor(net, scheduler_or_config, **kwargs) -> PathPredictor:
    """The ``PathPredictor`` of ``net`` for a flow-matching, EDM or score_sde VE scheduler (see the table)."""
    family = family_of_config(scheduler_or_config)
    make = {"flow": flow_match_predictor, "edm": edm_predictor, "ve": score_sde_ve_predictor}.get(family)
    if make is None:
        raise ValueError(f"not a flow-matching, EDM or score_sde VE scheduler config; valid _class_name: {', '.join(_FAMILY_OF)}")
    cfg = getattr(net, "config", None)
    if "sample_shape" not in kwargs and cfg is not None and "in_channels" in cfg and "sample_size" in cfg:
        size = cfg["sample_size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        kwargs["sample_shape"] = (cfg["in_channels"], *size)
    return make(net, scheduler_or_config, **kwargs)

