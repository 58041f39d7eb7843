"""UniPC (Zhao et al. 2023, "UniPC: a unified predictor-corrector framework"), data prediction, B(h) forms.

Step from s = t_{i} to t = t_{i+1}, h = lambda_t - lambda_s, hh = -h (data prediction), m_k = x0 predictions
at earlier grid points with r_k = (lambda_{s_k} - lambda_s)/h, D_k = (m_k - m_s)/r_k:
  UniP-p (predictor, Alg. 2):  x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{hh} - 1) m_s - alpha_t B(h) sum_k rho^p_k D_k
  UniC-p (corrector, Alg. 1):  same base with sum_k rho^c_k D_k + rho^c_p (m_t - m_s), m_t = x0 at the
                               predicted x_t; it replaces x_t before the next predictor step.
rho solves R rho = b with R_{jk} = r_k^{j}, b_j = j! h phi_{j+1}(hh) / B(h) (UniPC eq. 8 / Thm. 3.1),
B(h) = hh ("bh1") or e^{hh} - 1 ("bh2"); UniP-2 uses rho = 1/2 and UniC-1 rho = 1/2 as in the paper's code.
The corrector reuses the evaluation made for the next predictor step, so NFE = K. No corrector after the
last step. Equals diffusers' UniPCMultistepScheduler (default: bh2, order 2, lower_order_final).
"""

from __future__ import annotations

import math

import numpy as np

from ..validation import choice
from .dpm import _coefs
from .spec import solver

_VARIANTS = ("bh1", "bh2")


def _unipc_rhs(h: float, rks, variant: str):
    """(e^{hh} - 1, B(h), R, b) for nodes ``rks`` (last one is 1), hh = -h; float64."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    B_h = hh if variant == "bh1" else h_phi_1
    p = len(rks)
    R = np.stack([np.asarray(rks, dtype=np.float64) ** j for j in range(p)])
    b = []
    # h_phi_k = hh * phi_{j+1}(hh), with phi_1(z) = (e^z - 1)/z and phi_{k+1}(z) = (phi_k(z) - 1/k!)/z
    h_phi_k, fac = h_phi_1 / hh - 1.0, 1.0
    for j in range(1, p + 1):
        b.append(h_phi_k * fac / B_h)
        fac *= j + 1
        h_phi_k = h_phi_k / hh - 1.0 / fac
    return h_phi_1, B_h, R, np.asarray(b)


def _history(lams, x0s, l_s, m_s, h, p):
    """r_k and D_k = (m_k - m_s)/r_k for the p-1 most recent earlier points."""
    rks, ds = [], []
    for k in range(1, p):
        r = (lams[-1 - k] - l_s) / h
        rks.append(r)
        ds.append((x0s[-1 - k] - m_s) / r)
    return rks, ds


# UniPC-p with the corrector has order p + 1 (Zhao et al. 2023, Thm. 3.3); UniP-p alone has order p
@solver(order=3, nfe="K", default_spacing="logsnr", stochastic=False, adaptive=False,
        peers=("diffusers.UniPCMultistepScheduler",), order_options={"lower_order_final": False},
        variants=(("order=1", {"order": 1, "lower_order_final": False}, 2),
                  ("order=3", {"order": 3, "lower_order_final": False}, 4),
                  ("bh1", {"variant": "bh1", "lower_order_final": False}, 3)))
def unipc(model, x, ts, *, noise, callback=None, order: int = 2, variant: str = "bh2",
          lower_order_final: bool = True, corrector: bool = True):
    """UniPC-p (Zhao et al. 2023): multistep UniP-p predictor + UniC corrector, data prediction.

    ``order`` 1, 2 or 3 (predictor order p; the corrector raises the accuracy to p + 1); warm-up uses
    order min(order, i + 1). ``lower_order_final``: step i of K uses order at most K - i (diffusers'
    default); a final step to t = 0 is always first order and returns the x0 prediction.
    ``corrector=False`` gives the plain UniP multistep predictor. ``variant``: "bh2" (default) or "bh1".
    """
    choice("order", order, (1, 2, 3))
    choice("variant", variant, _VARIANTS)
    sde = model.sde
    K = len(ts) - 1
    lams, x0s = [], []  # lambda and x0 at the grid points visited so far, newest last
    x_prev = p_prev = None
    for i in range(K):
        s, t = float(ts[i]), float(ts[i + 1])
        a_s, s_s, l_s = _coefs(sde, s)
        a_t, s_t, l_t = _coefs(sde, t)
        m_s = model.predict(x, s).x0  # evaluated at the predicted (uncorrected) x_s
        if corrector and i > 0:
            # UniC-p_prev on the previous step t_{i-1} -> s, using m_s as the new node (r = 1)
            l_0, m_0 = lams[-1], x0s[-1]
            a_0, s_0 = _coefs(sde, float(ts[i - 1]))[:2]
            hc = l_s - l_0
            rks, ds = _history(lams, x0s, l_0, m_0, hc, p_prev)
            h_phi_1, B_h, R, b = _unipc_rhs(hc, rks + [1.0], variant)
            rho = np.array([0.5]) if p_prev == 1 else np.linalg.solve(R, b)
            corr = sum(float(rho[k]) * ds[k] for k in range(len(ds))) + float(rho[-1]) * (m_s - m_0)
            x = (s_s / s_0) * x_prev - (a_s * h_phi_1) * m_0 - (a_s * B_h) * corr
        lams, x0s = (lams + [l_s])[-3:], (x0s + [m_s])[-3:]
        p = min(order, i + 1, K - i if lower_order_final else order)
        p = min(p, max(1, sum(1 for l in lams if math.isfinite(l))))  # skip a start at alpha = 0 (lambda = -inf)
        if t == 0:
            p, x_new = 1, m_s  # sigma_t = 0: UniP-1 lands on the x0 prediction
        else:
            h = l_t - l_s
            rks, ds = _history(lams, x0s, l_s, m_s, h, p)
            h_phi_1, B_h, R, b = _unipc_rhs(h, rks + [1.0], variant)
            x_new = (s_t / s_s) * x - (a_t * h_phi_1) * m_s
            if p > 1:
                rho = np.array([0.5]) if p == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
                x_new = x_new - (a_t * B_h) * sum(float(rho[k]) * ds[k] for k in range(len(ds)))
        x_prev, p_prev, x = x, p, x_new
        if callback is not None:
            callback(dict(i=i, t=t, x=x, x0=m_s))
    return x
