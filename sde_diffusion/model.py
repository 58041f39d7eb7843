"""``NoisePredictor``: any network ``net(x, timesteps)`` seen through one VP-SDE.

Conversions (x_t = alpha x0 + sigma eps):
    x0 = (x - sigma eps) / alpha,     eps = (x - alpha x0) / sigma,
    score = -eps / sigma,             v = alpha eps - sigma x0   (Salimans & Ho 2022),
    x0 = alpha x - sigma v,           eps = alpha v + sigma x.
Schedule scalars are float64 and cast to x's dtype at the boundary; the net runs in its own
dtype/device. ``nfe`` counts network calls (one per batched call).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from .sde import VPSDE, _bcast

__all__ = ["NoisePredictor", "Prediction", "PREDICTIONS", "NonFiniteOutput"]

PREDICTIONS = ("epsilon", "v", "x0", "score")


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
        self.nfe = 0

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

    def raw(self, x: torch.Tensor, t) -> torch.Tensor:
        """Call the net once on (x, t) and return its raw output; counts one NFE."""
        tt = self._times(x, t)
        ts = self.net_timesteps(tt).to(device=x.device, dtype=self.timestep_dtype)
        out = self.net(x, ts)
        if hasattr(out, "sample") and not isinstance(out, torch.Tensor):  # diffusers output object
            out = out.sample
        elif isinstance(out, (tuple, list)):
            out = out[0]
        self.nfe += 1
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"net output shape {shape} does not match input shape {tuple(x.shape)}")
        if self.check_finite and not torch.isfinite(out).all():
            raise NonFiniteOutput(f"net returned NaN/inf at t in [{float(tt.min()):.6g}, {float(tt.max()):.6g}] (nfe={self.nfe})")
        return out.to(x.dtype)

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
        (or scheduler config dict); see ``sde_diffusion.byom``."""
        from .byom import predictor_from_diffusers

        return predictor_from_diffusers(unet, scheduler)
