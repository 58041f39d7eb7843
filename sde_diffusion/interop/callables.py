"""Plain Python callables as ``NoisePredictor``s: ``"module:attribute"`` or ``"path/to/file.py:attribute"``.

The attribute is a ``NoisePredictor``, a net ``net(x, timesteps)``, or a no-argument factory returning one.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from pathlib import Path
from typing import Optional

from ..model import NoisePredictor
from ..schedules import linear_betas
from ..sde import VPSDE

__all__ = ["load_callable", "default_sde", "is_callable_spec"]


def is_callable_spec(spec) -> bool:
    """True for ``"module:attr"`` / ``"file.py:attr"`` (not a Windows drive like ``C:\\x`` or an existing path)."""
    return (isinstance(spec, str) and ":" in spec and not Path(spec).exists()
            and not (len(spec) > 1 and spec[1] == ":"))


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
