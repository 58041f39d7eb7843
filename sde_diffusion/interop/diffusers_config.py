"""diffusers scheduler and UNet configs, read into this project's terms, without the model layer.

diffusers describes a DDPM chain by its scheduler config; we rebuild the same betas in float64
(diffusers itself stores them in float32):

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

This module imports only ``schedules``, so ``VPSDE.from_diffusers`` (sde.py) and
``NoisePredictor.from_diffusers`` (model.py) can use it without an import circle.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..schedules import check_betas, cosine_betas, linear_betas, rescale_zero_terminal_snr, scaled_linear_betas

__all__ = ["BETA_SCHEDULES", "config_of", "betas_from_diffusers_config", "prediction_from_diffusers_config",
           "net_from_diffusers_unet", "conditioning_of_diffusers_unet"]

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


def config_of(scheduler_or_config) -> Mapping:
    """The config mapping of a diffusers scheduler/model, or the mapping itself."""
    cfg = getattr(scheduler_or_config, "config", scheduler_or_config)
    if not isinstance(cfg, Mapping):
        raise ValueError(f"expected a diffusers scheduler or its config dict, got {type(scheduler_or_config).__name__}")
    return cfg


def betas_from_diffusers_config(scheduler_or_config):
    """The float64 betas of a diffusers scheduler (or its config dict); see the module docstring."""
    from ..validation import positive_int

    cfg = config_of(scheduler_or_config)
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
    n = positive_int("num_train_timesteps", cfg.get("num_train_timesteps", 1000), low=2)
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
    return betas


def prediction_from_diffusers_config(scheduler_or_config) -> str:
    """Map diffusers' ``prediction_type`` (default "epsilon") to "epsilon" | "v" | "x0"."""
    p = config_of(scheduler_or_config).get("prediction_type", "epsilon")
    if p not in _PREDICTIONS:
        raise ValueError(f"prediction_type={p!r} is not supported; valid: {', '.join(_PREDICTIONS)}")
    return _PREDICTIONS[p]


def conditioning_of_diffusers_unet(unet):
    """The ``NoisePredictor.conditioning`` declaration of a diffusers UNet, or None.

    ``UNet2DModel(num_class_embeds=C)`` takes ``class_labels`` 0..C-1 (diffusers defines no null class:
    pass ``null_cond`` for guidance, e.g. the label a DiT-style model reserves for it);
    ``UNet2DConditionModel`` takes ``encoder_hidden_states`` (pass the empty-prompt embedding as
    ``null_cond``)."""
    ucfg = config_of(unet)
    if ucfg.get("cross_attention_dim") is not None and type(unet).__name__ != "UNet2DModel":
        return {"encoder_hidden_states": {}}
    if ucfg.get("num_class_embeds") is not None:
        return {"class_labels": {"num_classes": int(ucfg["num_class_embeds"])}}
    return None


def net_from_diffusers_unet(unet, scheduler_or_config) -> tuple:
    """(net, sample_shape) for a diffusers ``UNet2DModel``: the net is called as
    ``unet(x, timesteps).sample``; a net that also predicts variances (``variance_type``
    "learned"/"learned_range", twice the output channels) is reduced to its first ``in_channels``
    outputs, the mean prediction. ``sample_shape`` is (C, H, W) from the UNet config, or None."""
    cfg = config_of(scheduler_or_config)
    ucfg = config_of(unet)
    if ucfg.get("class_embed_type") is not None:
        raise ValueError(f"class_embed_type={ucfg.get('class_embed_type')!r}: only integer class labels "
                         "(num_class_embeds) are supported as a class condition")
    c_in, c_out = ucfg.get("in_channels"), ucfg.get("out_channels", ucfg.get("in_channels"))
    net = unet
    if c_out != c_in:
        variance = cfg.get("variance_type")
        if c_out == 2 * c_in and variance in ("learned", "learned_range"):
            def net(x, timesteps, **cond):  # noqa: E306 - keep the mean half of [mean, variance] outputs
                return unet(x, timesteps, **cond).sample[:, :c_in]
        else:
            raise ValueError(f"out_channels={c_out!r} differs from in_channels={c_in!r} (variance_type={variance!r})")
    size = ucfg.get("sample_size")
    shape = None
    if c_in is not None and size is not None:
        shape = (c_in, *size) if isinstance(size, (tuple, list)) else (c_in, size, size)
    return net, shape
