"""Score the shipped tuned configurations on the benchmark's x_T against diffusers at twice the NFE.

    OMP_NUM_THREADS=1 python benchmarks/tune_eval.py [--model digits] [--peers-at 6,8,12,16]

For every configuration in ``sde_diffusion/assets/<model>/tuned.json`` (unguided): the pixel RMSE against
the committed benchmark's reference solve on its x_T (seeds 0..127, ``tune_grids.bench_set``) with a 95%
bootstrap interval, and, when the solver has a diffusers peer (dpmpp_2m -> DPMSolverMultistepScheduler),
the RMSE of that scheduler run on the exported grid alone (``set_timesteps(timesteps=...)``): what a
diffusers user gets from ``tune --export diffusers``. diffusers' best at 2 x NFE is read from the committed
benchmark for NFE 10 and 20 and measured here (same x_T, every multistep scheduler and spacing) for the
NFEs in --peers-at. Writes ``benchmarks/tuning/eval.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_grids import bench_set, diffusers_best  # noqa: E402

from sde_diffusion.checkpoints import ASSETS_DIR, load_model  # noqa: E402
from sde_diffusion.grids import time_grid  # noqa: E402
from sde_diffusion.sampling import sample  # noqa: E402
from sde_diffusion.tuning import export_diffusers, load_tuned  # noqa: E402

# solvers whose diffusers scheduler takes set_timesteps(timesteps=...) (UniPC's does not)
PEER_OF = {"dpmpp_2m": "dpmpp_2m", "dpmpp_3m": "dpmpp_3m"}
MULTISTEP_PEERS = ("dpmpp_2m", "dpmpp_3m", "unipc", "deis", "ddim", "euler", "heun")


def rmse_ci(out, ref, n_boot=1000, seed=0):
    e = ((out.double() - ref.double()) ** 2).flatten(1).mean(1)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, e.numel(), (n_boot, e.numel()), generator=g)
    boots = e[idx].mean(1).sqrt()
    return float(e.mean().sqrt()), float(torch.quantile(boots, 0.025)), float(torch.quantile(boots, 0.975))


def run_grid_in_diffusers(model, peer, timesteps, x):
    from sde_diffusion.interop.peers import make_scheduler

    sched = make_scheduler(peer, model, "trailing")
    sched.set_timesteps(timesteps=list(timesteps))
    N = model.sde.num_train_steps
    y = x * sched.init_noise_sigma
    with torch.no_grad():
        for tau in sched.timesteps:
            y = sched.step(model.eps(y, (float(tau) + 1.0) / N), tau, y).prev_sample
    return y


def peers_best(model, x, ref, nfe):
    from sde_diffusion.interop.peers import PEERS, peer_nfe, peer_spacings, run_peer

    best = None
    for name in MULTISTEP_PEERS:
        if name not in PEERS:
            continue
        k = (nfe + 1) // 2 if name == "heun" else nfe
        if peer_nfe(name, k) > nfe:
            continue
        for sp in peer_spacings(name):
            try:
                out, used = run_peer(model, name, k, x, spacing=sp)
            except (ValueError, RuntimeError):
                continue
            v = float(((out.double() - ref.double()) ** 2).mean().sqrt())
            if best is None or v < best[0]:
                best = (v, name, sp)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits")
    p.add_argument("--peers-at", default="6,8,12,16")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model(a.model)
    x, ref = bench_set(model)
    peers = {n: diffusers_best(n) for n in (10, 20)}
    dest = Path(__file__).resolve().parent / "tuning" / "eval.json"
    done = json.loads(dest.read_text()).get("peers_best", {}) if dest.is_file() else {}
    for n in (int(v) for v in a.peers_at.split(",") if v):
        peers[n] = tuple(done[str(n)]) if done.get(str(n)) else peers_best(model, x, ref, n)
        print(f"diffusers best at NFE {n}: {peers[n]}", flush=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps({"peers_best": {str(k): v for k, v in peers.items()}, "rows": []}, indent=1) + "\n")
    rows = []
    for c in load_tuned(ASSETS_DIR / a.model / "tuned.json"):
        if c.get("guidance") not in (None, 1, 1.0):
            continue
        out = sample(model, x, solver=c["solver"], tuned=c)
        row = dict(solver=c["solver"], nfe=out.nfe, steps=c["steps"], rmse=rmse_ci(out.samples, ref),
                   calibration=c.get("calibration", {}).get("rmse"), validation=c.get("validation", {}).get("rmse"),
                   holdout=c.get("holdout", {}).get("rmse"), method=c.get("method"), parameters=c.get("parameters"),
                   wall_s=c.get("wall_s"), solves=c.get("evaluations"))
        e = ((out.samples.double() - ref.double()) ** 2).flatten(1).mean(1)
        row["median_sample_rmse"] = float(e.sqrt().median())
        row["holdout_median_sample_rmse"] = c.get("holdout", {}).get("median_sample_rmse")
        sp = c.get("start", {}).get("spacing")
        if sp and sp.startswith("tuned:"):  # a bespoke tune started from a shipped configuration (as its matrix)
            from sde_diffusion.tuning_params import shipped_matrices

            g, A = shipped_matrices(model, c["steps"], None)[sp]
            row["start"] = dict(spacing=sp, rmse=rmse_ci(sample(model, x, solver="bespoke", ts=g, coefficients=A,
                                                                **{k: v for k, v in c["options"].items() if k != "coefficients"}).samples, ref))
        elif sp:  # the standard configuration the tune started from, on the same x_T
            K = c["steps"]
            g = (torch.tensor([(K - j) / (K + 1) for j in range(K)] + [0.0], dtype=torch.float64) if sp == "leading-span"
                 else time_grid(model.sde, K, sp))
            o = {k: v for k, v in c["options"].items() if k not in ("coefficients", "eval_times")}
            row["start"] = dict(spacing=sp, rmse=rmse_ci(sample(model, x, solver=c["solver"], ts=g, **o).samples, ref))
        d = peers.get(2 * out.nfe)
        if d:
            row["diffusers_2x"] = dict(rmse=d[0], scheduler=d[1], spacing=d[2], ratio=row["rmse"][0] / d[0])
        if c["solver"] in PEER_OF and c["ts"][-1] == 0.0:
            ex = export_diffusers(c, model)
            y = run_grid_in_diffusers(model, PEER_OF[c["solver"]], ex["timesteps"], x)
            row["diffusers_on_exported_grid"] = rmse_ci(y, ref)
        rows.append(row)
        print(json.dumps(row), flush=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"peers_best": {str(k): v for k, v in peers.items()}, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
