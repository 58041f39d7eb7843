"""diffusers models as ``NoisePredictor``s: a UNet + its scheduler config, or a local pipeline folder.

The config keys that are read (and those refused) are listed in ``interop/diffusers_config.py``.
diffusers is optional (the ``diffusers`` extra) and imported only when a folder is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..model import NoisePredictor
from ..sde import VPSDE
from .diffusers_config import (  # noqa: F401 - BETA_SCHEDULES re-exported
    BETA_SCHEDULES,
    betas_from_diffusers_config,
    config_of,
    conditioning_of_diffusers_unet,
    net_from_diffusers_unet,
    prediction_from_diffusers_config,
)

__all__ = ["sde_from_diffusers_config", "prediction_from_diffusers_config", "predictor_from_diffusers",
           "load_diffusers_folder", "is_diffusers_folder", "BETA_SCHEDULES", "INSTALL_HINT"]

INSTALL_HINT = 'pip install "sde-diffusion[diffusers]"'
_config = config_of  # old private name


def sde_from_diffusers_config(scheduler_or_config) -> VPSDE:
    """The discrete ``VPSDE`` of a diffusers scheduler (or its config dict)."""
    return VPSDE.from_betas(betas_from_diffusers_config(scheduler_or_config))


def predictor_from_diffusers(unet, scheduler_or_config) -> NoisePredictor:
    """``NoisePredictor`` for a diffusers ``UNet2DModel`` trained with this scheduler.

    The net is called as ``unet(x, timesteps).sample`` with float timesteps n = t N - 1 (see
    ``net_from_diffusers_unet`` for variance-predicting nets)."""
    sde = sde_from_diffusers_config(scheduler_or_config)
    prediction = prediction_from_diffusers_config(scheduler_or_config)
    net, shape = net_from_diffusers_unet(unet, scheduler_or_config)
    return NoisePredictor(net, sde, prediction, sample_shape=shape,
                          conditioning=conditioning_of_diffusers_unet(unet))


def _import_diffusers():
    try:
        import diffusers
    except ImportError as e:
        raise ImportError(f"loading a diffusers checkpoint needs diffusers: {INSTALL_HINT}") from e
    return diffusers


def is_diffusers_folder(path) -> bool:
    """True for a folder written by a diffusers pipeline (``model_index.json`` or ``unet/config.json``)."""
    p = Path(path)
    return p.is_dir() and ((p / "model_index.json").is_file() or (p / "unet" / "config.json").is_file())


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
    """A ``NoisePredictor`` from a local diffusers pipeline folder (``unet/`` + ``scheduler/``), its net on
    ``device``. Never touches the network (``local_files_only=True``). Only unconditional pixel-space
    ``UNet2DModel`` pipelines (e.g. DDPMPipeline, DDIMPipeline) are supported. ``predictor.config`` is
    ``{"format": "diffusers", "model_index": ..., "scheduler": ..., "unet": ...}``.
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
    from .families import family_of_config, family_predictor  # flow matching / EDM / VE: paths.PathPredictor

    family = family_of_config(sched_cfg)
    if family is None:
        sde_from_diffusers_config(sched_cfg)  # refuse an unrepresentable config before loading weights
        prediction_from_diffusers_config(sched_cfg)
    diffusers = _import_diffusers()
    safetensors = (unet_dir / "diffusion_pytorch_model.safetensors").is_file()
    unet = diffusers.UNet2DModel.from_pretrained(unet_dir, use_safetensors=safetensors, local_files_only=True)
    unet = unet.to(device).eval()
    pred = family_predictor(unet, sched_cfg) if family else predictor_from_diffusers(unet, sched_cfg)
    pred.config = {"format": "diffusers", "model_index": index, "scheduler": dict(sched_cfg), "unet": dict(unet.config)}
    return pred
