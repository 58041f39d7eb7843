"""Gaussian path families mapped exactly onto the VP description.

Any Gaussian diffusion path  x = a(t) x0 + s(t) eps  (a, s > 0 inside (0, 1)) has log-SNR
lambda(t) = log(a/s) and scale c(t) = sqrt(a^2 + s^2). Dividing the state by the scale,
    x_VP = x / c = alpha x0 + sigma eps,   alpha = a/c,  sigma = s/c,  alpha^2 + sigma^2 = 1,
gives the variance-preserving path with the same log-SNR, and its probability-flow ODE is the family's
probability-flow ODE in these coordinates (Kingma et al. 2021, VDM, Sec. 3 and App. of "Understanding
diffusion objectives"; Karras et al. 2022, EDM, eq. 4 and App. B.1: the ODE depends on the path only
through sigma(t)/s(t) = s/a and the scale). So one VP toolkit drives every family:

    family        a(t)                    s(t)            lambda(t)                    t in [0, 1]
    vp            alpha(t)                sigma(t)        log(alpha/sigma)             the VPSDE's own time
    ve / edm      1                       sigma(t)        -log sigma                   sigma = sigma_max t^rho
    sub-vp        alpha(t)                1 - alpha^2     log(alpha/(1 - alpha^2))     Song et al. 2021, eq. 29
    flow          1 - t                   t               log((1 - t)/t)               rectified flow (Liu et al.
                                                                                       2023; Lipman et al. 2023)

The network keeps its own state and inputs: ``PathPredictor`` (a ``NoisePredictor`` over the family's
``PathSDE``) multiplies the VP state by c(t) before the call, gives the net its own time input (flow time,
EDM sigma, ...), and converts its prediction to the VP velocity v = alpha eps - sigma x0 (Salimans & Ho 2022),
from which every solver reads eps and x0 exactly. Solvers never see the family.

Prediction types (with x = a x0 + s eps in the family's own state):
    "epsilon"   eps;   "x0" (alias "denoiser": EDM's D(x; sigma))  x0;   "score"  grad_x log p = -eps/s;
    "velocity"  dx/dt = a' x0 + s' eps  (flow matching: v = eps - x0 for a = 1 - t, s = t);
    "v"         the VP velocity (vp family only).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from .model import NoisePredictor, net_output
from .sde import VPSDE, _bcast

__all__ = ["GaussianPath", "PathSDE", "PathPredictor", "vp_path", "ve_path", "edm_path", "subvp_path", "flow_path",
           "ts_from_sigmas", "flow_match_sigmas", "karras_sigmas", "FAMILIES"]

_F64 = torch.float64
FAMILIES = ("vp", "ve", "edm", "sub-vp", "flow", "custom")


def _t64(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=_F64).detach().cpu()


class GaussianPath:
    """x = a(t) x0 + s(t) eps on t in [0, 1], data at t = 0, described by float64 functions of t.

    ``a``, ``s`` (tensor -> tensor) are required; ``log_snr``, ``t_from_log_snr``, ``dlog_snr`` (d lambda/dt),
    ``da``, ``ds`` may be given in closed form (otherwise: log(a/s), bisection, central differences).
    ``predictions``: the prediction types a net on this path may have. ``time_input``: what the net receives
    for times t (default: t). Checked on construction: a, s > 0 and lambda strictly decreasing on (0, 1).
    """

    def __init__(self, name: str, a: Callable, s: Callable, *, log_snr: Optional[Callable] = None,
                 t_from_log_snr: Optional[Callable] = None, dlog_snr: Optional[Callable] = None,
                 da: Optional[Callable] = None, ds: Optional[Callable] = None,
                 predictions: Sequence[str] = ("epsilon", "x0", "score", "velocity"),
                 time_input: Optional[Callable] = None, check: bool = True):
        self.name = name
        self._a, self._s = a, s
        self._lam, self._inv, self._dlam, self._da, self._ds = log_snr, t_from_log_snr, dlog_snr, da, ds
        self.predictions = tuple(predictions)
        self.time_input = time_input if time_input is not None else (lambda t: t)
        if check:
            self._check()

    def __repr__(self) -> str:
        return f"GaussianPath({self.name!r})"

    def _check(self) -> None:
        t = torch.linspace(0, 1, 2001, dtype=_F64)[1:-1]
        a, s = self.a(t), self.s(t)
        bad = ~(torch.isfinite(a) & torch.isfinite(s) & (a > 0) & (s > 0))
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"path {self.name!r}: a(t) and s(t) must be finite and > 0 inside (0, 1); at t={float(t[i]):.4g} "
                             f"a={float(a[i])!r}, s={float(s[i])!r}")
        lam = self.log_snr(t)
        if not (lam[1:] < lam[:-1]).all():
            i = int((lam[1:] >= lam[:-1]).nonzero()[0])
            raise ValueError(f"path {self.name!r}: log-SNR log(a/s) must decrease strictly in t (noise grows), but "
                             f"lambda({float(t[i]):.4g})={float(lam[i]):.6g} <= lambda({float(t[i + 1]):.4g})={float(lam[i + 1]):.6g}")

    # ---- the path in its own terms --------------------------------------------------------
    def a(self, t) -> torch.Tensor:
        return torch.as_tensor(self._a(_t64(t)), dtype=_F64)

    def s(self, t) -> torch.Tensor:
        return torch.as_tensor(self._s(_t64(t)), dtype=_F64)

    def scale(self, t) -> torch.Tensor:
        """c(t) = sqrt(a^2 + s^2): x = c x_VP."""
        return torch.hypot(self.a(t), self.s(t))

    def log_snr(self, t) -> torch.Tensor:
        tt = _t64(t)
        if self._lam is not None:
            return torch.as_tensor(self._lam(tt), dtype=_F64)
        return torch.log(self.a(tt)) - torch.log(self.s(tt))

    def dlog_snr(self, t) -> torch.Tensor:
        """d lambda / dt (closed form, or a central difference of step 1e-6 clipped to [0, 1])."""
        tt = _t64(t)
        if self._dlam is not None:
            return torch.as_tensor(self._dlam(tt), dtype=_F64)
        h = 1e-6
        lo, hi = (tt - h).clamp(min=h / 2), (tt + h).clamp(max=1 - h / 2)
        return (self.log_snr(hi) - self.log_snr(lo)) / (hi - lo)

    def da(self, t) -> torch.Tensor:
        return self._deriv(self._da, self.a, t)

    def ds(self, t) -> torch.Tensor:
        return self._deriv(self._ds, self.s, t)

    @staticmethod
    def _deriv(exact, f, t):
        tt = _t64(t)
        if exact is not None:
            return torch.as_tensor(exact(tt), dtype=_F64)
        h = 1e-6
        lo, hi = (tt - h).clamp(min=0.0), (tt + h).clamp(max=1.0)
        return (f(hi) - f(lo)) / (hi - lo)

    def t_from_log_snr(self, lam) -> torch.Tensor:
        """Inverse of ``log_snr`` (closed form, or 200 bisection steps in float64)."""
        ll = _t64(lam)
        if self._inv is not None:
            return torch.as_tensor(self._inv(ll), dtype=_F64).clamp(0, 1)
        lo, hi = torch.zeros_like(ll), torch.ones_like(ll)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid.clamp(1e-300, 1.0)) > ll  # lambda decreasing: the root lies to the right
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def sde(self) -> VPSDE:
        """The VP description of this path (a ``PathSDE``)."""
        return PathSDE(self)


class PathSDE(VPSDE):
    """The VP-SDE with a path's log-SNR: alpha^2 = sigmoid(2 lambda), sigma^2 = sigmoid(-2 lambda),
    beta(t) = -2 d log alpha/dt = -2 lambda'(t) sigmoid(-2 lambda). ``kind == "path"``; continuous."""

    def __init__(self, path: GaussianPath):  # noqa: D107 - the VPSDE constructors do not apply
        self.kind = "path"
        self.path = path
        self.num_train_steps = None
        self.betas = self.alphas_cumprod = None
        self.zero_terminal_snr = bool(path.a(1.0) == 0)

    def __repr__(self) -> str:
        return f"PathSDE({self.path.name!r})"

    def log_snr(self, t):
        tt, sc = _as(t)
        self._check_t(tt)
        lam = self.path.log_snr(tt)
        lam = torch.where(tt == 0, torch.full_like(lam, math.inf), lam)
        return float(lam) if sc else lam

    def log_alpha(self, t):
        """log alpha = -1/2 log(1 + e^{-2 lambda})."""
        tt, sc = _as(t)
        lam = torch.as_tensor(self.log_snr(tt))
        la = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2 * lam)
        return float(la) if sc else la

    def sigma(self, t):
        """sigma = sqrt(sigmoid(-2 lambda)), computed from lambda (no cancellation near t = 0)."""
        tt, sc = _as(t)
        lam = torch.as_tensor(self.log_snr(tt))
        sg = torch.exp(-0.5 * torch.logaddexp(torch.zeros_like(lam), 2 * lam))
        return float(sg) if sc else sg

    def t_from_log_snr(self, lam):
        ll, sc = _as(lam)
        if torch.isnan(ll).any():
            raise ValueError("log-SNR contains NaN")
        t = torch.where(torch.isposinf(ll), torch.zeros_like(ll), self.path.t_from_log_snr(ll.clamp(max=1e300)))
        t = torch.where(torch.isneginf(ll), torch.ones_like(ll), t)
        return float(t) if sc else t

    def beta(self, t):
        tt, sc = _as(t)
        self._check_t(tt)
        lam = torch.as_tensor(self.log_snr(tt))
        b = -2 * self.path.dlog_snr(tt.clamp(min=1e-300)) * torch.sigmoid(-2 * lam)
        return float(b) if sc else b


