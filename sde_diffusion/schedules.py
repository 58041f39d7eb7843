"""Discrete variance schedules (betas), always float64 1-D tensors.

Notation: ``betas[n]`` is the variance added at step n of the DDPM chain,
``alphas_cumprod[n] = prod_{m<=n} (1 - betas[m])`` (Ho et al. 2020, eq. 4).
We never call ``1 - beta`` "alpha": ``alpha`` is reserved for the signal scale
``sqrt(alphas_cumprod)`` of the VP-SDE (see ``docs/conventions.md``).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "linear_betas",
    "scaled_linear_betas",
    "cosine_betas",
    "rescale_zero_terminal_snr",
    "alphas_cumprod_of",
    "check_betas",
]


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of steps must be an integer >= 1, got {n!r}")
    return n


def _check_range(beta_start: float, beta_end: float) -> None:
    for name, b in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not (isinstance(b, (int, float)) and 0.0 < float(b) < 1.0):
            raise ValueError(f"{name} must be a number in (0, 1), got {b!r}")


def check_betas(betas, *, allow_one_at_end: bool = False) -> torch.Tensor:
    """Return ``betas`` as a float64 1-D tensor or raise ``ValueError``.

    Valid betas are finite and in (0, 1). ``allow_one_at_end`` admits a final
    beta of exactly 1 (zero terminal SNR, Lin et al. 2023).
    """
    b = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
    if b.ndim != 1 or b.numel() < 1:
        raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(b.shape)}")
    if torch.isnan(b).any():
        raise ValueError(f"betas contain NaN at indices {torch.nonzero(torch.isnan(b)).flatten().tolist()[:5]}")
    body = b[:-1] if allow_one_at_end else b
    bad = ~((body > 0) & (body < 1))
    if allow_one_at_end and not (0 < b[-1] <= 1):
        bad = torch.cat([bad, torch.tensor([True])])
    if bad.any():
        i = int(torch.nonzero(bad).flatten()[0])
        raise ValueError(f"betas must lie in (0, 1); betas[{i}] = {float(b[i])!r}")
    return b


def linear_betas(n: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linearly spaced betas (Ho et al. 2020; the DDPM default 1e-4..0.02 at n = 1000)."""
    _check_n(n)
    _check_range(beta_start, beta_end)
    return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)


def scaled_linear_betas(n: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """Betas linear in sqrt(beta) (latent diffusion / Stable Diffusion's "scaled_linear")."""
    _check_n(n)
    _check_range(beta_start, beta_end)
    return torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), n, dtype=torch.float64) ** 2


def cosine_betas(n: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule, Nichol & Dhariwal 2021 eq. 17: alphas_cumprod(t) = f(t)/f(0),
    f(t) = cos^2((t/n + s)/(1 + s) * pi/2), betas clipped at ``max_beta``."""
    _check_n(n)
    if not (s >= 0 and math.isfinite(s)):
        raise ValueError(f"s must be a finite number >= 0, got {s!r}")
    if not (0 < max_beta < 1):
        raise ValueError(f"max_beta must be in (0, 1), got {max_beta!r}")
    steps = torch.arange(n + 1, dtype=torch.float64) / n
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - f[1:] / f[:-1]
    return betas.clamp(min=torch.finfo(torch.float64).tiny, max=max_beta)


def alphas_cumprod_of(betas) -> torch.Tensor:
    """``prod(1 - betas)`` in float64 (computed as exp(cumsum(log1p(-betas))) for accuracy)."""
    b = torch.as_tensor(betas, dtype=torch.float64)
    return torch.exp(torch.cumsum(torch.log1p(-b), 0))


def rescale_zero_terminal_snr(betas) -> torch.Tensor:
    """Rescale betas so the last step has zero SNR (Lin et al. 2023, Algorithm 1).

    sqrt(alphas_cumprod) is shifted so its last value is 0 and scaled so its first
    value is unchanged; the last returned beta is exactly 1. Only v- or
    x0-prediction networks can be sampled from such a schedule.
    """
    b = check_betas(betas)
    if b.numel() < 2:
        raise ValueError("rescale_zero_terminal_snr needs at least 2 betas")
    a = alphas_cumprod_of(b).sqrt()
    a0, aT = a[0].clone(), a[-1].clone()
    a = (a - aT) * a0 / (a0 - aT)
    ac = a**2
    ratio = torch.cat([ac[:1], ac[1:] / ac[:-1]])
    out = 1 - ratio
    out[-1] = 1.0
    return out
