"""Bring your own model: diffusers checkpoints and plain Python callables as ``NoisePredictor``s.

diffusers describes a DDPM chain by its scheduler config; we rebuild the same betas in float64
(diffusers itself stores them in float32) and recast the chain as one ``VPSDE``:

    key                      meaning here
    num_train_timesteps      N (default 1000)
    beta_schedule            "linear" | "scaled_linear" | "squaredcos_cap_v2" (default "linear")
    beta_start, beta_end     range of the linear schedules (defaults 1e-4, 0.02)
    trained_betas            explicit betas (override beta_schedule)
    rescale_betas_zero_snr   rescale to zero terminal SNR (Lin et al. 2023, Alg. 1)
    prediction_type          "epsilon" | "v_prediction" | "sample" -> "epsilon" | "v" | "x0"

Sampling-time keys (timestep_spacing, steps_offset, clip_sample, thresholding, set_alpha_to_one,
solver_order, variance_type, ...) describe a sampler, not the process, and are not read here:
pick the grid and solver in ``sample()``. Variance-exploding and flow-matching schedulers
(ScoreSdeVe, KarrasVe, EDM*, FlowMatch*, consistency models) are refused.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from .model import NoisePredictor
from .schedules import check_betas, cosine_betas, linear_betas, rescale_zero_terminal_snr, scaled_linear_betas
from .sde import VPSDE

__all__ = [
    "sde_from_diffusers_config",
    "prediction_from_diffusers_config",
    "predictor_from_diffusers",
    "load_diffusers_folder",
    "load_callable",
    "default_sde",
    "BETA_SCHEDULES",
]

INSTALL_HINT = 'pip install "sde-diffusion[diffusers]"'

# diffusers' beta_schedule name -> betas(N, beta_start, beta_end); the defaults are diffusers'
BETA_SCHEDULES: dict = {
    "linear": lambda n, b0, b1: linear_betas(n, b0, b1),
    "scaled_linear": lambda n, b0, b1: scaled_linear_betas(n, b0, b1),
    "squaredcos_cap_v2": lambda n, b0, b1: cosine_betas(n, s=0.008, max_beta=0.999),
}

_PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v", "sample": "x0"}

# schedulers whose process is not a variance-preserving DDPM chain
_NOT_VP = {
    "ScoreSdeVeScheduler": "variance-exploding SDE",
    "KarrasVeScheduler": "variance-exploding (Karras et al.)",
    "EDMEulerScheduler": "EDM sigma parameterisation (variance exploding)",
    "EDMDPMSolverMultistepScheduler": "EDM sigma parameterisation (variance exploding)",
    "CosineDPMSolverMultistepScheduler": "EDM-style sigma schedule (variance exploding)",
    "CMStochasticIterativeScheduler": "consistency model on an EDM (variance-exploding) schedule",
}


def _config(scheduler_or_config) -> Mapping:
    """The config mapping of a diffusers scheduler, or the mapping itself."""
    cfg = getattr(scheduler_or_config, "config", scheduler_or_config)
    if not isinstance(cfg, Mapping):
        raise ValueError(f"expected a diffusers scheduler or its config dict, got {type(scheduler_or_config).__name__}")
    return cfg


def sde_from_diffusers_config(scheduler_or_config) -> VPSDE:
    """The discrete ``VPSDE`` of a diffusers scheduler (or its config dict); see the module docstring."""
    cfg = _config(scheduler_or_config)
    cls = cfg.get("_class_name")
    if cls is None and hasattr(scheduler_or_config, "config"):
        cls = type(scheduler_or_config).__name__  # a scheduler object's config has no _class_name
    if cls in _NOT_VP:
        raise ValueError(f"_class_name={cls!r}: {_NOT_VP[cls]} is not representable as a VP-SDE")
    if isinstance(cls, str) and cls.startswith("FlowMatch"):
        raise ValueError(f"_class_name={cls!r}: flow matching (rectified flow) is not representable as a VP-SDE")
    if "beta_schedule" not in cfg and "trained_betas" not in cfg:
        for key in ("sigma_max", "sigma_min", "shift"):
            if key in cfg:
                raise ValueError(f"{key}={cfg[key]!r}: a scheduler without betas (variance exploding or flow "
                                 "matching) is not representable as a VP-SDE")
    n = cfg.get("num_train_timesteps", 1000)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"num_train_timesteps must be an integer >= 2, got {n!r}")
    trained = cfg.get("trained_betas")
    if trained is not None:
        try:
            betas = check_betas(trained)
        except ValueError as e:
            raise ValueError(f"trained_betas: {e}") from None
        if betas.numel() != n:
            raise ValueError(f"trained_betas has {betas.numel()} entries but num_train_timesteps={n}")
    else:
        name = cfg.get("beta_schedule", "linear")
        if name not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule={name!r} is not supported; valid: {', '.join(BETA_SCHEDULES)}")
        b0, b1 = cfg.get("beta_start", 0.0001), cfg.get("beta_end", 0.02)
        for key, b in (("beta_start", b0), ("beta_end", b1)):
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b < 1:
                raise ValueError(f"{key}={b!r} must be a number in (0, 1)")
        betas = BETA_SCHEDULES[name](n, float(b0), float(b1))
    rescale = cfg.get("rescale_betas_zero_snr", False)
    if rescale not in (True, False):
        raise ValueError(f"rescale_betas_zero_snr={rescale!r} must be true or false")
    if rescale:
        betas = rescale_zero_terminal_snr(betas)
    return VPSDE.from_betas(betas)


def prediction_from_diffusers_config(scheduler_or_config) -> str:
    """Map diffusers' ``prediction_type`` (default "epsilon") to "epsilon" | "v" | "x0"."""
    p = _config(scheduler_or_config).get("prediction_type", "epsilon")
    if p not in _PREDICTIONS:
        raise ValueError(f"prediction_type={p!r} is not supported; valid: {', '.join(_PREDICTIONS)}")
    return _PREDICTIONS[p]


