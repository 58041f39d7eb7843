"""Held-out error of guided digits-cond configurations, per x_T (issue 15, deliverable 4).

On the tune protocol's held-out set (stream ``tune-holdout``, 128 x_T, class k mod 10, guidance 2) and its
tight probability-flow reference (read from the tune cache, or solved when absent), for each NFE K:
the RMSE over all pixels (what ``tune`` reports), the median per-x_T RMSE, and the RMSE without the
single worst x_T, for (a) ``dpmpp_2m`` with the solver's default spacing (what a user gets without
``spacing="tuned"``), (b) the tune's start (its recorded start spacing with standard DPM-Solver++(2M)
weights; for ``leading-span`` diffusers' multistep leading times (K - j)/(K + 1), j < K, then 0), (c) each
tuned FILE given for that K.

    OMP_NUM_THREADS=1 python benchmarks/tuning_cond/heldout_breakdown.py --nfe 5 \
        --tuned benchmarks/tuning_cond/dpmpp_2m-5.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch


def stats(out, ref):
    per = ((out.double() - ref.double()) ** 2).flatten(1).mean(1)  # per-x_T mean squared error
    worst = int(per.argmax())
    keep = torch.ones_like(per, dtype=torch.bool)
    keep[worst] = False
    return {"rmse": float(per.mean().sqrt()), "median_rmse": float(per.sqrt().median()),
            "rmse_without_worst": float(per[keep].mean().sqrt()), "worst_index": worst,
            "worst_rmse": float(per[worst].sqrt())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="digits-cond")
    ap.add_argument("--nfe", default="3,4,5,6,8,10")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--holdout", type=int, default=128)
    ap.add_argument("--tuned", nargs="*", default=[], help="tuned JSON files (each used at its own NFE)")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/sde_diffusion/tune-references"))
    ap.add_argument("--out")
    a = ap.parse_args(argv)

    from sde_diffusion.checkpoints import load_model
    from sde_diffusion.grids import time_grid
    from sde_diffusion.sampling import sample
    from sde_diffusion.tuned_files import load_tuned
    from sde_diffusion.tuning import draw_noise, reference_solve

    model = load_model(a.model)
    C = int(model.conditioning["class_labels"]["num_classes"])
    x = draw_noise(model, "tune-holdout", a.holdout)
    y = torch.arange(a.holdout) % C
    kw = {"cond": {"class_labels": y}, "guidance": a.guidance}
    ref = reference_solve(model, x, cache=a.cache or None, sample_kwargs=kw)
    rx = ref.flatten(1).abs().amax(1)
    print(f"reference: max |x0| per x_T: median {float(rx.median()):.2f}, max {float(rx.max()):.2f} (x_T {int(rx.argmax())})")
    tuned = [(f, c) for f in a.tuned for c in load_tuned(f)]
    rows = []
    with torch.no_grad():
        for K in [int(v) for v in a.nfe.split(",")]:
            row = {"nfe": K, "default": stats(sample(model, x, solver="dpmpp_2m", steps=K, **kw).samples, ref)}
            for f, c in tuned:
                if int(c["steps"]) == K and "start" not in row:
                    sp = c["start"]["spacing"]
                    g = (torch.tensor([(K - j) / (K + 1) for j in range(K)] + [0.0], dtype=torch.float64)
                         if sp == "leading-span" else time_grid(model.sde, K, sp))
                    row["start"] = stats(sample(model, x, solver="dpmpp_2m", ts=g, **kw).samples, ref)
                    row["start"]["spacing"] = sp
                if int(c["steps"]) == K:
                    out = sample(model, x, solver="dpmpp_2m", tuned=c, steps=K, **kw).samples
                    row[str(f)] = stats(out, ref)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump({"model": a.model, "guidance": a.guidance, "holdout": a.holdout,
                       "reference_max_abs": [float(v) for v in rx], "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
