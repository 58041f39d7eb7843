"""NFE against accuracy of ``log_likelihood`` integrated in t and in log-SNR lambda (docs/likelihood.md).

    python benchmarks/likelihood_nfe.py gaussian          # exact answer known (analytic 3-D Gaussian)
    python benchmarks/likelihood_nfe.py digits [N]        # shipped model, first N (8) test images, vs a tight solve

gaussian: a full-covariance 3-D Gaussian, its exact eps as the net, exact trace, on the 1000-step
linear chain and on the continuous linear VP-SDE. The target is what the estimator computes when
solved exactly: log p_{t_end}(x) - log p_1(z) + log N(z; 0, I), z the exact flow image of x.
digits: bits/dim of the first N test images (centred dequantization, one fixed Rademacher probe,
seed k for image k), error = max |bpd - reference| with the reference dopri5 at rtol = atol = 1e-7
in lambda.
"""

from __future__ import annotations

import math
import sys
import time

import torch

from sde_diffusion import VPSDE, linear_betas
from sde_diffusion.analytic import GaussianMixture
from sde_diffusion.likelihood import log_likelihood

F64 = torch.float64


def gaussian():
    g = torch.Generator().manual_seed(0)
    D = 3
    A = torch.randn(D, D, dtype=F64, generator=g) * 0.3
    C = A @ A.T + 0.05 * torch.eye(D, dtype=F64)
    gm = GaussianMixture(torch.randn(1, D, dtype=F64, generator=g) * 0.3, C[None])
    x = gm.sample(12, generator=torch.Generator().manual_seed(1))
    t_end = 1e-5
    for name, sde in (("discrete N=1000", VPSDE.from_betas(linear_betas(1000))), ("linear VP", VPSDE.linear())):
        z = gm.flow_map(x, t_end, 1.0, sde)
        target = gm.log_prob(x, sde, t_end) - gm.log_prob(z, sde, 1.0) - 0.5 * (D * math.log(2 * math.pi) + (z**2).sum(1))
        for variable in ("t", "lambda"):
            for tol in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7):
                r = log_likelihood(gm.predictor(sde), x, trace="exact", dequantize=None, rtol=tol, atol=tol,
                                   t_end=t_end, variable=variable)
                err = float(((r.log_prob - target).abs() / D).max())
                print(f"{name:16s} {variable:6s} rtol=atol={tol:.0e}  NFE {r.nfe:5d}  max error {err:.2e} nats/dim", flush=True)


def digits(n: int = 8):
    from sde_diffusion.checkpoints import load_model
    from sde_diffusion.data import load_digits

    model = load_model("digits")
    x = load_digits("test")[:n]
    gens = lambda: [torch.Generator().manual_seed(k) for k in range(x.shape[0])]  # noqa: E731
    kw = dict(dequantize="centered", num_bins=17, trace="hutchinson", probes=1)
    t0 = time.time()
    ref = log_likelihood(model, x, rtol=1e-7, atol=1e-7, variable="lambda", generator=gens(), **kw)
    print(f"reference lambda rtol=atol=1e-7: NFE {ref.nfe}, mean bpd {float(ref.bpd.mean()):.4f}, {time.time() - t0:.0f} s", flush=True)
    for variable in ("t", "lambda"):
        for tol in (1e-3, 1e-4, 1e-5):
            t0 = time.time()
            r = log_likelihood(model, x, rtol=tol, atol=tol, variable=variable, generator=gens(), **kw)
            err = float((r.bpd - ref.bpd).abs().max())
            print(f"digits {variable:6s} rtol=atol={tol:.0e}  NFE {r.nfe:5d}  mean bpd {float(r.bpd.mean()):.4f}  "
                  f"max |bpd - ref| {err:.2e}  {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    which = sys.argv[1] if len(sys.argv) > 1 else "gaussian"
    gaussian() if which == "gaussian" else digits(*(int(a) for a in sys.argv[2:3]))
