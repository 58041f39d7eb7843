"""Does tuning change the conditioning quality of guided few-step samples? (issue 15, deliverable 4)

For each NFE K: ``--per-class`` samples of every class of ``digits-cond`` with ``dpmpp_2m`` at guidance
``--guidance``, once with the solver's default spacing and once with a tuned configuration (``--tuned``
FILEs, or the configurations shipped with the model when none is given), from the SAME x_T (seeds as in
``benchmarks/cond_quality.py``: class k uses seed + k * per_class for its batch). A sample *hits* when
the shipped digits classifier's argmax is its class with softmax confidence >= 0.9 (the criterion of
``benchmarks/cond_quality.py``); ``--spacings`` adds untuned spacings for comparison. Reported per K: the hit rate over all classes, the worst class, the
argmax rate, and the paired counts (tuned hits where default misses, and the reverse).

    OMP_NUM_THREADS=1 python benchmarks/tuning_cond/cond_accuracy.py --nfe 3,5,10 --per-class 50 \
        --tuned benchmarks/tuning_cond/dpmpp_2m-3.json benchmarks/tuning_cond/dpmpp_2m-5.json ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def hits(model, clf, solver, k_nfe, guidance, per_class, seed, confidence, **spacing_kw):
    n_classes = int(model.conditioning["class_labels"]["num_classes"])
    from sde_diffusion.sampling import sample

    hit, arg = [], []
    for k in range(n_classes):
        y = torch.full((per_class,), k, dtype=torch.long)
        x = sample(model, shape=(per_class, *model.sample_shape), solver=solver, steps=k_nfe,
                   seed=seed + k * per_class, cond={"class_labels": y}, guidance=guidance, **spacing_kw).samples
        p = torch.softmax(clf.logits(x), dim=1)
        conf, pred = p.max(dim=1)
        hit.append((pred == k) & (conf >= confidence))
        arg.append(pred == k)
    return torch.stack(hit), torch.stack(arg)  # (classes, per_class) booleans


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="digits-cond")
    ap.add_argument("--solver", default="dpmpp_2m")
    ap.add_argument("--nfe", default="3,5,10", help="comma-separated NFE list")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--tuned", nargs="*", help="tuned JSON files (default: the model's shipped tuned.json)")
    ap.add_argument("--spacings", default="", help="comma-separated untuned spacings also scored (e.g. uniform)")
    ap.add_argument("--out", help="write the JSON record here")
    a = ap.parse_args(argv)

    from sde_diffusion.checkpoints import load_model
    from sde_diffusion.classifier import load_classifier
    from sde_diffusion.tuned_files import load_tuned

    model = load_model(a.model)
    clf = load_classifier().eval()
    tuned = None
    if a.tuned:
        tuned = [c for f in a.tuned for c in load_tuned(f)]
    rows = []
    with torch.no_grad():
        for K in [int(v) for v in a.nfe.split(",")]:
            t0 = time.perf_counter()
            hd, ad = hits(model, clf, a.solver, K, a.guidance, a.per_class, a.seed, a.confidence)
            kw = {"tuned": tuned} if tuned is not None else {"spacing": "tuned"}
            ht, at = hits(model, clf, a.solver, K, a.guidance, a.per_class, a.seed, a.confidence, **kw)
            row = {
                "nfe": K,
                "default": {"hit_rate": hd.float().mean().item(), "worst_class_hit_rate": hd.float().mean(1).min().item(),
                            "argmax_rate": ad.float().mean().item(), "per_class": [round(v, 3) for v in hd.float().mean(1).tolist()]},
                "tuned": {"hit_rate": ht.float().mean().item(), "worst_class_hit_rate": ht.float().mean(1).min().item(),
                          "argmax_rate": at.float().mean().item(), "per_class": [round(v, 3) for v in ht.float().mean(1).tolist()]},
                "tuned_hit_default_miss": int((ht & ~hd).sum()), "default_hit_tuned_miss": int((hd & ~ht).sum()),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            for sp in [v for v in a.spacings.split(",") if v]:
                hs, as_ = hits(model, clf, a.solver, K, a.guidance, a.per_class, a.seed, a.confidence, spacing=sp)
                row[sp] = {"hit_rate": hs.float().mean().item(), "worst_class_hit_rate": hs.float().mean(1).min().item(),
                           "argmax_rate": as_.float().mean().item()}
                print(f"NFE {K}: hit rate with spacing {sp!r}: {row[sp]['hit_rate']:.3f} (worst class "
                      f"{row[sp]['worst_class_hit_rate']:.2f})", flush=True)
            rows.append(row)
            print(f"NFE {K}: hit rate default {row['default']['hit_rate']:.3f} (worst class "
                  f"{row['default']['worst_class_hit_rate']:.2f}) tuned {row['tuned']['hit_rate']:.3f} (worst class "
                  f"{row['tuned']['worst_class_hit_rate']:.2f}); paired: tuned-only hits {row['tuned_hit_default_miss']}, "
                  f"default-only hits {row['default_hit_tuned_miss']}", flush=True)
    rec = {"model": a.model, "solver": a.solver, "guidance": a.guidance, "per_class": a.per_class, "seed": a.seed,
           "confidence": a.confidence, "tuned": a.tuned or "shipped", "rows": rows, "torch": torch.__version__}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rec, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
