"""Coverage of the benchmark's 95% bootstrap intervals, measured by simulation where the exact
value of each metric is known.

The case: 2-D Gaussian data N(mu, s^2 I) with its exact noise prediction on the DDPM linear chain
(1000 steps). With exact eps every deterministic solver is an affine map of x_T, so DDIM with
``--steps`` steps produces x = A x_T + b exactly (A, b read off two float64 solves, checked on a
random x_T), and the exact reference flow gives x_ref = A_r x_T + b_r. Population values:

    rmse_ref = sqrt((A - A_r)^2 + |b - b_r|^2 / d)
    fd       = |b - mu|^2 + d (A - s)^2                     (N(b, A^2 I) vs N(mu, s^2 I))
    logp     = -d/2 log(2 pi s^2) - (|b - mu|^2 + d A^2) / (2 s^2)

Each replication draws n fresh x_T, scores them as the benchmark does (``bench.score``'s
statistics) and asks whether the interval holds the population value. Methods: scipy's BCa and
percentile bootstrap, and the percentile interval recentred on the estimate (what the benchmark
uses for set statistics such as FD).

    python benchmarks/ci_coverage.py --n 128 --reps 200 --out benchmarks/results/ci_coverage.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from sde_diffusion import metrics as M
from sde_diffusion.analytic import GaussianMixture
from sde_diffusion.bench.score import bootstrap_interval
from sde_diffusion.sampling import sample
from sde_diffusion.schedules import linear_betas
from sde_diffusion.sde import VPSDE


def affine_maps(steps: int, mu, s: float):
    sde = VPSDE.from_betas(linear_betas(1000))
    gm = GaussianMixture(torch.tensor([mu], dtype=torch.float64), s)
    m = gm.predictor(sde)
    d = len(mu)
    t_end = 1.0 / sde.num_train_steps

    def solve(x):
        return sample(m, x, solver="ddim", steps=steps, spacing="uniform").samples

    def ref(x):
        return m.x0(gm.flow_map(x, 1.0, t_end, sde), t_end)

    out = []
    for f in (solve, ref):
        b = f(torch.zeros(1, d, dtype=torch.float64))[0]
        A = float((f(torch.eye(d, dtype=torch.float64)[:1])[0] - b)[0])
        x = torch.randn(5, d, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
        assert torch.allclose(f(x), A * x + b, atol=1e-9), "the solve is not affine in x_T"
        out.append((A, b.numpy()))
    return out


def exact_values(A, b, Ar, br, mu, s):
    d = len(mu)
    mu = np.asarray(mu)
    return {"rmse_ref": math.sqrt((A - Ar) ** 2 + float(((b - br) ** 2).sum()) / d),
            "fd": float(((b - mu) ** 2).sum()) + d * (A - s) ** 2,
            "logp": -d / 2 * math.log(2 * math.pi * s * s) - (float(((b - mu) ** 2).sum()) + d * A * A) / (2 * s * s)}


def statistics(x, xr, mu, s):
    d = x.shape[1]
    se = ((x - xr) ** 2).mean(1)
    lp = -d / 2 * math.log(2 * math.pi * s * s) - ((x - np.asarray(mu)) ** 2).sum(1) / (2 * s * s)
    cov = s * s * np.eye(d)
    return {"rmse_ref": lambda i: math.sqrt(se[i].mean()),
            "fd": lambda i: M.frechet_distance(*M.gaussian_stats(x[i]), np.asarray(mu), cov),
            "logp": lambda i: lp[i].mean()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--n-boot", type=int, default=200)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    mu, s = [0.3, -0.2], 0.5
    (A, b), (Ar, br) = affine_maps(a.steps, mu, s)
    exact = exact_values(A, b, Ar, br, mu, s)
    methods = ("BCa", "percentile", "recentred")
    hits = {m: {k: 0 for k in exact} for m in methods}
    widths = {m: {k: [] for k in exact} for m in methods}
    rng = np.random.default_rng(a.seed)
    t0 = time.perf_counter()
    for r in range(a.reps):
        xt = rng.standard_normal((a.n, len(mu)))
        stats = statistics(A * xt + b, Ar * xt + br, mu, s)
        for k, fn in stats.items():
            for m in methods:
                if m == "recentred":  # what the bench uses for set statistics (fd here)
                    lo, hi = bootstrap_interval(fn, a.n, a.n_boot, seed=r, recenter=True)
                else:
                    lo, hi = bootstrap_interval(fn, a.n, a.n_boot, seed=r, method=m)
                hits[m][k] += lo <= exact[k] <= hi
                widths[m][k].append(hi - lo)
    res = {"case": dict(d=len(mu), mu=mu, s=s, solver="ddim", steps=a.steps, A=A, b=b.tolist(), A_ref=Ar, b_ref=br.tolist()),
           "n": a.n, "reps": a.reps, "n_boot": a.n_boot, "seed": a.seed, "exact": exact,
           "coverage": {m: {k: hits[m][k] / a.reps for k in exact} for m in methods},
           "median_width": {m: {k: float(np.median(widths[m][k])) for k in exact} for m in methods},
           "wall_s": round(time.perf_counter() - t0, 1),
           "command": f"python benchmarks/ci_coverage.py --n {a.n} --reps {a.reps} --n-boot {a.n_boot} --steps {a.steps} --seed {a.seed}"}
    print(f"n = {a.n}, {a.reps} replications, {a.n_boot} resamples, DDIM {a.steps} steps; exact: "
          + ", ".join(f"{k} {v:.4g}" for k, v in exact.items()))
    print("| method | " + " | ".join(exact) + " |")
    print("|---|" + "---|" * len(exact))
    for m in methods:
        print(f"| {m} | " + " | ".join(f"{res['coverage'][m][k]:.1%}" for k in exact) + " |")
    print(f"{res['wall_s']} s")
    if a.out:
        from pathlib import Path

        from sde_diffusion.files import atomic_write_text

        path = Path(a.out)
        old = json.loads(path.read_text()) if path.is_file() else {}
        old[f"n{a.n}"] = res
        atomic_write_text(path, json.dumps(old, indent=1) + "\n")


if __name__ == "__main__":
    main()
