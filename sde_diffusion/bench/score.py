"""Scoring one sample set: metric rows (metric, value, ci_low, ci_high). Pure: no solver, no files.

Intervals are 95% bootstrap intervals over samples from ``scipy.stats.bootstrap``; ``n_boot = 0``
gives none (NaN). Per-sample means (rmse_ref, logp, class accuracy) get Efron's BCa interval (or the
percentile one). Set statistics (FD, KID, sliced W2, mode coverage) are biased upward on a resample,
whose duplicated points shrink its spread: for 128-d classifier features at n = 128 nearly every
bootstrap value lies above the estimate, BCa's bias correction then degenerates and its interval can
exclude the estimate. Their interval is the percentile interval of the bootstrap distribution
recentred on the estimate (shifted so its median is the estimate). Coverage of both is measured by
simulation on an exact Gaussian case in ``benchmarks/ci_coverage.py`` (docs/benchmarks.md).

Memory: KID is summed over blocks of rows (the n x n kernel matrix is never formed), classifier
features are computed in batches, so n in the tens of thousands fits in a few hundred MB.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import numpy as np
import torch

from .. import metrics as M
from .models import BenchModel, mixture_moments

__all__ = ["score", "bootstrap_interval", "kid_blocked", "CI_METHODS", "HIGHER_IS_BETTER"]

CI_METHODS = ("BCa", "percentile")
HIGHER_IS_BETTER = {"logp", "coverage", "class_acc", "class_acc_confident"}
_BLOCK = 2048


def bootstrap_interval(stat: Callable[[np.ndarray], float], n: int, n_boot: int, seed: int = 0,
                       method: str = "BCa", level: float = 0.95, recenter: bool = False) -> tuple:
    """(low, high) of ``stat(idx)`` (idx: indices into the n samples) by ``scipy.stats.bootstrap``.
    ``recenter``: percentile interval of the bootstrap distribution shifted so that its median is
    the estimate (for set statistics; ``method`` is then not used). ``n_boot = 0``: (nan, nan).
    A statistic that is constant over resamples gets (value, value)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        raise ValueError(f"n_boot must be an integer >= 0 (0 = no intervals), got {n_boot!r}")
    if method not in CI_METHODS:
        raise ValueError(f"unknown interval method {method!r}; valid: {', '.join(CI_METHODS)}")
    if n_boot == 0 or n < 2:
        return math.nan, math.nan
    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate distributions are handled below
        res = bootstrap((np.arange(n),), lambda i: stat(np.asarray(i, dtype=np.int64)), n_resamples=n_boot,
                        vectorized=False, method="percentile" if recenter else method, confidence_level=level,
                        rng=np.random.default_rng(seed))
    if recenter:
        d = np.asarray(res.bootstrap_distribution, dtype=np.float64)
        d = d + (float(stat(np.arange(n))) - float(np.median(d)))
        q = (1 - level) / 2
        return float(np.quantile(d, q)), float(np.quantile(d, 1 - q))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        v = float(stat(np.arange(n)))
        d = np.asarray(res.bootstrap_distribution, dtype=np.float64)
        if d.size and np.all(d == d.flat[0]):
            return v, v
        q = (1 - level) / 2  # BCa undefined (e.g. a constant jackknife): fall back to percentiles
        return float(np.quantile(d, q)), float(np.quantile(d, 1 - q))
    return lo, hi


def kid_blocked(f1: np.ndarray, f2: np.ndarray, block: int = _BLOCK) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y/d + 1)^3 (Binkowski et al. 2018, eq. 3), summed over
    row blocks: equal to ``metrics.kid`` without forming an n x n matrix."""
    x, y = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    d, m, n = x.shape[1], x.shape[0], y.shape[0]

    def ksum(a, b, same):
        tot = 0.0
        for i in range(0, a.shape[0], block):
            k = (a[i:i + block] @ b.T / d + 1.0) ** 3
            tot += k.sum()
            if same:
                j = np.arange(i, min(i + block, a.shape[0]))
                tot -= k[j - i, j].sum()
        return tot

    return float(ksum(x, x, True) / (m * (m - 1)) + ksum(y, y, True) / (n * (n - 1)) - 2 * ksum(x, y, False) / (m * n))


def _classifier():
    from ..classifier import load_classifier

    return load_classifier()


def score(bm: BenchModel, x: torch.Tensor, ref: Optional[torch.Tensor], n_boot: int, seed: int,
          labels: Optional[torch.Tensor] = None, method: str = "BCa") -> list:
    """Metric rows (metric, value, ci_low, ci_high) of samples x (n, ...)."""
    rows = []
    n = x.shape[0]
    x = x.detach().cpu()

    def add(name, fn, recenter=False):
        v = float(fn(np.arange(n)))
        lo, hi = bootstrap_interval(fn, n, n_boot, seed, method, recenter=recenter)
        rows.append((name, v, lo, hi))

    if ref is not None:
        se = ((x.double() - ref.detach().cpu().double()) ** 2).reshape(n, -1).mean(1).numpy()
        add("rmse_ref", lambda i: math.sqrt(se[i].mean()))
    flat = x.reshape(n, -1).double().numpy()
    real = bm.real.reshape(bm.real.shape[0], -1).double().cpu().numpy() if bm.real is not None else None
    if bm.mixture is not None:
        gm = bm.mixture
        lp = gm.log_prob(x.double()).numpy()
        add("logp", lambda i: lp[i].mean())
        mu_r, cov_r = mixture_moments(gm)
        add("fd", lambda i: M.frechet_distance(*M.gaussian_stats(flat[i]), mu_r, cov_r), True)
        add("coverage", lambda i: M.mode_stats(gm, x[torch.as_tensor(i)])["coverage"], True)
        add("mode_tv", lambda i: M.mode_stats(gm, x[torch.as_tensor(i)])["mode_tv"], True)
    if bm.digits:
        feats = M.digits_features(x)
        mu_t, cov_t = M.digits_reference_stats()
        real_f = M.digits_features(bm.real)
        add("fd_digits", lambda i: M.frechet_distance(*M.gaussian_stats(feats[i]), mu_t, cov_t), True)
        add("kid_digits", lambda i: kid_blocked(feats[i], real_f), True)
        if labels is not None:
            clf = _classifier()
            with torch.no_grad():
                p = torch.cat([clf.logits(x[j:j + 1024].float()).softmax(1) for j in range(0, n, 1024)]).numpy()
            y = labels.detach().cpu().numpy()
            hit = p.argmax(1) == y
            conf = hit & (p[np.arange(n), y] >= 0.9)
            add("class_acc", lambda i: hit[i].mean())
            add("class_acc_confident", lambda i: conf[i].mean())
    if real is not None:
        ref_sorted = np.sort(real @ M.projections(real.shape[1], 128, 0), axis=0)
        add("sw", lambda i: M.sliced_wasserstein(flat[i], real, 128, 0, y_proj_sorted=ref_sorted), True)
    return rows