def predictor_from_diffusers(unet, scheduler_or_config) -> NoisePredictor:
    """``NoisePredictor`` for a diffusers ``UNet2DModel`` trained with this scheduler.

    The net is called as ``unet(x, timesteps).sample`` with float timesteps n = t N - 1. A net
    that also predicts variances (``variance_type`` "learned"/"learned_range", twice the output
    channels) is reduced to its first ``in_channels`` outputs, the mean prediction.
    """
    cfg = _config(scheduler_or_config)
    sde = sde_from_diffusers_config(scheduler_or_config)
    prediction = prediction_from_diffusers_config(cfg)
    ucfg = _config(unet)
    if ucfg.get("num_class_embeds") is not None or ucfg.get("class_embed_type") is not None:
        raise ValueError(f"num_class_embeds={ucfg.get('num_class_embeds')!r}: class-conditional UNets are not supported")
    c_in, c_out = ucfg.get("in_channels"), ucfg.get("out_channels", ucfg.get("in_channels"))
    net = unet
    if c_out != c_in:
        variance = cfg.get("variance_type")
        if c_out == 2 * c_in and variance in ("learned", "learned_range"):
            def net(x, timesteps):  # noqa: E306 - keep the mean half of [mean, variance] outputs
                return unet(x, timesteps).sample[:, :c_in]
        else:
            raise ValueError(f"out_channels={c_out!r} differs from in_channels={c_in!r} (variance_type={variance!r})")
    size = ucfg.get("sample_size")
    shape = None
    if c_in is not None and size is not None:
        shape = (c_in, *size) if isinstance(size, (tuple, list)) else (c_in, size, size)
    return NoisePredictor(net, sde, prediction, sample_shape=shape)


def _import_diffusers():
    try:
        import diffusers
    except ImportError as e:
        raise ImportError(f"loading a diffusers checkpoint needs diffusers: {INSTALL_HINT}") from e
    return diffusers


def _layout(root: Path) -> tuple:
    """(unet folder, scheduler config file): ``unet/`` + ``scheduler/`` as ``save_pretrained`` writes
    them, or the flat layout of early hub repos (e.g. google/ddpm-cifar10-32): ``config.json`` and
    ``scheduler_config.json`` next to ``model_index.json``."""
    for unet_dir, sched in ((root / "unet", root / "scheduler" / "scheduler_config.json"),
                            (root, root / "scheduler_config.json")):
        if (unet_dir / "config.json").is_file() and sched.is_file():
            return unet_dir, sched
    raise FileNotFoundError(f"{str(root)!r} must contain unet/config.json and scheduler/scheduler_config.json "
                            "(a folder written by a diffusers pipeline's save_pretrained)")


