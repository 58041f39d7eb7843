"""``NoisePredictor``: any network ``net(x, timesteps, **cond)`` seen through one VP-SDE.

Conversions (x_t = alpha x0 + sigma eps):
    x0 = (x - sigma eps) / alpha,     eps = (x - alpha x0) / sigma,
    score = -eps / sigma,             v = alpha eps - sigma x0   (Salimans & Ho 2022),
    x0 = alpha x - sigma v,           eps = alpha v + sigma x.
Schedule scalars are float64 and cast to x's dtype at the boundary; the net runs in its own
dtype/device. ``nfe`` counts network evaluations (one per batched call; a guided evaluation, one
doubled batch, counts once); ``net_rows`` counts the rows the network actually processed.
Conditioning and classifier-free guidance: see ``guidance.py`` and ``NoisePredictor.conditioned``.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, NamedTuple, Optional, Tuple

import torch

from .guidance import Guidance, guided_output, make_guidance
from .sde import VPSDE, _bcast

__all__ = ["NoisePredictor", "Prediction", "PREDICTIONS", "NonFiniteOutput"]

PREDICTIONS = ("epsilon", "v", "x0", "score")


def net_output(out, x: torch.Tensor) -> torch.Tensor:
    """The tensor a net returned (a diffusers output object's ``.sample``, a tuple's first entry),
    checked to have x's shape."""
    if hasattr(out, "sample") and not isinstance(out, torch.Tensor):  # diffusers output object
        out = out.sample
    elif isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"net output shape {shape} does not match input shape {tuple(x.shape)}")
    return out


class NonFiniteOutput(FloatingPointError):
    """The network returned NaN or inf."""


class Prediction(NamedTuple):
    eps: torch.Tensor
    x0: torch.Tensor


