"""Model checkpoints: safetensors weights + a JSON config, never pickle.

A model folder holds ``model.safetensors`` and ``config.json``::

    {"format": "sde_diffusion.model", "format_version": 1,
     "architecture": {"class": "UNet", "config": {...UNet(**config)...}},
     "schedule": {"kind": "linear", "num_train_steps": 1000, "beta_start": 1e-4, "beta_end": 0.02},
     "prediction": "epsilon",
     "data": {"shape": [C, H, W], "range": [-1, 1], "scaling": "...", "dataset": "..."},
     "training": {"steps": ..., "ema": true, ...},
     "weights": {"file": "model.safetensors", "sha256": "..."}}

``load_model(name_or_path)`` turns such a folder (or a shipped name such as ``"digits"``) into a
ready ``NoisePredictor`` with ``sample_shape``. A diffusers pipeline folder (``model_index.json``
or ``unet/config.json``) is handed to ``sde_diffusion.byom.load_diffusers_folder``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from .model import NoisePredictor
from .schedules import cosine_betas, linear_betas, scaled_linear_betas
from .sde import VPSDE

__all__ = [
    "save_checkpoint", "load_model", "load_config", "shipped_models", "build_net", "schedule_betas",
    "atomic_write_bytes", "save_safetensors_atomic", "load_safetensors", "ASSETS_DIR",
    "WEIGHTS_NAME", "CONFIG_NAME",
]

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "sde_diffusion.model"
FORMAT_VERSION = 1


# file helpers live in sde_diffusion.files; re-exported here so old imports keep working
from .files import atomic_write_bytes, load_safetensors, save_safetensors_atomic  # noqa: E402,F401
from .files import sha256_file as _sha256  # noqa: E402,F401


# ---- config pieces -----------------------------------------------------------------------
def schedule_betas(schedule: dict) -> torch.Tensor:
    """Betas from a config's ``schedule`` entry (kind linear / scaled_linear / cosine)."""
    try:
        kind = schedule["kind"]
        n = int(schedule["num_train_steps"])
        if kind == "linear":
            return linear_betas(n, schedule.get("beta_start", 1e-4), schedule.get("beta_end", 0.02))
        if kind == "scaled_linear":
            return scaled_linear_betas(n, schedule.get("beta_start", 0.00085), schedule.get("beta_end", 0.012))
        if kind == "cosine":
            return cosine_betas(n, schedule.get("s", 0.008), schedule.get("max_beta", 0.999))
    except (KeyError, TypeError) as e:
        raise ValueError(f"bad schedule entry {schedule!r}: {e}") from None
    raise ValueError(f"unknown schedule kind {kind!r}; valid: linear, scaled_linear, cosine")


def build_net(architecture: dict) -> torch.nn.Module:
    """An untrained network from a config's ``architecture`` entry."""
    cls = architecture.get("class") if isinstance(architecture, dict) else None
    if cls != "UNet":
        raise ValueError(f"unknown architecture class {cls!r}; valid: UNet")
    from .nets.unet import UNet

    try:
        return UNet(**architecture["config"])
    except TypeError as e:
        raise ValueError(f"bad UNet config {architecture.get('config')!r}: {e}") from None


def shipped_models() -> list:
    """Names of the models shipped in ``sde_diffusion/assets`` (loadable by ``load_model(name)``)."""
    names = []
    if ASSETS_DIR.is_dir():
        for d in sorted(ASSETS_DIR.iterdir()):
            c = d / CONFIG_NAME
            if c.is_file():
                try:
                    if json.loads(c.read_text()).get("format") == FORMAT:
                        names.append(d.name)
                except (OSError, ValueError):
                    continue
    return names


