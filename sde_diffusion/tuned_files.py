"""Tuned configurations as files: the format, loading, the match to a model and the diffusers export.

A tuned configuration (made by ``sde_diffusion.tuning.tune``) is a small JSON: solver, steps, the
float64 grid ``ts``, per-step solver ``options`` (e.g. learned ``coefficients``), the weights'
sha256 and the calibration / validation / held-out errors. This module holds everything
``sample(..., spacing="tuned")`` needs, and imports nothing that imports ``sampling`` (the tuner,
which calls ``sample``, lives in ``tuning.py``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import torch

from .grids import check_grid
from .model import NoisePredictor

__all__ = ["FORMAT", "FORMAT_VERSION", "model_fingerprint", "save_tuned", "load_tuned", "shipped_tuned",
           "resolve_tuned", "load_tuned_grid", "export_diffusers"]

FORMAT = "sde_diffusion.tuned"
FORMAT_VERSION = 1


def model_fingerprint(model: NoisePredictor) -> Optional[str]:
    """sha256 of the model's weights: the checkpoint's recorded hash when loaded from a folder, else a
    hash of the net's state dict (names, dtypes, shapes, bytes); None for a net without parameters."""
    cfg = getattr(model, "config", None) or {}
    h = (cfg.get("weights") or {}).get("sha256") if isinstance(cfg, dict) else None
    if h:
        return str(h)
    net = getattr(model, "net", None)
    if not isinstance(net, torch.nn.Module):
        return None
    sd = net.state_dict()
    if not sd:
        return None
    d = hashlib.sha256()
    for k in sorted(sd):
        v = sd[k].detach().to("cpu").contiguous()
        d.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        d.update(v.numpy().tobytes() if v.dtype != torch.bfloat16 else v.float().numpy().tobytes())
    return d.hexdigest()


# ---- files --------------------------------------------------------------------------------------------

def save_tuned(result: dict, path) -> None:
    """Write one tuned configuration (``tune``'s result) as JSON, atomically."""
    from .files import atomic_write_text

    _check_config(result, str(path))
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")


def _check_config(d, where: str) -> dict:
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"{where}: not a tuned configuration (format {FORMAT!r} expected)")
    for k in ("solver", "steps", "ts", "options"):
        if k not in d:
            raise ValueError(f"{where}: tuned configuration lacks {k!r}")
    check_grid(d["ts"])
    if len(d["ts"]) != int(d["steps"]) + 1:
        raise ValueError(f"{where}: grid has {len(d['ts']) - 1} intervals but steps is {d['steps']}")
    return d


