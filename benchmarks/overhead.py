"""Solver overhead on the shipped model: ms per NFE at batch 256, and for every solver at 20 steps
the ratio wall / (NFE x one forward) (target <= 1.02: the solver's own arithmetic is negligible).

    python benchmarks/overhead.py [--model digits] [--batch 256] [--steps 20] [--repeats 3]

Medians over ``--repeats`` runs, measured in one process on the same x_T; the forward time is the
median of 10 direct net calls at the same batch size, measured before and after the solver loop.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sde_diffusion import SOLVERS, sample
from sde_diffusion.checkpoints import load_model
from sde_diffusion.solvers import ADAPTIVE


def forward_ms(model, x, reps=10):
    ts = torch.full((x.shape[0],), 500.0)
    times = []
    with torch.no_grad():
        for _ in range(reps):
            t0 = time.perf_counter()
            model.net(x, ts)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = load_model(a.model)
    x_T = torch.randn((a.batch, *model.sample_shape), generator=torch.Generator().manual_seed(0))
    f0 = forward_ms(model, x_T)
    rows = []
    for name in SOLVERS:
        kw = {} if name in ADAPTIVE else {"steps": a.steps}
        walls, nfe = [], 0
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            res = sample(model, x_T, solver=name, seed=0, **kw)
            walls.append(time.perf_counter() - t0)
            nfe = res.nfe
        rows.append((name, nfe, statistics.median(walls)))
    f1 = forward_ms(model, x_T)
    fwd = (f0 + f1) / 2
    print(f"model {a.model}, batch {a.batch}, {a.threads} thread(s): forward {fwd:.1f} ms per NFE "
          f"(before {f0:.1f}, after {f1:.1f})")
    print(f"| solver | NFE | wall (s) | ms per NFE | overhead = wall / (NFE x forward) |")
    print(f"|---|---|---|---|---|")
    for name, nfe, wall in rows:
        print(f"| {name} | {nfe} | {wall:.2f} | {1000 * wall / nfe:.1f} | {wall / (nfe * fwd / 1000):.3f} |")


if __name__ == "__main__":
    main()