def _as(t):
    if isinstance(t, torch.Tensor):
        return t.detach().to(device="cpu", dtype=_F64), False
    return torch.as_tensor(t, dtype=_F64), True


# ---- the families --------------------------------------------------------------------------------

def vp_path(sde: VPSDE) -> GaussianPath:
    """The VP path of an existing ``VPSDE`` (a = alpha, s = sigma, scale 1); ``PathPredictor`` uses the
    VPSDE itself for it."""
    p = GaussianPath("vp", lambda t: torch.as_tensor(sde.alpha(t)), lambda t: torch.as_tensor(sde.sigma(t)),
                     log_snr=lambda t: torch.as_tensor(sde.log_snr(t)), t_from_log_snr=lambda l: torch.as_tensor(sde.t_from_log_snr(l)),
                     predictions=("epsilon", "x0", "score", "v"), check=False)
    p.vpsde = sde
    return p


def ve_path(sigma_max: float = 80.0, rho: float = 7.0, name: str = "ve") -> GaussianPath:
    """Variance exploding (Song et al. 2021, eq. 9; EDM with s(t) = 1): a = 1, s = sigma, sigma = sigma_max t^rho.
    rho only fixes the time variable (a uniform grid in t is EDM's Karras grid with sigma_min = 0); the net
    receives sigma. sigma_max must be >= the largest noise level you sample from."""
    if not (isinstance(sigma_max, (int, float)) and math.isfinite(sigma_max) and sigma_max > 0):
        raise ValueError(f"sigma_max must be a finite number > 0, got {sigma_max!r}")
    if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
    lsm = math.log(sigma_max)
    return GaussianPath(
        name, lambda t: torch.ones_like(t), lambda t: sigma_max * t**rho,
        log_snr=lambda t: -lsm - rho * torch.log(t), t_from_log_snr=lambda l: torch.exp(-(l + lsm) / rho),
        dlog_snr=lambda t: -rho / t, da=lambda t: torch.zeros_like(t), ds=lambda t: sigma_max * rho * t ** (rho - 1),
        predictions=("epsilon", "x0", "score"), time_input=lambda t: sigma_max * t**rho)


