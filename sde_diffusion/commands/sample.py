"""``sde-diffusion sample``: draw samples from a model with any solver, write a PNG grid or .npz."""

from __future__ import annotations

import json
import time
from pathlib import Path


def _option(text: str):
    if "=" not in text:
        raise ValueError(f"--option must look like KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except ValueError:
        return k, v  # a plain string (e.g. method=dopri5)


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample from a model with any solver; write a PNG grid or an .npz")
    p.add_argument("--model", default="digits", help="shipped name (digits), a model folder, a diffusers pipeline folder, or module:attribute")
    p.add_argument("--solver", default="dpmpp_2m", help="solver name (see `sde-diffusion solvers`)")
    p.add_argument("--steps", type=int, default=None, help="number of grid steps (not for adaptive solvers)")
    p.add_argument("--spacing", default=None, help="time spacing: uniform, quadratic, logsnr, karras, leading, trailing, linspace")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (0 = deterministic)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="any other solver option, e.g. order=3 or rtol=1e-6 (repeatable)")
    p.add_argument("-n", "--num-samples", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per network call (default 256)")
    p.add_argument("--seed", type=int, default=0, help="sample k uses seed + k, so results do not depend on the batch size")
    p.add_argument("--noise", default="gaussian", choices=["gaussian", "brownian"], help="noise of stochastic solvers")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--out", required=True, help="output file: .png (grid) or .npz (raw samples under key 'samples')")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def resolve_model(spec: str, device: str = "cpu"):
    """A NoisePredictor from a shipped name, a folder, or ``module:attribute``."""
    if ":" in spec and not Path(spec).exists() and not (len(spec) > 1 and spec[1] == ":"):
        from ..byom import load_callable

        return load_callable(spec)
    from ..checkpoints import load_model

    return load_model(spec, device=device)


def run(args) -> int:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from ..cli import CLIError
    from ..noise import make_noise
    from ..randomness import per_sample_generators
    from ..sampling import resolve_solver, sample

    out = Path(args.out)
    if out.suffix not in (".png", ".npz"):
        raise CLIError(f"--out must end in .png or .npz, got {args.out!r}")
    if args.num_samples < 1 or args.batch_size < 1:
        raise CLIError("-n and --batch-size must be >= 1")
    resolve_solver(args.solver)  # fail fast on an unknown name
    options = dict(_option(o) for o in args.option)
    if args.eta is not None:
        options["eta"] = args.eta
    from .. import distributed

    dist = distributed.init(args.device)
    model = resolve_model(args.model, str(dist.device))
    if model.sample_shape is None:
        raise CLIError(f"model {args.model!r} does not say its sample shape; give it a sample_shape attribute (C, H, W)")
    shape = tuple(model.sample_shape)
    mine = dist.shard(args.num_samples)  # this rank's sample indices; sample k is seeded seed + k
    chunks, nfe, t0 = [], 0, time.perf_counter()
    bar = tqdm(total=len(mine), desc=f"sample {args.solver}", unit="img", disable=args.no_progress or not dist.is_main)
    for start in range(mine.start, mine.stop, args.batch_size):
        b = min(args.batch_size, mine.stop - start)
        gens = per_sample_generators(args.seed + start, b)
        x_T = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(dist.device)
        seeds = list(range(args.seed + start, args.seed + start + b))
        noise = "gaussian" if args.noise == "gaussian" else make_noise("brownian", x_T.shape, seeds=seeds, device=dist.device)
        res = sample(model, x_T, solver=args.solver, steps=args.steps, spacing=args.spacing, generator=gens,
                     noise=noise, **options)
        chunks.append(res.samples.float().cpu())
        nfe = res.nfe
        bar.update(b)
    bar.close()
    local = torch.cat(chunks) if chunks else torch.zeros((0, *shape))
    x = dist.gather_cat(local)
    dist.close()
    if not dist.is_main:
        return 0
    lo, hi = (model.config.get("data", {}).get("range", [-1.0, 1.0]) if hasattr(model, "config") else [-1.0, 1.0])
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".png":
        from ..images import save_grid

        save_grid(x, out, value_range=(lo, hi))
    else:
        tmp = out.with_name(out.name + ".tmp.npz")
        np.savez(tmp, samples=x.numpy().astype(np.float32), nfe=nfe, solver=args.solver)
        tmp.replace(out)
    print(f"wrote {out} ({len(x)} samples, solver {args.solver}, NFE {nfe} per sample, {time.perf_counter() - t0:.1f} s)")
    return 0
