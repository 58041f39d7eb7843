"""Moved to ``sde_diffusion.interop`` (``interop.diffusers`` for diffusers models and folders,
``interop.callables`` for ``module:attr``); this name is kept so old imports keep working."""

from .interop.callables import _import_target, _required_positional, default_sde, load_callable  # noqa: F401
from .interop.diffusers import (  # noqa: F401
    BETA_SCHEDULES,
    INSTALL_HINT,
    _config,
    _import_diffusers,
    _layout,
    load_diffusers_folder,
    prediction_from_diffusers_config,
    predictor_from_diffusers,
    sde_from_diffusers_config,
)
from .interop.diffusers_config import _NOT_VP, _PREDICTIONS  # noqa: F401

__all__ = ["sde_from_diffusers_config", "prediction_from_diffusers_config", "predictor_from_diffusers",
           "load_diffusers_folder", "load_callable", "default_sde", "BETA_SCHEDULES"]