def edm_path(sigma_max: float = 80.0, rho: float = 7.0) -> GaussianPath:
    """EDM's sigma parameterisation (Karras et al. 2022): the ve path; nets are denoisers D(x; sigma) ("x0")."""
    return ve_path(sigma_max, rho, name="edm")


def subvp_path(beta_min: float = 0.1, beta_max: float = 20.0) -> GaussianPath:
    """sub-VP (Song et al. 2021, eq. 29): a = alpha(t) of the linear VP-SDE, s = 1 - alpha^2."""
    if not (0 < beta_min < beta_max and math.isfinite(beta_max)):
        raise ValueError(f"need 0 < beta_min < beta_max < inf, got beta_min={beta_min}, beta_max={beta_max}")
    b0, b1 = float(beta_min), float(beta_max)

    def la(t):  # log alpha
        return -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0

    def s(t):
        return -torch.expm1(2 * la(t))

    def lam(t):
        return la(t) - torch.log(-torch.expm1(2 * la(t)))

    def inv(lam_):
        # alpha/(1 - alpha^2) = e^lambda  =>  e^lambda alpha^2 + alpha - e^lambda = 0, alpha = 2 e^l/(1 + sqrt(1 + 4 e^{2l}))
        el = torch.exp(lam_.clamp(max=300))
        alpha = 2 * el / (1 + torch.sqrt(1 + 4 * el**2))
        L = -torch.log(alpha)
        return 2 * L / (b0 / 2 + torch.sqrt(b0**2 / 4 + (b1 - b0) * L))

    def dlam(t):
        dla = -0.5 * (b0 + (b1 - b0) * t)
        a2 = torch.exp(2 * la(t))
        return dla * (1 + a2) / (1 - a2)

    return GaussianPath("sub-vp", lambda t: torch.exp(la(t)), s, log_snr=lam, t_from_log_snr=inv, dlog_snr=dlam,
                        predictions=("epsilon", "x0", "score"))


