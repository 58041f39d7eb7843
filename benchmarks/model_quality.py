"""Quality of a digits diffusion model, judged by the shipped digits classifier.

Draws N samples with deterministic DDIM (eta = 0; Song, Meng & Ermon 2021) on the model's discrete
chain, with a self-contained sampling loop (no dependency on ``sde_diffusion.sampling``), then reports:

* confident share: fraction of samples whose top softmax probability is >= 0.9, against the same
  share for the real TEST digits; the bar is ``ratio = gen / real >= 0.9``;
* per-class shares: argmax class of every sample; the bar is every class >= 5%;
* FD-digits: Frechet distance (Heusel et al. 2017) between classifier features of the samples and
  of the real test split (reference: train split vs test split).

    python benchmarks/model_quality.py --model digits --n 1000 --steps 50 --seed 0

Exit status 0 when every model passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch


def ddim_timesteps(n_train: int, steps: int) -> list:
    """Decreasing integer indices from n_train - 1 to 0, evenly spaced."""
    ts = np.unique(np.round(np.linspace(0, n_train - 1, steps)).astype(int))[::-1]
    return [int(t) for t in ts]


@torch.no_grad()
def ddim_sample(net, alphas_cumprod: torch.Tensor, shape, n: int, steps: int = 50, seed: int = 0, batch: int = 250) -> torch.Tensor:
    """DDIM eta=0: x0 = (x - s eps)/a;  x_prev = a_prev x0 + s_prev eps  (a_prev = 1 after the last step)."""
    ac = alphas_cumprod.to(torch.float64)
    ts = ddim_timesteps(len(ac), steps)
    g = torch.Generator().manual_seed(seed)
    x_all = torch.randn((n, *shape), generator=g)
    out = []
    for i0 in range(0, n, batch):
        x = x_all[i0:i0 + batch].clone()
        for k, t in enumerate(ts):
            a, s = float(ac[t].sqrt()), float((1 - ac[t]).sqrt())
            eps = net(x, torch.full((x.shape[0],), float(t)))
            x0 = (x - s * eps) / a
            if k + 1 < len(ts):
                tp = ts[k + 1]
                a_prev, s_prev = float(ac[tp].sqrt()), float((1 - ac[tp]).sqrt())
            else:
                a_prev, s_prev = 1.0, 0.0
            x = a_prev * x0 + s_prev * eps
        out.append(x)
    return torch.cat(out)


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)); tr (C1 C2)^(1/2) = sum sqrt(eig(C1 C2)), which are
    real and >= 0 for PSD C1, C2 (clipped against round-off)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvals(c1 @ c2).real, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * tr_covmean)


@torch.no_grad()
def evaluate(model: str, n: int = 1000, steps: int = 50, seed: int = 0, batch: int = 250, threshold: float = 0.9) -> dict:
    from sde_diffusion.checkpoints import load_model
    from sde_diffusion.classifier import load_classifier
    from sde_diffusion.data import load_digits_with_labels

    pred = load_model(model)
    if tuple(pred.sample_shape) != (1, 8, 8):
        raise ValueError(f"{model}: not a digits model (sample_shape {pred.sample_shape})")
    clf = load_classifier()
    x_test, y_test = load_digits_with_labels("test")
    x_train, _ = load_digits_with_labels("train")
    t0 = time.perf_counter()
    x = ddim_sample(pred.net, pred.sde.alphas_cumprod, pred.sample_shape, n, steps, seed, batch)
    wall = time.perf_counter() - t0
    p_gen = torch.softmax(clf.logits(x), 1)
    p_real = torch.softmax(clf.logits(x_test), 1)
    gen_share = float((p_gen.max(1).values >= threshold).float().mean())
    real_share = float((p_real.max(1).values >= threshold).float().mean())
    counts = torch.bincount(p_gen.argmax(1), minlength=10).tolist()
    class_shares = [c / n for c in counts]
    f_gen, f_test, f_train = (clf.features(v).numpy().astype(np.float64) for v in (x, x_test, x_train))
    res = {
        "model": model,
        "training_steps": pred.config.get("training", {}).get("steps"),
        "n": n, "ddim_steps": steps, "seed": seed,
        "test_accuracy": float((p_real.argmax(1) == y_test).float().mean()),
        "real_confident_share": real_share,
        "gen_confident_share": gen_share,
        "share_ratio": gen_share / real_share,
        "class_shares": class_shares,
        "min_class_share": min(class_shares),
        "fd_digits_gen_vs_test": frechet_distance(f_gen, f_test),
        "fd_digits_train_vs_test": frechet_distance(f_train, f_test),
        "out_of_range_fraction": float((x.abs() > 1.05).float().mean()),
        "sampling_seconds": wall,
    }
    try:  # cross-check the local loop against the library's DDIM solver, when available
        from sde_diffusion.sampling import sample

        xt = torch.randn((8, *pred.sample_shape), generator=torch.Generator().manual_seed(seed + 1))
        ts = ddim_timesteps(pred.sde.num_train_steps, steps)
        lib = sample(pred, xt.clone(), solver="ddim", timesteps=ts, eta=0.0).samples
        loc = ddim_sample(pred.net, pred.sde.alphas_cumprod, pred.sample_shape, 8, steps, seed + 1, batch)
        res["library_ddim_max_abs_diff"] = float((lib - loc).abs().max())
    except Exception as e:  # noqa: BLE001 - report, don't fail the quality numbers
        res["library_ddim_max_abs_diff"] = f"unavailable ({type(e).__name__}: {e})"
    res["passed"] = bool(res["share_ratio"] >= 0.9 and res["min_class_share"] >= 0.05)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", nargs="+", default=["digits"], help="shipped name(s) or model folder(s)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    results, ok = [], True
    for m in args.model:
        r = evaluate(m, args.n, args.steps, args.seed, args.batch)
        results.append(r)
        ok &= r["passed"]
        print(f"== {m} (trained {r['training_steps']} steps), {r['n']} samples, DDIM eta=0 {r['ddim_steps']} steps, seed {r['seed']}")
        print(f"  classifier test accuracy          {r['test_accuracy']:.4f}")
        print(f"  confident (p>=0.9) share: real    {r['real_confident_share']:.4f}   generated {r['gen_confident_share']:.4f}"
              f"   ratio {r['share_ratio']:.4f} (bar 0.90)")
        print("  class shares (argmax)             " + " ".join(f"{i}:{s:.3f}" for i, s in enumerate(r["class_shares"]))
              + f"   min {r['min_class_share']:.3f} (bar 0.05)")
        print(f"  FD-digits gen vs test {r['fd_digits_gen_vs_test']:.3f}   (train vs test {r['fd_digits_train_vs_test']:.3f})")
        print(f"  library DDIM vs local loop, max |diff| on 8 samples: {r['library_ddim_max_abs_diff']}")
        print(f"  |x| > 1.05 fraction {r['out_of_range_fraction']:.4f}; sampling {r['sampling_seconds']:.1f} s")
        print(f"  {'PASS' if r['passed'] else 'FAIL'}")
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
