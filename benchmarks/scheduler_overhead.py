"""Cost of running a solver through ``SDEDiffusionScheduler.step()`` (a diffusers-style loop) instead
of ``sample()``, on the shipped model, and the hand-over cost per network evaluation.

    python benchmarks/scheduler_overhead.py [--model digits] [--batch 256] [--steps 20] [--repeats 5]

For each solver: median wall time of ``sample(model, x_T, solver, ts=grid)`` and of the pipeline loop
``for t in sched.timesteps: x = sched.step(net(x, t), t, x).prev_sample`` on the same x_T and grid
(the results are checked equal), and their ratio. Then the hand-over alone: the same loops with a
trivial net (x -> 0.1 x) on a 1 x 1 x 8 x 8 state against the solver function called directly, as
microseconds per network evaluation (fastest
runs, since on a loaded machine the medians of such short runs are mostly noise).
Runs interleave (sample, loop, sample, loop, ...) so machine load affects both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sde_diffusion import sample
from sde_diffusion.checkpoints import load_model
from sde_diffusion.interop.scheduler import SDEDiffusionScheduler


def _loop(sched, net, x, generator=None):
    """What a diffusers pipeline does (the net sees the same float32 timesteps as in sample())."""
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(net(x, t.expand(x.shape[0])), t, x, generator=generator).prev_sample
    return x


def _time(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--solvers", default="dpmpp_2m,unipc,heun,ancestral")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = load_model(a.model)
    n = model.sde.num_train_steps
    config = dict(num_train_timesteps=n, trained_betas=model.sde.betas.tolist(), prediction_type="epsilon")
    x_T = torch.randn((a.batch, *model.sample_shape), generator=torch.Generator().manual_seed(0))
    print(f"model {a.model}, batch {a.batch}, {a.steps} steps, {a.threads} thread(s), median of {a.repeats}")
    print("| solver | NFE | sample() (s) | scheduler loop (s) | loop / sample |")
    print("|---|---|---|---|---|")
    for name in [n for n in a.solvers.split(",") if n]:
        sched = SDEDiffusionScheduler(**config, solver=name)
        sched.set_timesteps(a.steps)
        ws, wl = [], []
        for r in range(a.repeats):
            g1, g2 = torch.Generator().manual_seed(r), torch.Generator().manual_seed(r)
            d, ref = _time(lambda: sample(model, x_T, solver=name, ts=sched.grid, generator=g1).samples)
            ws.append(d)
            sched.set_timesteps(a.steps)
            d, out = _time(lambda: _loop(sched, model.net, x_T, g2))
            wl.append(d)
            assert float((out - ref).abs().max()) <= 1e-4 * max(1.0, float(ref.abs().max())), name
        s, l_ = statistics.median(ws), statistics.median(wl)
        print(f"| {name} | {len(sched.timesteps)} | {s:.3f} | {l_:.3f} | {l_ / s:.4f} |")

    # the hand-over alone
    tiny = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    trivial = NoNet()
    sched = SDEDiffusionScheduler(**config, solver="dpmpp_2m")
    sched.set_timesteps(200)
    ws, wl = [], []
    for _ in range(4 * a.repeats):
        ws.append(_time(lambda: _direct(_wrap(model, trivial), tiny, sched.grid))[0])
        sched.set_timesteps(200)
        wl.append(_time(lambda: _loop(sched, trivial, tiny))[0])
    per = (min(wl) - min(ws)) / 200 * 1e6  # minima: the least-disturbed runs of a loaded machine
    print(f"hand-over: {per:.0f} us per network evaluation (200-step dpmpp_2m, trivial net, 1x1x8x8, fastest of "
          f"{4 * a.repeats}: solver function called directly {min(ws) * 1e3:.1f} ms, step() loop {min(wl) * 1e3:.1f} ms)")


class NoNet:
    def __call__(self, x, t):
        return 0.1 * x


def _direct(model, x, grid):
    """The solver function itself, without sample()'s checks and callback."""
    from sde_diffusion.noise import GaussianNoise
    from sde_diffusion.solvers import SOLVERS

    with torch.no_grad():
        return SOLVERS["dpmpp_2m"](model, x, grid, noise=GaussianNoise(x.shape), callback=None)


def _wrap(model, net):
    from sde_diffusion import NoisePredictor

    return NoisePredictor(net, model.sde, model.prediction)


if __name__ == "__main__":
    main()