def load_diffusers_folder(path, device="cpu") -> NoisePredictor:
    """A ``NoisePredictor`` from a local diffusers pipeline folder (``unet/`` + ``scheduler/``).

    Never touches the network (``local_files_only=True``). Only unconditional pixel-space
    ``UNet2DModel`` pipelines (e.g. DDPMPipeline, DDIMPipeline) are supported.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"model folder {str(root)!r} does not exist")
    index_file = root / "model_index.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    for key in ("vqvae", "vae", "text_encoder"):
        if key in index:
            raise ValueError(f"model_index.json has {key}={index[key]!r}: latent or text-conditioned pipelines are "
                             "not supported (only an unconditional pixel-space UNet2DModel)")
    unet_cls = (index.get("unet") or [None, "UNet2DModel"])[-1]
    if unet_cls != "UNet2DModel":
        raise ValueError(f"model_index.json has unet={index['unet']!r}; only UNet2DModel is supported")
    unet_dir, sched_file = _layout(root)
    sched_cfg = json.loads(sched_file.read_text())
    sde_from_diffusers_config(sched_cfg)  # refuse an unrepresentable config before loading weights
    prediction_from_diffusers_config(sched_cfg)
    diffusers = _import_diffusers()
    safetensors = (unet_dir / "diffusion_pytorch_model.safetensors").is_file()
    unet = diffusers.UNet2DModel.from_pretrained(unet_dir, use_safetensors=safetensors, local_files_only=True)
    unet = unet.to(device).eval()
    return predictor_from_diffusers(unet, sched_cfg)


def default_sde() -> VPSDE:
    """The schedule assumed for a bare net: DDPM's linear betas 1e-4..0.02, N = 1000."""
    return VPSDE.from_betas(linear_betas(1000))


def _import_target(spec: str):
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"model spec {spec!r} must look like 'module:attribute' or 'path/to/file.py:attribute'")
    mod_name, attr = spec.split(":")
    if mod_name.endswith(".py"):
        file = Path(mod_name)
        if not file.is_file():
            raise FileNotFoundError(f"model file {mod_name!r} does not exist")
        mspec = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(module)
    else:
        module = importlib.import_module(mod_name)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model spec {spec!r}: {type(obj).__name__} {getattr(obj, '__name__', '')!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


def _required_positional(fn) -> Optional[int]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    return sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def load_callable(spec: str, *, sde: Optional[VPSDE] = None, prediction: str = "epsilon",
                  sample_shape: Optional[tuple] = None) -> NoisePredictor:
    """A ``NoisePredictor`` from ``"module:attribute"`` (or ``"file.py:attribute"``).

    The attribute is either
      * a ``NoisePredictor``, used as is;
      * a net ``net(x, timesteps) -> output shaped like x`` (an ``nn.Module`` instance or any
        callable with two required arguments): wrapped with ``sde`` (default: linear betas,
        N = 1000), ``prediction`` and ``sample_shape`` (default: the net's ``sample_shape``
        attribute, if any);
      * a factory taking no arguments (a function or a class) that returns one of the above.
    ``sde``/``prediction``/``sample_shape`` only apply to a bare net; a ``NoisePredictor`` carries its own.
    """
    import torch

    obj = _import_target(spec)
    if not isinstance(obj, (NoisePredictor, torch.nn.Module)) and callable(obj) and _required_positional(obj) == 0:
        obj = obj()  # a factory
    if isinstance(obj, NoisePredictor):
        given = [k for k, v in (("sde", sde), ("sample_shape", sample_shape)) if v is not None]
        if prediction != "epsilon":
            given.append("prediction")
        if given:
            raise ValueError(f"model spec {spec!r} gives a NoisePredictor with its own schedule; drop {', '.join(given)}")
        return obj
    if isinstance(obj, torch.nn.Module) or (callable(obj) and _required_positional(obj) in (2, None)):
        if isinstance(obj, torch.nn.Module):
            obj.eval()
        if sample_shape is None:
            sample_shape = getattr(obj, "sample_shape", None)
        return NoisePredictor(obj, sde if sde is not None else default_sde(), prediction, sample_shape=sample_shape)
    raise ValueError(f"model spec {spec!r} is a {type(obj).__name__}; expected a NoisePredictor, a net(x, timesteps) "
                     "or a no-argument factory returning one")
