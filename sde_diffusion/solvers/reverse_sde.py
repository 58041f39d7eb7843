"""Stochastic solvers of the reverse-time VP-SDE (Song et al. 2021, "Score-Based Generative
Modeling through SDEs").

Reverse SDE (Song et al. 2021, eq. 6 with the VP drift of eq. 11), integrated from t = 1 down to 0:
    dx = [-1/2 beta(t) x - beta(t) score(x, t)] dt + sqrt(beta(t)) dw,   score = -eps / sigma.
Over a grid interval s > t we write B = int_t^s beta = 2 (log alpha_t - log alpha_s); Euler-Maruyama
uses B where the textbook uses beta(s) |dt| (the same to first order; for a discrete chain it is
exactly -log of the product of the skipped (1 - beta_n)).
"""

from __future__ import annotations

import math

import torch

from ..validation import finite_float, positive_int
from .spec import solver

__all__ = ["euler_maruyama", "pc", "langevin_step_size"]


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B,) tensor as (B, 1, ..., 1) to broadcast against x."""
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def _check_positive_alpha(sde, t0: float, name: str) -> None:
    """The reverse SDE's drift has beta(t) = -2 d log alpha/dt, infinite where alpha = 0: refuse such a start."""
    if float(sde.alpha(torch.tensor(float(t0), dtype=torch.float64))) == 0.0:
        raise ValueError(f"solver {name!r} integrates the reverse SDE, whose drift beta(t) is infinite where alpha(t) = 0, "
                         f"as at t = {t0:g} for this model (flow matching / zero terminal SNR): start the grid below "
                         f"that time (e.g. ts[0] = 0.999) or use a solver that starts there (ancestral, "
                         f"dpmpp_2m_sde, euler_ancestral, dpmpp_sde, dpmpp_3m_sde)")


@solver(order=None, nfe="K", default_spacing="uniform", stochastic=True, adaptive=False, peers=(), weak_order=1)
def euler_maruyama(model, x, ts, *, noise, callback=None):
    """Euler-Maruyama on the reverse-time VP-SDE (Song et al. 2021, eq. 6; Kloeden & Platen 1992).

    Step s -> t (t < s), B = int_t^s beta:
        x_t = x_s + (B/2) x_s + B score(x_s, s) + sqrt(B) z,   z = noise.interval(s, t).
    A final interval to t = 0 is a denoising step x_0 = x0_hat(x_s, s). This approximates, and does not
    equal, score_sde's ``denoise=True`` (a full last step, then one more evaluation). NFE = len(ts) - 1.
    """
    sde = model.sde
    _check_positive_alpha(sde, float(ts[0]), "euler_maruyama")
    for i in range(len(ts) - 1):
        s, t = float(ts[i]), float(ts[i + 1])
        eps, x0 = model.predict(x, s)
        if t == 0.0:
            x = x0  # denoise: never evaluate the net at t = 0
        else:
            B = 2.0 * (sde.log_alpha(t) - sde.log_alpha(s))  # int_t^s beta(u) du, float64
            score = -eps / sde.sigma(s)
            x = x + (0.5 * B) * x + B * score + math.sqrt(B) * noise.interval(s, t)
        if callback is not None:
            callback(dict(i=i, t=t, x=x, x0=x0))
    return x


def langevin_step_size(sde, t: float) -> float:
    """score_sde's alpha_i for the VP corrector: 1 - beta_n of the chain's step ending at t,
    alpha_i = alpha(t)^2 / alpha(t - 1/N)^2 (N = num_train_steps, or 1000 for a continuous SDE,
    as score_sde discretises its continuous VP-SDE; Song et al. 2021, Alg. 5)."""
    N = sde.num_train_steps or 1000
    return math.exp(2.0 * (sde.log_alpha(t) - sde.log_alpha(max(t - 1.0 / N, 0.0))))


def _langevin(model, x, t: float, *, noise, snr: float, alpha_i: float):
    """One Langevin corrector step at time t (Song et al. 2021, Alg. 5 / Alg. 3 inner loop):
    step = 2 alpha_i (snr ||z|| / ||score||)^2 with norms per sample (so a sample's step does not
    depend on its batch-mates; score_sde averages them over the batch), then
    x <- x + step score + sqrt(2 step) z. Returns (x, x0_hat) from the one net call."""
    eps, x0 = model.predict(x, t)
    score = -eps / model.sde.sigma(t)
    z = noise.fresh()
    flat = lambda v: v.reshape(v.shape[0], -1).to(torch.float64)  # noqa: E731
    grad_norm = torch.linalg.vector_norm(flat(score), dim=1)
    noise_norm = torch.linalg.vector_norm(flat(z), dim=1)
    step = 2.0 * alpha_i * (snr * noise_norm / grad_norm.clamp(min=1e-30)) ** 2  # (B,) float64
    step = _per_sample(step, x).to(x.dtype)
    return x + step * score + torch.sqrt(2.0 * step) * z, x0


@solver(order=None, nfe="2*K - z", default_spacing="uniform", stochastic=True, adaptive=False, peers=())
def pc(model, x, ts, *, noise, callback=None, predictor: str = "euler_maruyama", snr: float = 0.16,
       n_corrector: int = 1, predictor_options=None):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 2 (VE) / Alg. 3 (VP)).

    Each interval s -> t: one step of ``predictor`` (any non-adaptive solver in ``SOLVERS``, e.g.
    "euler_maruyama" (default), "ancestral" (= score_sde's AncestralSamplingPredictor only with
    ``predictor_options={"variance": "large"}``), "ddim" with ``predictor_options={"eta": 1.0}``; a multistep solver degrades to its
    first step), then ``n_corrector`` Langevin steps at t with signal-to-noise ratio ``snr``
    (0.16: score_sde's CIFAR-10 VP setting). No corrector at t = 0 (the data end is a denoising step).
    NFE = (predictor NFE on the grid) + n_corrector * (number of grid times t > 0 after ts[0]),
    i.e. 2K - 1 for K steps ending at 0 with the default predictor and n_corrector = 1.
    """
    from .spec import REGISTRY

    valid = sorted(n for n, s in REGISTRY.items() if n != "pc" and not s.adaptive)
    if predictor not in valid:
        raise ValueError(f"unknown predictor {predictor!r}; valid: {', '.join(valid)}")
    finite_float("snr", snr, 0, strict=True)
    positive_int("n_corrector", n_corrector, low=0)
    step_fn, popts = REGISTRY[predictor].fn, dict(predictor_options or {})
    sde = model.sde
    _check_positive_alpha(sde, float(ts[0]), "pc")
    for i in range(len(ts) - 1):
        t = float(ts[i + 1])
        seen = {}
        out = step_fn(model, x, ts[i:i + 2], noise=noise, callback=seen.update, **popts)
        x = out[0] if isinstance(out, tuple) else out
        x0 = seen.get("x0")
        if t > 0:
            alpha_i = langevin_step_size(sde, t)
            for _ in range(n_corrector):
                x, x0 = _langevin(model, x, t, noise=noise, snr=snr, alpha_i=alpha_i)
        if callback is not None:
            callback(dict(i=i, t=t, x=x, x0=x0))
    return x