def flow_path() -> GaussianPath:
    """Rectified flow / flow matching (Liu et al. 2023; Lipman et al. 2023; Stable Diffusion 3, Flux):
    a = 1 - t, s = t, velocity v = dx/dt = eps - x0. alpha = 0 at t = 1 (zero terminal SNR)."""
    return GaussianPath(
        "flow", lambda t: 1 - t, lambda t: t, log_snr=lambda t: torch.log1p(-t) - torch.log(t),
        t_from_log_snr=lambda l: torch.sigmoid(-l), dlog_snr=lambda t: -1 / (1 - t) - 1 / t,
        da=lambda t: -torch.ones_like(t), ds=lambda t: torch.ones_like(t),
        predictions=("velocity", "epsilon", "x0", "score"))


# ---- the predictor -------------------------------------------------------------------------------

class _PathNet:
    """net(x_path, time_input(t), **cond) -> its prediction, returned as the VP velocity alpha eps - sigma x0."""

    def __init__(self, net, path: GaussianPath, prediction: str, time_input: Callable, net_time_dtype):
        self.net, self.path, self.prediction = net, path, prediction
        self.time_input, self.net_time_dtype = time_input, net_time_dtype

    def __call__(self, x, t, **cond):
        t64 = _t64(t)
        a, s = self.path.a(t64), self.path.s(t64)
        c = torch.hypot(a, s)
        x_p = x * _bcast(c, x)  # the family's own state
        tin = torch.as_tensor(self.time_input(t64)).to(device=x.device, dtype=self.net_time_dtype)
        out = net_output(self.net(x_p, tin, **cond), x).to(x.dtype)
        A, S = _bcast(a, x), _bcast(s, x)
        p = self.prediction
        if p == "epsilon":
            eps, x0 = out, (x_p - S * out) / A
        elif p == "x0":
            eps, x0 = (x_p - A * out) / S, out
        elif p == "score":
            eps = -S * out
            x0 = (x_p - S * eps) / A
        elif p == "velocity":  # v = a' x0 + s' eps and x = a x0 + s eps: solve the 2 x 2 system
            dA, dS = _bcast(self.path.da(t64), x), _bcast(self.path.ds(t64), x)
            det = A * dS - S * dA
            x0, eps = (dS * x_p - S * out) / det, (A * out - dA * x_p) / det
        else:  # "v" on the vp family: already the VP velocity
            return out
        C = _bcast(c, x)
        return (A / C) * eps - (S / C) * x0


