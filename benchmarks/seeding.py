"""Cost of per-sample seeding: stochastic sampling with ``seed=`` (counter-based noise) against one
``torch.Generator``, and Brownian against Gaussian noise (issue 13).

    OMP_NUM_THREADS=1 python benchmarks/seeding.py [--batch 4096] [--shape 1 8 8] [--steps 20]
        [--repeats 5] [--device cpu] [--threads N] [--compiled-noise] [--clock wall|cpu] [--json out.json]

The net is trivial (eps = 0.5 x) so the numbers isolate the sampler's own work and the noise.
Prints a table of median wall times (ms) and ratios, with the load average before and after (the
machine may be shared: compare ratios from one run); ``--json`` also writes them with the machine.
``--threads`` sets torch's intra-op threads (default: OMP_NUM_THREADS or all cores); one
``torch.Generator`` draws on one thread, the counter-based draw uses them all.
``--compiled-noise`` opts in to ``randomness.use_compiled_noise`` (same values; the warm-up run
compiles). ``--clock cpu`` times with the process CPU time instead of wall time: with one thread on
a shared machine it leaves out the time the process waits for a core (with more threads it adds
the threads' times up, so use wall time there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from sde_diffusion.model import NoisePredictor
from sde_diffusion import randomness
from sde_diffusion.randomness import counter_randn, per_sample_generators, Stream
from sde_diffusion.sampling import sample
from sde_diffusion.sde import VPSDE

SOLVERS = ("ancestral", "dpmpp_2m_sde", "euler_maruyama")


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def median_ms(fn, repeats: int, device) -> float:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        t = _clock()
        fn()
        _sync(device)
        times.append((_clock() - t) * 1e3)
    return statistics.median(times)


def _load() -> list:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def run(batch=4096, shape=(1, 8, 8), steps=20, repeats=5, device="cpu", generator_lists=False) -> dict:
    load_before = _load()
    sde = VPSDE.linear()
    model = NoisePredictor(lambda x, t: 0.5 * x, sde, sample_shape=shape)
    full = (batch, *shape)
    x_T = counter_randn(0, full, Stream.X_T, device=device)
    rows = []

    def sampler(solver, **kw):
        return lambda: sample(model, x_T, solver=solver, steps=steps, **kw)

    def one_gen():
        return torch.Generator(device=device).manual_seed(0)

    for solver in SOLVERS:
        seeded = median_ms(sampler(solver, seed=0), repeats, device)
        gen = median_ms(lambda: sampler(solver, generator=one_gen())(), repeats, device)
        row = dict(solver=solver, seeded_ms=seeded, one_generator_ms=gen, seeded_ratio=seeded / gen)
        if generator_lists:
            lst = median_ms(lambda: sampler(solver, generator=per_sample_generators(0, batch, device))(), 1, device)
            row.update(generator_list_ms=lst, generator_list_ratio=lst / gen)
        brown = median_ms(sampler(solver, seed=0, noise="brownian"), repeats, device)
        row.update(brownian_ms=brown, brownian_ratio=brown / seeded)
        rows.append(row)
    noise_only = dict(
        counter_randn_ms=median_ms(lambda: counter_randn(0, full, Stream.STEP, 3, device=device), repeats * 4, device),
        torch_randn_ms=median_ms(lambda: torch.randn(full, generator=one_gen(), device=device), repeats * 4, device),
    )
    noise_only["ratio"] = noise_only["counter_randn_ms"] / noise_only["torch_randn_ms"]
    return dict(batch=batch, shape=list(shape), steps=steps, repeats=repeats, device=str(device),
                threads=torch.get_num_threads(), torch=torch.__version__, machine=platform.machine(),
                processor=platform.processor(), when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                load_before=load_before, load_after=_load(), cpus=os.cpu_count(),
                compiled_noise=bool(randomness._USE_COMPILED), clock=_clock.__name__,
                sampling=rows, noise_only=noise_only)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--shape", type=int, nargs="+", default=[1, 8, 8])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: as configured)")
    p.add_argument("--compiled-noise", action="store_true", help="opt in to randomness.use_compiled_noise (CPU)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall (default) or cpu: process CPU time, for one thread on a busy machine")
    p.add_argument("--generator-lists", action="store_true", help="also time a list of per-sample torch generators (slow)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.threads is not None:
        if a.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {a.threads}")
        torch.set_num_threads(a.threads)
    if a.compiled_noise:
        randomness.use_compiled_noise(True)
    global _clock
    _clock = CLOCKS[a.clock]
    r = run(a.batch, tuple(a.shape), a.steps, a.repeats, a.device, a.generator_lists)
    print(f"batch {r['batch']} x {tuple(r['shape'])}, {r['steps']} steps, {r['device']}, {r['threads']} thread(s); "
          f"medians of {r['repeats']}; load average {r['load_before']} -> {r['load_after']} ({r['cpus']} CPUs)"
          + ("; compiled noise" if r["compiled_noise"] else "") + f"; clock {r['clock']}")
    print(f"{'solver':16s} {'seed= ms':>9s} {'1 gen ms':>9s} {'ratio':>6s} {'brownian ms':>12s} {'ratio':>6s}")
    for row in r["sampling"]:
        print(f"{row['solver']:16s} {row['seeded_ms']:9.1f} {row['one_generator_ms']:9.1f} {row['seeded_ratio']:6.2f} "
              f"{row['brownian_ms']:12.1f} {row['brownian_ratio']:6.2f}"
              + (f"   generator list {row['generator_list_ms']:.0f} ms ({row['generator_list_ratio']:.1f}x)" if "generator_list_ms" in row else ""))
    n = r["noise_only"]
    print(f"noise only: counter_randn {n['counter_randn_ms']:.2f} ms, torch.randn {n['torch_randn_ms']:.2f} ms ({n['ratio']:.2f}x)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