# ---- save / load -------------------------------------------------------------------------
def save_checkpoint(
    folder,
    net: torch.nn.Module,
    *,
    schedule: Optional[dict] = None,
    prediction: str = "epsilon",
    data: Optional[dict] = None,
    training: Optional[dict] = None,
    conditioning: Optional[dict] = None,
) -> Path:
    """Write ``net`` (a UNet) as ``folder/model.safetensors`` + ``folder/config.json``.

    ``schedule`` defaults to the DDPM linear chain (1000 steps, 1e-4..0.02; Ho et al. 2020).
    ``data`` must contain ``shape`` [C, H, W]. Both files are written atomically; the config records
    the weights' sha256, so a mismatched or corrupted pair is detected on load."""
    folder = Path(folder)
    if not hasattr(net, "config"):
        raise ValueError("net must have a `config` dict (UNet(**config)) to be saved")
    schedule = dict(schedule or {"kind": "linear", "num_train_steps": 1000, "beta_start": 1e-4, "beta_end": 0.02})
    schedule_betas(schedule)  # validate
    data = dict(data or {})
    if "shape" not in data:
        cfg = net.config
        data["shape"] = [cfg["in_channels"], cfg["image_size"], cfg["image_size"]]
    data.setdefault("range", [-1.0, 1.0])
    wpath = folder / WEIGHTS_NAME
    save_safetensors_atomic(dict(net.state_dict()), wpath, metadata={"format": FORMAT})
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": {"class": type(net).__name__, "config": net.config},
        "schedule": schedule,
        "prediction": prediction,
        "data": data,
        "training": dict(training or {}),
        **({"conditioning": conditioning} if conditioning else {}),
        "weights": {"file": WEIGHTS_NAME, "sha256": _sha256(wpath)},
    }
    atomic_write_bytes(folder / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    return folder


def _resolve(name_or_path) -> Path:
    s = os.fspath(name_or_path)
    shipped = shipped_models()
    if isinstance(name_or_path, str) and s in shipped:  # a bare shipped name wins; use "./digits" for a local folder
        return ASSETS_DIR / s
    p = Path(s)
    if p.exists():
        return p
    listing = ", ".join(shipped) if shipped else "(none)"
    if os.sep in s or "/" in s or p.suffix:
        raise FileNotFoundError(f"model path not found: {s!r}; shipped models: {listing}")
    raise ValueError(f"unknown model {s!r}; shipped models: {listing} (or pass a folder with {CONFIG_NAME} + {WEIGHTS_NAME})")


def load_config(folder) -> dict:
    """Read and validate ``folder/config.json``."""
    c = Path(folder) / CONFIG_NAME
    if not c.is_file():
        raise FileNotFoundError(f"model config not found: {c}")
    try:
        cfg = json.loads(c.read_text())
    except ValueError as e:
        raise ValueError(f"{c}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ValueError(f"{c}: not an sde_diffusion model config (format {cfg.get('format') if isinstance(cfg, dict) else None!r})")
    for key in ("architecture", "schedule", "prediction", "data"):
        if key not in cfg:
            raise ValueError(f"{c}: missing {key!r}")
    if "shape" not in cfg["data"] or len(cfg["data"]["shape"]) != 3:
        raise ValueError(f"{c}: data.shape must be [C, H, W], got {cfg['data'].get('shape')!r}")
    return cfg


def load_model(name_or_path, device="cpu") -> NoisePredictor:
    """A ready ``NoisePredictor`` (eval mode, ``sample_shape`` set, net on ``device``) from a shipped name
    (``"digits"``; a bare shipped name wins over a same-named local folder, write ``"./digits"``
    for that), a model folder, its ``model.safetensors`` or its ``config.json``.

    A diffusers pipeline folder goes to ``sde_diffusion.interop.diffusers.load_diffusers_folder``.
    ``predictor.config`` is the model's config dict. (``sde_diffusion.resolve.resolve_model`` also
    takes ``module:attr`` and ``"gmm"``.)"""
    p = _resolve(name_or_path)
    from .interop import diffusers as _diffusers  # the module only; diffusers itself loads on use

    if _diffusers.is_diffusers_folder(p):
        return _diffusers.load_diffusers_folder(p, device=device)
    folder = p if p.is_dir() else p.parent
    cfg = load_config(folder)
    wname = cfg.get("weights", {}).get("file", WEIGHTS_NAME)
    wpath = folder / wname
    if not wpath.is_file():
        raise FileNotFoundError(f"model weights not found: {wpath}")
    expected = cfg.get("weights", {}).get("sha256")
    if expected and _sha256(wpath) != expected:
        raise ValueError(f"{wpath}: sha256 does not match {folder / CONFIG_NAME} (truncated, corrupted or from another model)")
    state, _ = load_safetensors(wpath, device="cpu")
    net = build_net(cfg["architecture"])
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{wpath}: weights do not match the architecture in {CONFIG_NAME}: {str(e).splitlines()[0]}") from None
    net.to(device).eval().requires_grad_(False)
    sde = VPSDE.from_betas(schedule_betas(cfg["schedule"]))
    return NoisePredictor(net, sde, cfg["prediction"], sample_shape=tuple(int(v) for v in cfg["data"]["shape"]),
                          conditioning=cfg.get("conditioning"), config=cfg)