class PathPredictor(NoisePredictor):
    """A ``NoisePredictor`` for a net trained on any Gaussian path (see the module docstring).

    ``net(x, time_input(t), **cond)`` sees the family's own state x = c(t) x_VP and time input (``time_input``
    default: the path's, e.g. sigma for ve/edm, t for flow; cast to ``net_time_dtype``) and predicts
    ``prediction`` (one of ``path.predictions``). Solvers see a VP model over ``path.sde()``; samples at t = 0
    are data in every family (c(0) = 1). ``to_path_state`` / ``from_path_state`` convert states at other times.
    """

    def __init__(self, net, path: GaussianPath, prediction: str, *, time_input: Optional[Callable] = None,
                 net_time_dtype: torch.dtype = torch.float32, **kwargs):
        if not isinstance(path, GaussianPath):
            raise ValueError(f"path must be a GaussianPath (vp_path, ve_path, edm_path, subvp_path, flow_path), got {type(path).__name__}")
        prediction = {"denoiser": "x0", "eps": "epsilon", "sample": "x0", "v_prediction": "v"}.get(prediction, prediction)
        if prediction not in path.predictions:
            raise ValueError(f"prediction {prediction!r} is not a prediction type of the {path.name} family; "
                             f"valid: {', '.join(path.predictions)}")
        if not callable(net):
            raise ValueError(f"net must be callable as net(x, t), got {type(net).__name__}")
        self.path = path
        sde = getattr(path, "vpsde", None) or path.sde()
        adapter = _PathNet(net, path, prediction, time_input or path.time_input, net_time_dtype)
        super().__init__(adapter, sde, "v", time_input=lambda t: t, timestep_dtype=_F64, **kwargs)
        self.path_prediction = prediction

    def __repr__(self) -> str:
        return f"PathPredictor({type(self.net.net).__name__}, {self.path.name}, prediction={self.path_prediction!r})"

    def state_scale(self, t) -> float:
        """c(t): the family's state is c(t) times the VP state."""
        return float(self.path.scale(float(t)))

    def to_path_state(self, x: torch.Tensor, t) -> torch.Tensor:
        return x * self.state_scale(t)

    def from_path_state(self, x: torch.Tensor, t) -> torch.Tensor:
        return x / self.state_scale(t)


# ---- grids given as noise levels -----------------------------------------------------------------

def ts_from_sigmas(sde: VPSDE, sigmas) -> torch.Tensor:
    """The time grid of a descending noise-level grid in k-diffusion's convention, sigma = s/a = exp(-lambda)
    (EDM/VE: the sigma itself; VP: sqrt((1 - alphas_cumprod)/alphas_cumprod)); a final 0 maps to t = 0."""
    sg = torch.as_tensor(sigmas, dtype=_F64).detach().cpu()
    if sg.ndim != 1 or sg.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D grid of at least 2 noise levels, got shape {tuple(sg.shape)}")
    if not torch.isfinite(sg).all() or (sg < 0).any():
        raise ValueError(f"sigmas must be finite and >= 0, got min {float(sg.min())!r}, max {float(sg.max())!r}")
    if not (sg[1:] < sg[:-1]).all():
        i = int((sg[1:] >= sg[:-1]).nonzero()[0])
        raise ValueError(f"sigmas must decrease strictly (from noise to data), but sigmas[{i}]={float(sg[i])!r} <= "
                         f"sigmas[{i + 1}]={float(sg[i + 1])!r}")
    top = sde.sigma_ve(1.0) if sde.alpha(1.0) > 0 else math.inf
    if float(sg[0]) > top * (1 + 1e-12):
        raise ValueError(f"sigmas[0]={float(sg[0])!r} exceeds the largest noise level of {sde!r} (sigma={top:.6g} at t=1)")
    lam = torch.where(sg > 0, -torch.log(sg.clamp(min=1e-300)), torch.full_like(sg, math.inf))
    ts = torch.as_tensor(sde.t_from_log_snr(lam), dtype=_F64).clamp(0, 1)
    if not (ts[1:] < ts[:-1]).all():
        raise ValueError("sigmas are too close together to give distinct times (float64)")
    return ts


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """EDM eq. 5: sigma_i = (smax^(1/rho) + i/(K-1) (smin^(1/rho) - smax^(1/rho)))^rho, i < K, then 0 (float64)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    if not (0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")
    u = torch.linspace(0, 1, steps, dtype=_F64)
    sg = (sigma_max ** (1 / rho) + u * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sg, torch.zeros(1, dtype=_F64)])


def flow_match_sigmas(steps: int, shift: float = 1.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """diffusers' FlowMatchEulerDiscreteScheduler.set_timesteps grid (static shift), in float64: flow times
    linspace(1, shift(1/N), K) mapped through shift(u) = shift u / (1 + (shift - 1) u), then 0. For the flow
    path these are the times t themselves (pass them as ``ts=``)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
    N = int(num_train_timesteps)

    def sh(u):
        return shift * u / (1 + (shift - 1) * u)

    lo = sh(torch.tensor(1.0 / N, dtype=_F64))
    u = torch.linspace(1.0, float(lo), steps, dtype=_F64)
    return torch.cat([sh(u), torch.zeros(1, dtype=_F64)])
