"""Tune time grids for the shipped digits model and write sde_diffusion/assets/digits/tuned_grids.json.

    python benchmarks/tune_grids.py [--model digits] [--solvers unipc,dpmpp_3m,dpmpp_2m] [--nfe 5,10] [--n 64]

Calibration x_T use seeds 1e6 + k (disjoint from the benchmark's seeds 0..n-1); the reference is the
``ode`` solver at rtol = atol = 1e-6. Options per solver match the benchmark's first variant.
The JSON is rewritten atomically after every grid, so a killed run keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from sde_diffusion.checkpoints import ASSETS_DIR, load_model
from sde_diffusion.randomness import per_sample_generators
from sde_diffusion.tuning import CALIBRATION_SEED, reference_solve, tune_grid

OPTIONS = {"unipc": {"order": 2}}  # the benchmark's first variant (sde_diffusion.bench.VARIANTS)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits")
    p.add_argument("--solvers", default="unipc,dpmpp_3m,dpmpp_2m")
    p.add_argument("--nfe", default="5,10")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--maxfev", type=int, default=300)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model(a.model)
    out = ASSETS_DIR / a.model / "tuned_grids.json"
    doc = json.loads(out.read_text()) if out.is_file() else {"grids": {}}
    gens = per_sample_generators(CALIBRATION_SEED, a.n)
    x_T = torch.stack([torch.randn(tuple(model.sample_shape), generator=g) for g in gens])
    t0 = time.perf_counter()
    ref = reference_solve(model, x_T)
    print(f"reference ({a.n} samples): {time.perf_counter() - t0:.0f} s", flush=True)
    doc.update(model=a.model, weights_sha256=model.config["weights"]["sha256"], calibration=dict(
        n=a.n, seeds=f"{CALIBRATION_SEED}+k", reference="ode dopri5 rtol=atol=1e-6", objective="pixel RMSE"))
    for solver in a.solvers.split(","):
        for nfe in map(int, a.nfe.split(",")):
            best = None
            for free in (False, True):
                t0 = time.perf_counter()
                r = tune_grid(model, solver, nfe, x_T=x_T, reference=ref, maxfev=a.maxfev, free_start=free,
                              options=OPTIONS.get(solver))
                print(f"{solver} NFE {nfe} free_start={free}: rmse {r['rmse']:.4f} (start {r['rmse_init']:.4f} from "
                      f"{r['init']}; {r['evaluations']} evaluations, {time.perf_counter() - t0:.0f} s)", flush=True)
                if best is None or r["rmse"] < best[0]["rmse"]:
                    best = (r, free)
            r, free = best
            if out.is_file():  # re-read: another process may have added grids meanwhile
                doc["grids"] = {**json.loads(out.read_text())["grids"], **doc["grids"]}
            doc["grids"][f"{solver}/{nfe}"] = dict(ts=[float(t) for t in r["ts"]], calibration_rmse=r["rmse"],
                                                   start_rmse=r["rmse_init"], start_spacing=r["init"],
                                                   free_start=free, options=OPTIONS.get(solver, {}))
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps(doc, indent=1) + "\n")
            os.replace(tmp, out)


if __name__ == "__main__":
    main()
