"""Solver overhead on the shipped model: ms per NFE at batch 256, and for every solver at 20 steps
the ratio wall / (NFE x one forward) (target <= 1.02: the solver's own arithmetic is negligible).

    python benchmarks/overhead.py [--model digits] [--batch 256] [--steps 20] [--repeats 3]

Medians over ``--repeats`` runs, measured in one process on the same x_T. Two ratios: against a
separately timed forward (median of 10 direct net calls before and after the loop; sensitive to the
machine's drift), and against the time spent inside the network during the same solve (the net is
wrapped by a timer), which isolates the solver's own cost from load changes.
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
    p.add_argument("--solvers", default=None, help="comma-separated subset (default: all of SOLVERS)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = load_model(a.model)
    x_T = torch.randn((a.batch, *model.sample_shape), generator=torch.Generator().manual_seed(0))
    f0 = forward_ms(model, x_T)
    net, inside = model.net, [0.0]

    def timed_net(x, t):  # the same network, timed where it is called
        t0 = time.perf_counter()
        out = net(x, t)
        inside[0] += time.perf_counter() - t0
        return out

    model.net = timed_net
    rows = []
    for name in (a.solvers.split(",") if a.solvers else SOLVERS):
        kw = {} if name in ADAPTIVE else {"steps": a.steps}
        walls, ratios, nfe = [], [], 0
        for _ in range(a.repeats):
            inside[0] = 0.0
            t0 = time.perf_counter()
            res = sample(model, x_T, solver=name, seed=0, **kw)
            walls.append(time.perf_counter() - t0)
            ratios.append(walls[-1] / inside[0])  # wall / time spent inside the network, same run
            nfe = res.nfe
        rows.append((name, nfe, statistics.median(walls), statistics.median(ratios)))
    model.net = net
    f1 = forward_ms(model, x_T)
    fwd = (f0 + f1) / 2
    print(f"model {a.model}, batch {a.batch}, {a.threads} thread(s): forward {fwd:.1f} ms per NFE "
          f"(before {f0:.1f}, after {f1:.1f})")
    print("| solver | NFE | wall (s) | ms per NFE | wall / (NFE x separate forward) | wall / time inside the net |")
    print("|---|---|---|---|---|---|")
    for name, nfe, wall, ratio in rows:
        print(f"| {name} | {nfe} | {wall:.2f} | {1000 * wall / nfe:.1f} | {wall / (nfe * fwd / 1000):.3f} | {ratio:.4f} |")


if __name__ == "__main__":
    main()