class NoisePredictor:
    """Wrap ``net(x, timesteps)`` predicting ``prediction`` ("epsilon", "v", "x0" or "score").

    What the net receives: for a discrete SDE a float tensor (B,) of timestep indices
    n = t N - 1 (fractional between grid points), as diffusers' ``UNet2DModel`` expects; for a
    continuous SDE the time t in [0, 1]. ``time_input(t)`` overrides this (e.g. ``lambda t: 999 * t``
    for score_sde's DDPM++ checkpoints); timesteps are cast to ``timestep_dtype`` (float32, as
    diffusers passes them; float64 for analytic nets). ``check_finite`` raises on NaN/inf outputs.
    """

    def __init__(
        self,
        net: Callable,
        sde: VPSDE,
        prediction: str = "epsilon",
        *,
        time_input: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        check_finite: bool = True,
        sample_shape: Optional[tuple] = None,
        timestep_dtype: torch.dtype = torch.float32,
        conditioning: Optional[Mapping] = None,
        net_dtype: Optional[torch.dtype] = None,
        config: Optional[dict] = None,
    ):
        if not callable(net):
            raise ValueError(f"net must be callable as net(x, timesteps), got {type(net).__name__}")
        if not isinstance(sde, VPSDE):
            raise ValueError(f"sde must be a VPSDE, got {type(sde).__name__}")
        aliases = {"eps": "epsilon", "v_prediction": "v", "sample": "x0"}
        prediction = aliases.get(prediction, prediction)
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")
        if sde.zero_terminal_snr and prediction in ("epsilon", "score") and sde.kind == "discrete":
            raise ValueError(
                "a zero-terminal-SNR schedule cannot be used with epsilon/score prediction: at alpha = 0 "
                "x0 = (x - sigma eps)/alpha is undefined; use a v- or x0-prediction network (Lin et al. 2023)"
            )
        self.net, self.sde, self.prediction = net, sde, prediction
        self.time_input = time_input
        self.check_finite = check_finite
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None
        self.timestep_dtype = timestep_dtype
        if conditioning is not None and not isinstance(conditioning, Mapping):
            raise ValueError(f"conditioning must be a dict naming the net's keyword inputs, got {type(conditioning).__name__}")
        self.conditioning = dict(conditioning) if conditioning else None
        if net_dtype is not None and not (isinstance(net_dtype, torch.dtype) and net_dtype.is_floating_point):
            raise ValueError(f"net_dtype must be a floating torch.dtype (e.g. torch.bfloat16), got {net_dtype!r}")
        self.net_dtype = net_dtype
        self.config = config
        self.nfe = 0
        self.net_rows = 0
        self._guidance: Optional[Guidance] = None

    def reset_nfe(self) -> int:
        """Set ``nfe`` to 0 and return the previous count."""
        n, self.nfe = self.nfe, 0
        return n

    def __repr__(self) -> str:
        return f"NoisePredictor({type(self.net).__name__}, {self.sde!r}, prediction={self.prediction!r})"

    # ---- the net boundary ---------------------------------------------------------------
    def _times(self, x: torch.Tensor, t) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=torch.float64).detach().cpu()
        if tt.ndim == 0:
            tt = tt.expand(x.shape[0])
        if tt.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(tt.shape)}")
        return tt

    def net_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """What the net receives for times t (float64 (B,)), before the cast to float32."""
        if self.time_input is not None:
            return torch.as_tensor(self.time_input(t))
        if self.sde.num_train_steps is not None:
            return self.sde.timestep_of(t)
        return t

    @contextmanager
    def conditioned(self, cond: Optional[Mapping] = None, *, guidance: Optional[float] = None,
                    guidance_rescale: float = 0.0, guidance_interval: Optional[Tuple[float, float]] = None,
                    null_cond: Optional[Mapping] = None, batch: Optional[int] = None,
                    device=None) -> Iterator["NoisePredictor"]:
        """Within the block every network call of every solver is conditioned on ``cond`` (and
        guided with scale ``guidance``); see ``guidance.py`` for the formulas. Arguments are checked
        against ``self.conditioning`` on entry, before any network call. ``batch`` (default: the
        batch of the ``cond`` tensors) is the batch size the calls will have."""
        if batch is None:
            batch = next((int(torch.as_tensor(v).shape[0]) for v in (cond or {}).values()
                          if torch.as_tensor(v).ndim > 0), 1)
        g = make_guidance(self.conditioning, batch, device, cond, guidance, guidance_rescale,
                          guidance_interval, null_cond)
        previous, self._guidance = self._guidance, g
        try:
            yield self
        finally:
            self._guidance = previous

    @contextmanager
    def rows(self, index) -> Iterator["NoisePredictor"]:
        """Within the block the active conditioning is restricted to rows ``index`` (a slice or
        index tensor) of the batch: for solvers that split the batch (per-sample adaptive solves)."""
        g = self._guidance
        if g is None:
            yield self
            return
        pick = (lambda v: v[index]) if isinstance(index, slice) else (lambda v: v[torch.as_tensor(index, device=v.device)])
        sub = dataclasses.replace(g, cond={k: pick(v) for k, v in g.cond.items()},
                                  null=None if g.null is None else {k: pick(v) for k, v in g.null.items()})
        self._guidance = sub
        try:
            yield self
        finally:
            self._guidance = g

    def weights(self) -> tuple:
        """(device, dtype) of the net's first floating-point parameter or buffer; (None, None) for a net
        without any (a plain function, an analytic model)."""
        if isinstance(self.net, torch.nn.Module):
            for t in (*self.net.parameters(), *self.net.buffers()):
                if t.is_floating_point():
                    return t.device, t.dtype
        return None, None

    def check_input(self, x: torch.Tensor) -> None:
        """One-line errors for a state the net cannot take: on another device than the weights."""
        device, _ = self.weights()
        if device is not None and device != x.device:
            raise ValueError(f"x_T is on {x.device} but the model's weights are on {device}: move one of them "
                             f"(x_T.to('{device}') or model.net.to('{x.device}'))")

    def _call_net(self, x: torch.Tensor, ts: torch.Tensor, cond: Mapping) -> torch.Tensor:
        # the net runs in net_dtype if given, else in its weights' dtype (a float64 solve of a float32 net)
        dtype = self.net_dtype or self.weights()[1]
        xin = x.to(dtype) if dtype is not None else x
        if self.net_dtype in (torch.bfloat16, torch.float16):  # autocast: float32 parts of the net (timestep
            with torch.autocast(x.device.type, dtype=self.net_dtype):  # embeddings, norms) meet half inputs
                out = self.net(xin, ts, **cond)
        else:
            out = self.net(xin, ts, **cond)
        out = net_output(out, x)
        if not out.is_floating_point():
            raise ValueError(f"net returned {out.dtype} values; a noise/data prediction must be floating point")
        return out.to(x.dtype)

    def raw(self, x: torch.Tensor, t) -> torch.Tensor:
        """Call the net once on (x, t) and return its raw output (guided inside ``conditioned``);
        counts one NFE."""
        tt = self._times(x, t)
        ts = self.net_timesteps(tt).to(device=x.device, dtype=self.timestep_dtype)
        g = self._guidance
        if g is None:
            out, rows = self._call_net(x, ts, {}), x.shape[0]
        else:
            for k, v in g.cond.items():
                if v.shape[0] != x.shape[0]:
                    raise ValueError(f"cond[{k!r}] has batch {v.shape[0]} but the solver called the net on a batch of {x.shape[0]}")
            out, rows = guided_output(self._call_net, x, ts, tt, g)
        self.nfe += 1
        self.net_rows += rows
        if self.check_finite and not torch.isfinite(out).all():
            raise NonFiniteOutput(f"net returned NaN/inf at t in [{float(tt.min()):.6g}, {float(tt.max()):.6g}] (nfe={self.nfe})")
        return out

    # ---- conversions --------------------------------------------------------------------
    def coefficients(self, x: torch.Tensor, t):
        tt = self._times(x, t)
        return _bcast(self.sde.alpha(tt), x), _bcast(self.sde.sigma(tt), x)

    def predict(self, x: torch.Tensor, t) -> Prediction:
        """(eps, x0) from one net call."""
        out = self.raw(x, t)
        a, s = self.coefficients(x, t)
        if self.prediction == "epsilon":
            return Prediction(out, (x - s * out) / a)
        if self.prediction == "score":
            eps = -s * out
            return Prediction(eps, (x - s * eps) / a)
        if self.prediction == "x0":
            return Prediction((x - a * out) / s, out)
        # v-prediction
        return Prediction(a * out + s * x, a * x - s * out)

    def eps(self, x, t) -> torch.Tensor:
        """Noise prediction eps(x, t)."""
        return self.predict(x, t).eps

    def x0(self, x, t) -> torch.Tensor:
        """Data prediction x0(x, t) = (x - sigma eps)/alpha."""
        return self.predict(x, t).x0

    def score(self, x, t) -> torch.Tensor:
        """Score grad log p_t(x) = -eps/sigma."""
        a, s = self.coefficients(x, t)
        return -self.eps(x, t) / s

    def v(self, x, t) -> torch.Tensor:
        """Velocity v = alpha eps - sigma x0."""
        a, s = self.coefficients(x, t)
        p = self.predict(x, t)
        return a * p.eps - s * p.x0

    def __call__(self, x, t) -> torch.Tensor:
        return self.eps(x, t)

    @classmethod
    def from_diffusers(cls, unet, scheduler) -> "NoisePredictor":
        """Wrap a diffusers ``UNet2DModel`` with the VP-SDE and prediction type of its scheduler
        (or scheduler config dict); see ``sde_diffusion.interop.diffusers_config`` (imports only
        ``schedules``: no import circle)."""
        from .interop.diffusers_config import (betas_from_diffusers_config, conditioning_of_diffusers_unet,
                                               net_from_diffusers_unet, prediction_from_diffusers_config)

        net, shape = net_from_diffusers_unet(unet, scheduler)
        return cls(net, VPSDE.from_betas(betas_from_diffusers_config(scheduler)),
                   prediction_from_diffusers_config(scheduler), sample_shape=shape,
                   conditioning=conditioning_of_diffusers_unet(unet))
