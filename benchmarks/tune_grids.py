"""Tune few-step configurations for a shipped model, score them on the benchmark's x_T, and ship them.

    OMP_NUM_THREADS=1 python benchmarks/tune_grids.py --solvers dpmpp_2m --nfe 5,10 [--model digits]
        [--calibration 256 --validation 64 --holdout 128 --maxfev 300] [--no-ship]

For every (solver, NFE): ``sde_diffusion.tuning.tune`` (calibration/validation/holdout x_T from the
named seed streams, references cached in ~/.cache/sde_diffusion/tune-references), then the RMSE on the
benchmark's own x_T (seeds 0..n-1, sample k = first ``randn`` of a generator seeded k, as the committed
``benchmarks/results`` run) against the benchmark's cached reference solve, so the number sits beside
diffusers' rows of ``benchmarks/results/results.csv`` (as committed in 9a133d8): the script prints diffusers' best at 2 x NFE.
Each result is appended to ``benchmarks/tuning/results.jsonl`` and (unless --no-ship) merged into
``sde_diffusion/assets/<model>/tuned.json``, atomically, replacing the shipped configuration of the same
solver/steps unless that one has the lower MSE over validation + held-out x_T together (``--select``
rebuilds the shipped entries from the log by the same rule). The benchmark's x_T never enter a selection.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import time
from pathlib import Path

import torch

from sde_diffusion.checkpoints import ASSETS_DIR, load_model
from sde_diffusion.files import atomic_write_text
from sde_diffusion.sampling import sample
from sde_diffusion.tuning import load_tuned, tune

ROOT = Path(__file__).resolve().parent
BENCH = ROOT / "results"
OUT = ROOT / "tuning" / "results.jsonl"


# the committed benchmark run these numbers sit beside (its results.csv and cached reference solve)
BENCH_COMMIT = "9a133d8"


def _committed(path: str) -> bytes:
    """A file of the committed benchmark run, from git at BENCH_COMMIT (never the working tree: a rerun of
    the benchmark there may hold other x_T)."""
    return subprocess.run(["git", "show", f"{BENCH_COMMIT}:{path}"], cwd=ROOT.parent, check=True,
                          capture_output=True).stdout


def bench_set(model, n: int = 128):
    """The committed benchmark's x_T (seed k -> first randn) and its cached reference solve."""
    from safetensors.torch import load

    x = torch.stack([torch.randn(tuple(model.sample_shape), generator=torch.Generator().manual_seed(k)) for k in range(n)])
    sha = model.config["weights"]["sha256"][:16]
    ref = load(_committed(f"benchmarks/results/cache/pf_dopri5_tol1e-06_digits-{sha}_seed0_n{n}.safetensors"))["x"]
    return x, ref


def diffusers_best(nfe: int):
    """(rmse, scheduler, spacing) of diffusers' best row at this NFE in the committed benchmark."""
    text = _committed("benchmarks/results/results.csv").decode()
    rows = [r for r in csv.DictReader(io.StringIO(text)) if r["library"] == "diffusers"
            and r["metric"] == "rmse_ref" and int(r["target_nfe"]) == nfe and int(r["nfe"]) <= nfe]
    if not rows:
        return None
    r = min(rows, key=lambda r: float(r["value"]))
    return float(r["value"]), r["solver"], r["spacing"]


def heldout_mse(r) -> float:
    """Mean squared error over validation + held-out x_T together (the selection score between tunes of the
    same solver/steps; the benchmark's x_T stay untouched by any selection)."""
    v, h = r["validation"], r["holdout"]
    n = v["n"] + h["n"]
    return (v["n"] * v["rmse"] ** 2 + h["n"] * h["rmse"] ** 2) / n