def load_tuned(source) -> list:
    """The tuned configurations in a JSON file, a dict, or a list of them (a file may hold one
    configuration or ``{"configs": [...]}``)."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        if not p.is_file():
            raise FileNotFoundError(f"tuned file not found: {p}")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from None
        where = str(p)
    else:
        d, where = source, "tuned"
    items = d if isinstance(d, list) else d.get("configs", [d]) if isinstance(d, dict) else None
    if items is None:
        raise ValueError(f"{where}: expected a tuned configuration, a list of them, or {{'configs': [...]}}")
    return [_check_config(c, where) for c in items]


def shipped_tuned(model: NoisePredictor) -> tuple:
    """(configurations, file) shipped beside a packaged model whose weights hash matches ``model``."""
    from .checkpoints import ASSETS_DIR

    fp = model_fingerprint(model)
    if fp is None:
        return [], None
    for cfg in sorted(ASSETS_DIR.glob("*/config.json")):
        try:
            sha = json.loads(cfg.read_text()).get("weights", {}).get("sha256")
        except (OSError, ValueError):
            continue
        f = cfg.parent / "tuned.json"
        if sha == fp and f.is_file():
            return load_tuned(f), f
    return [], None


def _key(c) -> str:
    g = c.get("guidance")
    return f"{c['solver']}/{c['steps']}" + (f"/guidance={float(g)!r}" if g not in (None, 1, 1.0) else "")


def resolve_tuned(model: NoisePredictor, solver: str, steps=None, tuned=None, guidance=None) -> tuple:
    """(grid, options) of the tuned configuration for (``solver``, ``steps``) on ``model``: from
    ``tuned`` (file, dict or list) or, when None, from the configurations shipped with the model.
    Refuses a configuration made for other weights, another solver or another step count."""
    if tuned is None:
        configs, where = shipped_tuned(model)
        if not configs:
            raise ValueError("spacing='tuned' needs a tuned configuration: this model ships none "
                             "(make one with `sde-diffusion tune` / tuning.tune and pass tuned=FILE)")
        where = str(where)
    else:
        configs, where = load_tuned(tuned), (str(tuned) if isinstance(tuned, (str, Path)) else "tuned")
    fp = model_fingerprint(model)
    g = None if guidance in (None, 1, 1.0) else float(guidance)
    match = [c for c in configs if c["solver"] == solver and (steps is None or int(c["steps"]) == int(steps))
             and (None if c.get("guidance") in (None, 1, 1.0) else float(c["guidance"])) == g]
    if not match:
        have = ", ".join(_key(c) for c in configs)
        want = f"{solver}/{steps if steps is not None else '*'}" + (f"/guidance={g!r}" if g is not None else "")
        raise ValueError(f"no tuned configuration {want} in {where}; available: {have}")
    c = match[0]
    sha = c.get("model_sha256")
    if sha and fp and sha != fp:
        raise ValueError(f"tuned configuration {_key(c)} in {where} was made for other weights "
                         f"(sha256 {sha[:12]}..., this model {fp[:12]}...)")
    return check_grid(c["ts"]), dict(c["options"])


def load_tuned_grid(model_name_or_dir, solver: str, steps: int) -> torch.Tensor:
    """The tuned grid for (``solver``, ``steps``) shipped in ``<model>/tuned.json`` (grid only; the
    solver options, e.g. learned coefficients, come with ``resolve_tuned``)."""
    from .checkpoints import ASSETS_DIR

    d = Path(model_name_or_dir)
    if not d.is_dir():
        d = ASSETS_DIR / str(model_name_or_dir)
    f = d / "tuned.json"
    if not f.is_file():
        raise FileNotFoundError(f"no tuned configurations for {model_name_or_dir!r} (looked for {f})")
    configs = load_tuned(f)
    for c in configs:
        if c["solver"] == solver and int(c["steps"]) == int(steps) and c.get("guidance") in (None, 1, 1.0):
            if c["options"].get("coefficients") is not None:
                raise ValueError(f"tuned {solver}/{steps} in {f} has learned per-step coefficients: the grid alone is "
                                 "not the tuned solver; use resolve_tuned (grid + options) or sample(spacing='tuned')")
            return check_grid(c["ts"])
    raise ValueError(f"no tuned grid {solver}/{steps} in {f}; available: {', '.join(_key(c) for c in configs)}")


# ---- export ----------------------------------------------------------------------------------------------

def export_diffusers(config: dict, model: Optional[NoisePredictor] = None, num_train_steps: Optional[int] = None) -> dict:
    """What diffusers' schedulers accept for this grid: ``timesteps`` (integer indices n = t N - 1 of the
    interior-and-start times, for ``set_timesteps(timesteps=...)``, rounded) and ``sigmas`` (the
    VE sigmas sigma/alpha of the same times plus the final 0, for ``set_timesteps(sigmas=...)``).
    Only the grid transfers: diffusers' schedulers do not take learned coefficients."""
    ts = check_grid(config["ts"])
    N = num_train_steps or (model.sde.num_train_steps if model is not None else None)
    if N is None:
        raise ValueError("diffusers export needs a discrete model (num_train_steps)")
    if float(ts[-1]) != 0.0:
        raise ValueError("diffusers export needs a grid that ends at t = 0")
    inner = ts[:-1]
    steps = [int(round(float(t) * N - 1)) for t in inner]
    if len(set(steps)) != len(steps) or min(steps) < 0:
        raise ValueError(f"grid {config['ts']} does not map to distinct training indices 0..{N - 1}")
    out = {"timesteps": steps}
    if model is not None:
        a, s = model.sde.alpha(inner), model.sde.sigma(inner)
        out["sigmas"] = [float(v) for v in (s / a)] + [0.0]
    if any(config.get("options", {}).get(k) is not None for k in ("coefficients", "eval_times")):
        out["note"] = ("learned coefficients/time shifts do not transfer: diffusers runs its own update rule on "
                       "this grid")
    return out
