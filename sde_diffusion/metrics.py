"""Sample-quality metrics for the step-count benchmark.

Distribution metrics (samples vs a reference set):
  ``frechet_distance``  ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}) (Heusel et al. 2017), the
                        matrix root taken through the symmetric PSD form S1^{1/2} S2 S1^{1/2};
  ``fd_digits``         the same in the digits classifier's feature space against the shipped
                        statistics of the real test split ("FD-digits");
  ``kid``               unbiased MMD^2 with the cubic polynomial kernel (x.y/d + 1)^3 (Binkowski et al. 2018);
  ``sliced_wasserstein`` mean over seeded random directions of the exact 1-D W_p (Bonneel et al. 2015).
Solver error: ``rmse`` against a reference probability-flow solve from the same x_T.
Analytic tier: ``mode_stats`` (per-mode coverage of a Gaussian mixture), log-density via
``GaussianMixture.log_prob``. Uncertainty: ``bootstrap_ci`` (percentile bootstrap over samples).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

__all__ = [
    "gaussian_stats", "frechet_distance", "fd_from_features", "kid", "projections", "sliced_wasserstein", "rmse",
    "bootstrap_ci", "mode_stats", "digits_features", "digits_reference_stats", "fd_digits",
    "noise_floor_fd",
]


def _np64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    a = np.asarray(x, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ValueError("metric input contains NaN or inf")
    return a


def _features_2d(x, name: str = "x") -> np.ndarray:
    a = _np64(x)
    if a.ndim < 2 or a.shape[0] < 2:
        raise ValueError(f"{name} must have shape (N >= 2, ...), got {a.shape}")
    return a.reshape(a.shape[0], -1)


# ---- Frechet distance --------------------------------------------------------------------
def gaussian_stats(features) -> tuple:
    """(mean, covariance) of features (N, D) in float64 (unbiased covariance, N - 1)."""
    f = _features_2d(features, "features")
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix via eigh (negative round-off clipped)."""
    w, v = np.linalg.eigh(0.5 * (s + s.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet (2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2).

    tr (S1 S2)^{1/2} = tr (S1^{1/2} S2 S1^{1/2})^{1/2}: the inner matrix is symmetric PSD, so
    its root comes from ``eigh`` and stays real and accurate even for singular covariances."""
    mu1, mu2 = np.atleast_1d(_np64(mu1)), np.atleast_1d(_np64(mu2))
    s1, s2 = np.atleast_2d(_np64(sigma1)), np.atleast_2d(_np64(sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"need means (D,) and covariances (D, D) of one D; got {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    r1 = _psd_sqrt(s1)
    w = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_root = float(np.sqrt(np.clip(w, 0.0, None)).sum())
    diff = mu1 - mu2
    return max(float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_root), 0.0)


def fd_from_features(f1, f2) -> float:
    """Frechet distance between the Gaussian fits of two feature sets."""
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


# ---- KID -----------------------------------------------------------------------------------
def kid(f1, f2) -> float:
    """Unbiased MMD^2 between feature sets with k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018)."""
    x, y = _features_2d(f1, "f1"), _features_2d(f2, "f2")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dims differ: {x.shape[1]} vs {y.shape[1]}")
    d, m, n = x.shape[1], x.shape[0], y.shape[0]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


# ---- sliced Wasserstein -------------------------------------------------------------------
def _wasserstein_1d(a: np.ndarray, b: np.ndarray, p: float, b_sorted: bool = False) -> np.ndarray:
    """Exact W_p^p between the empirical laws of the columns of a (n, P) and b (m, P)."""
    a = np.sort(a, axis=0)
    b = b if b_sorted else np.sort(b, axis=0)
    n, m = a.shape[0], b.shape[0]
    u = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)  # quantile breakpoints
    du = np.diff(np.concatenate([[0.0], u]))
    mid = u - du / 2  # quantile functions are constant on each (u_{k-1}, u_k]
    ia = np.minimum((mid * n).astype(int), n - 1)
    ib = np.minimum((mid * m).astype(int), m - 1)
    return (np.abs(a[ia] - b[ib]) ** p * du[:, None]).sum(0)


def projections(dim: int, n_proj: int = 256, seed: int = 0) -> np.ndarray:
    """``n_proj`` seeded directions uniform on the unit sphere in R^dim, as columns (dim, n_proj)."""
    if not (isinstance(n_proj, int) and n_proj >= 1) or not (isinstance(dim, int) and dim >= 1):
        raise ValueError(f"need integers n_proj >= 1 and dim >= 1, got n_proj={n_proj!r}, dim={dim!r}")
    theta = np.random.default_rng(seed).standard_normal((dim, n_proj))
    return theta / np.linalg.norm(theta, axis=0, keepdims=True)


def sliced_wasserstein(x, y, n_proj: int = 256, seed: int = 0, p: float = 2.0, y_proj_sorted=None) -> float:
    """Sliced W_p = (E_theta W_p^p(theta.x, theta.y))^{1/p}, theta uniform on the sphere
    (``projections(D, n_proj, seed)``: the same directions for every call with the same seed and D).
    ``y_proj_sorted``: sort(y @ theta, axis=0) precomputed, to score many x against one y."""
    a, b = _features_2d(x, "x"), _features_2d(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if not p >= 1:
        raise ValueError(f"need p >= 1, got {p!r}")
    theta = projections(a.shape[1], n_proj, seed)
    if y_proj_sorted is None:
        return float(_wasserstein_1d(a @ theta, b @ theta, p).mean() ** (1.0 / p))
    return float(_wasserstein_1d(a @ theta, y_proj_sorted, p, b_sorted=True).mean() ** (1.0 / p))


# ---- solver error --------------------------------------------------------------------------
def rmse(x, ref) -> float:
    """Root-mean-square difference over all samples and elements (pixel space)."""
    a, b = _np64(x), _np64(ref)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.sqrt(np.mean((a - b) ** 2)))


# ---- bootstrap -----------------------------------------------------------------------------
def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, n_boot: int = 200, seed: int = 0,
                 level: float = 0.95, recenter: bool = False) -> tuple:
    """Percentile bootstrap CI: ``stat(idx)`` is evaluated on ``n_boot`` resamples idx of
    range(n) (with replacement); returns (low, high).

    ``recenter=True`` shifts the bootstrap distribution so its median sits on the full-sample
    estimate: for FD/KID/sliced W a resample's duplicated points bias the statistic upward, and the
    plain percentile interval would then miss the estimate itself."""
    if n < 2 or n_boot < 2 or not 0 < level < 1:
        raise ValueError(f"need n >= 2, n_boot >= 2 and 0 < level < 1, got n={n}, n_boot={n_boot}, level={level}")
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=np.float64)
    if recenter:
        vals += stat(np.arange(n)) - np.median(vals)
    q = (1 - level) / 2
    return float(np.quantile(vals, q)), float(np.quantile(vals, 1 - q))


# ---- analytic tier -------------------------------------------------------------------------
def mode_stats(mixture, x, radius: float = 3.0, min_share: float = 0.5) -> dict:
    """Per-mode statistics of samples x under a ``GaussianMixture``.

    Each sample goes to the component of highest responsibility if its Mahalanobis distance
    to it is <= ``radius``, else it is "off-mode". Returns ``counts`` (K,), ``off_mode``
    (fraction), ``coverage`` (fraction of modes holding >= ``min_share`` x their expected
    count w_k N) and ``mode_tv`` (total variation between assigned shares and the weights)."""
    y = mixture._flat(torch.as_tensor(x))  # float64 on x's device
    means, evals, evecs, weights = mixture._params(y.device)
    ones = torch.ones(y.shape[0], dtype=torch.float64, device=y.device)
    logn, _ = mixture._log_comp_and_score(y, ones, ones * 1e-12)
    k = torch.argmax(logn + torch.log(weights)[None], dim=1)
    d = y - means[k]
    dr = torch.einsum("bd,bde->be", d, evecs[k])
    maha = torch.sqrt((dr**2 / evals[k].clamp(min=1e-300)).sum(-1))
    ok = maha <= radius
    counts = torch.bincount(k[ok], minlength=mixture.K).to(torch.float64)
    n = y.shape[0]
    expected = weights * n
    return {
        "counts": counts.cpu().numpy(),
        "off_mode": float(1 - ok.double().mean()),
        "coverage": float((counts >= min_share * expected).double().mean()),
        "mode_tv": float(0.5 * (counts / n - weights).abs().sum() + 0.5 * (1 - ok.double().mean())),
    }


# ---- FD-digits -----------------------------------------------------------------------------
def _classifier(device="cpu"):
    """The shipped digits classifier's ``features`` on ``device``: (N,1,8,8) in [-1,1] -> (N, 128)."""
    from .classifier import load_classifier

    return load_classifier(device=device).features


_FEATURES_FN = {}  # per device of the input


def digits_features(x, batch: int = 1024) -> np.ndarray:
    """Classifier features (N, F) float64 of digits images (N, 1, 8, 8) in [-1, 1]; the classifier
    runs on the images' device."""
    x = torch.as_tensor(x).to(torch.float32)
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        raise ValueError(f"digits images must have shape (N, 1, 8, 8), got {tuple(x.shape)}")
    key = str(x.device)
    if key not in _FEATURES_FN:
        _FEATURES_FN[key] = _classifier(x.device)
    with torch.no_grad():
        parts = [_FEATURES_FN[key](x[i:i + batch]) for i in range(0, x.shape[0], batch)]
    return _np64(torch.cat([torch.as_tensor(p) for p in parts]))


_REF_STATS = None


def digits_reference_stats() -> tuple:
    """(mu, sigma) of classifier features of the real digits TEST split, computed from the fixed
    split with the eval-mode classifier (deterministic) and kept for the process."""
    global _REF_STATS
    if _REF_STATS is None:
        from .data import load_digits

        _REF_STATS = gaussian_stats(digits_features(load_digits("test")))
    return _REF_STATS


def fd_digits(x) -> float:
    """FD-digits of images x against the real test split's feature statistics."""
    return frechet_distance(*gaussian_stats(digits_features(x)), *digits_reference_stats())


def noise_floor_fd(real, n: int, seed: int = 0, features: Optional[Callable] = None) -> float:
    """FD between two disjoint random subsets of size n of ``real`` (needs 2n <= len(real))."""
    real = torch.as_tensor(real)
    if 2 * n > real.shape[0] or n < 2:
        raise ValueError(f"need 2 <= n and 2n <= {real.shape[0]} real samples for two disjoint sets, got n={n}")
    perm = np.random.default_rng(seed).permutation(real.shape[0])
    a, b = real[perm[:n]], real[perm[n:2 * n]]
    fa, fb = (features(a), features(b)) if features is not None else (a, b)
    return fd_from_features(fa, fb)