def select_from_log(model_name: str, solvers=None) -> None:
    """Rebuild the shipped tuned.json entries from benchmarks/tuning/results.jsonl: per (solver, steps, guidance)
    the tune with the lowest validation + held-out MSE; entries without such a record are kept as they are."""
    ship = ASSETS_DIR / model_name / "tuned.json"
    configs = load_tuned(ship) if ship.is_file() else []
    best = {}
    for line in open(OUT):
        r = json.loads(line)
        if r.get("model") != model_name or r["validation"]["rmse"] is None or r["holdout"]["rmse"] is None:
            continue
        if solvers is not None and r["solver"] not in solvers:
            continue
        k = (r["solver"], int(r["steps"]), r.get("guidance"))
        if k not in best or heldout_mse(r) < heldout_mse(best[k]):
            best[k] = r
    keep = [c for c in configs if (c["solver"], int(c["steps"]), c.get("guidance")) not in best]
    for k, r in sorted(best.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        print(f"{k[0]}/{k[1]}: {r['method']} | validation {r['validation']['rmse']:.4f} held-out {r['holdout']['rmse']:.4f} "
              f"benchmark {r['benchmark']['rmse']:.4f}")
    atomic_write_text(ship, json.dumps({"configs": keep + list(best.values())}, indent=1) + "\n")


def record(r: dict, model, model_name: str, x_b, ref_b, ship, t0=None) -> None:
    """Score tune result ``r`` on the benchmark x_T, append it to results.jsonl and (``ship``: the model's tuned.json)
    ship it unless the shipped configuration of that solver/steps has a lower validation + held-out MSE."""
    solver, nfe = r["solver"], int(r["nfe"])
    r["model"] = model_name
    out = sample(model, x_b, solver=solver, tuned=r).samples
    r["benchmark"] = {"n": x_b.shape[0], "seeds": "0..n-1 (benchmarks/results)",
                      "rmse": float(((out.double() - ref_b.double()) ** 2).mean().sqrt())}
    best2 = diffusers_best(2 * nfe)
    if best2:
        r["benchmark"]["diffusers_best_at_2x"] = {"rmse": best2[0], "scheduler": best2[1], "spacing": best2[2],
                                                  "ratio": r["benchmark"]["rmse"] / best2[0]}
    line = (f"{solver} NFE {nfe}: calibration {r['calibration']['rmse']:.4f} (start {r['calibration']['start_rmse']:.4f}) "
            f"validation {r['validation']['rmse']:.4f} holdout {r['holdout']['rmse']:.4f} "
            f"(start {r['holdout']['start_rmse']:.4f}) benchmark x_T {r['benchmark']['rmse']:.4f}")
    if best2:
        line += f" | diffusers best @NFE {2 * nfe}: {best2[0]:.4f} ({best2[1]}, {best2[2]}) ratio {r['benchmark']['rmse'] / best2[0]:.2f}"
    line += f" | {r['wall_s']:.0f} s tune ({r['reference_s']:.0f} s references), {r['evaluations']} solves, {time.perf_counter() - t0:.0f} s total" if t0 else ""
    print(line, flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "a") as f:
        f.write(json.dumps(r) + "\n")
    if ship is not None:
        configs = load_tuned(ship) if ship.is_file() else []
        same = lambda c: c["solver"] == r["solver"] and int(c["steps"]) == int(r["steps"]) and c.get("guidance") == r.get("guidance")  # noqa: E731
        old = [c for c in configs if same(c)]
        if old and old[0].get("holdout", {}).get("rmse") is not None \
                and heldout_mse(old[0]) <= heldout_mse(r):
            print(f"  keeping the shipped {solver}/{r['steps']} (validation + held-out MSE "
                  f"{heldout_mse(old[0]):.5f} <= {heldout_mse(r):.5f})", flush=True)
            return
        configs = [c for c in configs if not same(c)] + [r]
        atomic_write_text(ship, json.dumps({"configs": configs}, indent=1) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits")
    p.add_argument("--solvers", default="dpmpp_2m")
    p.add_argument("--nfe", default="5,10")
    p.add_argument("--calibration", type=int, default=256)
    p.add_argument("--validation", type=int, default=64)
    p.add_argument("--holdout", type=int, default=128)
    p.add_argument("--maxfev", type=int, default=300)
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--option", action="append", default=[], help="solver option KEY=JSON for every tune")
    p.add_argument("--no-coefficients", action="store_true")
    p.add_argument("--time-shifts", action="store_true", help="also learn per-step network times (dpmpp_2m)")
    p.add_argument("--no-ship", action="store_true")
    p.add_argument("--init", default=None, help="starting grids, comma-separated (tune --init)")
    p.add_argument("--start", default="free", choices=["free", "fixed", "both"])
    p.add_argument("--record", nargs="+", default=None, metavar="FILE",
                   help="record tune JSONs made elsewhere (e.g. by `sde-diffusion tune --out`) like a tune of this script")
    p.add_argument("--select", action="store_true",
                   help="only rebuild the shipped tuned.json from results.jsonl (lowest validation + held-out MSE)")
    a = p.parse_args(argv)
    if a.select:
        return select_from_log(a.model, a.solvers.split(","))
    torch.set_num_threads(1)
    model = load_model(a.model)
    x_b, ref_b = bench_set(model)
    ship = ASSETS_DIR / a.model / "tuned.json"
    if a.record:
        for f in a.record:
            for r in load_tuned(f):
                record(dict(r), model, a.model, x_b, ref_b, None if a.no_ship else ship)
        return
    cache = os.path.expanduser("~/.cache/sde_diffusion/tune-references")
    opts = {k: json.loads(v) for k, v in (o.split("=", 1) for o in a.option)}
    ship = ASSETS_DIR / a.model / "tuned.json"
    for solver in a.solvers.split(","):
        for nfe in map(int, a.nfe.split(",")):
            t0 = time.perf_counter()
            r = tune(model, solver, nfe, calibration=a.calibration, validation=a.validation, holdout=a.holdout,
                     maxfev=a.maxfev, patience=a.patience, cache=cache, options=opts, coefficients=False if a.no_coefficients else None,
                     time_shifts=a.time_shifts, free_start={"free": True, "fixed": False, "both": None}[a.start],
                     inits=None if a.init is None else a.init.split(","), progress=True)
            record(r, model, a.model, x_b, ref_b, None if a.no_ship else ship, t0)


if __name__ == "__main__":
    main()
