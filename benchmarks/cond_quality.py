"""Quality of a class-conditional digits model under classifier-free guidance, judged by the
shipped digits classifier (issue 12, item 3).

For every class k: ``--per-class`` samples asked for k with ``sde_diffusion.sample`` (``--solver``
at ``--steps`` NFE, ``guidance=--guidance``); a sample *hits* when the classifier's argmax is k with
softmax confidence >= 0.9. The bar: every class hits on at least 90% of its samples. Then
unconditional samples (the null class): the share of each predicted class, which should cover all
ten digits (each >= 5%).

    python benchmarks/cond_quality.py --model digits-cond --guidance 2 --steps 20 --per-class 100

Writes a JSON record with ``--out``; exit status 0 when the bar is met, 1 otherwise. Seeds come
from ``--seed`` (sample i of class k uses seed + k * per_class + i, unconditional ones continue after).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def evaluate(model_name: str, guidance: float, steps: int, per_class: int, solver: str, seed: int,
             n_uncond: int, confidence: float = 0.9) -> dict:
    from sde_diffusion.checkpoints import load_model
    from sde_diffusion.classifier import load_classifier
    from sde_diffusion.sampling import sample

    model = load_model(model_name)
    spec = (model.conditioning or {}).get("class_labels")
    if not spec:
        raise SystemExit(f"error: model {model_name!r} is not class-conditional")
    n_classes = int(spec["num_classes"])
    clf = load_classifier().eval()
    t0 = time.perf_counter()
    rows = []
    with torch.no_grad():
        for k in range(n_classes):
            y = torch.full((per_class,), k, dtype=torch.long)
            x = sample(model, shape=(per_class, *model.sample_shape), solver=solver, steps=steps,
                       seed=seed + k * per_class, cond={"class_labels": y}, guidance=guidance).samples
            p = torch.softmax(clf.logits(x), dim=1)
            conf, pred = p.max(dim=1)
            hit = ((pred == k) & (conf >= confidence)).float().mean().item()
            rows.append({"class": k, "hit_rate": hit, "argmax_rate": (pred == k).float().mean().item()})
            print(f"class {k}: {hit:.1%} classified as {k} with confidence >= {confidence}", flush=True)
        x = sample(model, shape=(n_uncond, *model.sample_shape), solver=solver, steps=steps,
                   seed=seed + n_classes * per_class).samples
        pred = clf.logits(x).argmax(1)
    shares = torch.bincount(pred, minlength=n_classes).float() / n_uncond
    worst = min(r["hit_rate"] for r in rows)
    return {
        "model": model_name, "solver": solver, "steps": steps, "guidance": guidance, "per_class": per_class,
        "seed": seed, "confidence": confidence, "classes": rows, "worst_hit_rate": worst,
        "unconditional": {"n": n_uncond, "class_shares": [round(float(s), 4) for s in shares]},
        "pass_conditional": worst >= 0.9, "pass_unconditional": bool(shares.min() >= 0.05),
        "seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="digits-cond", help="shipped name or model folder (default digits-cond)")
    ap.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale (default 2)")
    ap.add_argument("--steps", type=int, default=20, help="solver steps = NFE for dpmpp_2m (default 20)")
    ap.add_argument("--solver", default="dpmpp_2m", help="solver name (default dpmpp_2m)")
    ap.add_argument("--per-class", type=int, default=100, help="samples per class (default 100)")
    ap.add_argument("--uncond", type=int, default=500, help="unconditional samples (default 500)")
    ap.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    ap.add_argument("--out", help="write the JSON record here")
    a = ap.parse_args(argv)
    rec = evaluate(a.model, a.guidance, a.steps, a.per_class, a.solver, a.seed, a.uncond)
    print(json.dumps({k: v for k, v in rec.items() if k != "classes"}, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rec, f, indent=1)
    return 0 if rec["pass_conditional"] and rec["pass_unconditional"] else 1


if __name__ == "__main__":
    sys.exit(main())
