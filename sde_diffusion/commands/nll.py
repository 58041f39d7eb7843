"""``sde-diffusion nll``: bits/dim of a data split by the probability-flow ODE, with the DDPM ELBO beside it.

See docs/likelihood.md for the method, the units and the dequantization offsets.
"""

from __future__ import annotations

import math
import time


def register(sub) -> None:
    p = sub.add_parser(
        "nll",
        help="negative log-likelihood in bits/dim (probability-flow ODE) and the DDPM ELBO",
        description="Exact likelihood through the probability-flow ODE (Song et al. 2021, App. D.2) in bits/dim "
        "of the dequantized discrete data, with a 95% confidence interval, NFE and time, and the discrete "
        "DDPM variational bound (Ho et al. 2020, eq. 5) beside it.",
    )
    p.add_argument("--model", default="digits", help="shipped name (digits) or a model folder")
    p.add_argument("--data", default="digits", help="'digits' (sklearn 8x8 digits, see --split) or a .npy/.npz file / PNG folder")
    p.add_argument("--split", default="test", choices=["train", "test", "all"], help="digits split (default test)")
    p.add_argument("--n", "--num-images", dest="n", type=int, default=None,
                   help="evaluate the first N images of the split (default all; under torchrun spell it --num-images)")
    p.add_argument("--batch-size", type=int, default=128, help="images per ODE solve (default 128)")
    p.add_argument("--trace", default="hutchinson", help="divergence: exact or hutchinson (default)")
    p.add_argument("--probes", type=int, default=1, help="Hutchinson probes per sample, fixed per solve (default 1)")
    p.add_argument("--noise", default="rademacher", help="Hutchinson probe distribution: rademacher (default) or gaussian")
    p.add_argument("--method", default="dopri5", help="ODE solver: torchdiffeq name (dopri5) or scipy:RK45 etc.")
    p.add_argument("--rtol", type=float, default=1e-5, help="solver relative tolerance (default 1e-5, as score_sde; 1e-4 is ~4x faster)")
    p.add_argument("--atol", type=float, default=1e-5, help="solver absolute tolerance (default 1e-5)")
    p.add_argument("--t-end", type=float, default=1e-5, help="integrate from t_end (data) to 1 (default 1e-5)")
    p.add_argument("--dequantize", default="centered", help="centered (default), uniform (score_sde) or none")
    p.add_argument("--num-bins", type=int, default=None, help="quantization levels of the data (default 17 for digits, else 256)")
    p.add_argument("--elbo-steps", type=int, default=None,
                   help="ELBO: all N-1 diffusion terms (default) or K stratified terms; 0 skips the ELBO")
    p.add_argument("--seed", type=int, default=0, help="image k uses seed + k for its dequantization/probes/ELBO noise")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def _mean_ci(v):
    """(mean, half-width of the 95% normal CI of the mean) of a 1-D tensor."""
    n = v.numel()
    sd = float(v.std()) if n > 1 else float("nan")
    return float(v.mean()), 1.96 * sd / math.sqrt(n)


def _load_data(args):
    if args.data == "digits":
        from ..data import load_digits

        return load_digits(args.split), "digits", 17
    from ..data import load_data

    return load_data(args.data), str(args.data), 256


def run(args) -> int:
    import torch

    from ..cli import CLIError
    from ..likelihood import DEQUANTIZE, NOISES, TRACES, elbo_bpd, log_likelihood
    from ..randomness import per_sample_generators
    from .sample import resolve_model

    if args.n is not None and args.n < 1:
        raise CLIError(f"--n must be >= 1, got {args.n}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.elbo_steps is not None and args.elbo_steps < 0:
        raise CLIError(f"--elbo-steps must be >= 0, got {args.elbo_steps}")
    if args.trace not in TRACES:
        raise CLIError(f"--trace must be one of {', '.join(TRACES)}; got {args.trace!r}")
    if args.noise not in NOISES:
        raise CLIError(f"--noise must be one of {', '.join(NOISES)}; got {args.noise!r}")
    if args.probes < 1:
        raise CLIError(f"--probes must be >= 1, got {args.probes}")
    deq = None if args.dequantize == "none" else args.dequantize
    if deq not in DEQUANTIZE:
        raise CLIError(f"--dequantize must be one of centered, uniform, none; got {args.dequantize!r}")
    from .. import distributed

    dist = distributed.init(args.device)  # under torchrun: test images are sharded by index
    model = resolve_model(args.model, device=str(dist.device))
    x, name, default_bins = _load_data(args)
    num_bins = args.num_bins or default_bins
    if args.n is not None:
        if args.n > len(x):
            raise CLIError(f"--n {args.n} exceeds the {len(x)} images of {name} {args.split}")
        x = x[: args.n]
    if model.sample_shape is not None and tuple(x.shape[1:]) != tuple(model.sample_shape):
        raise CLIError(f"data shape {tuple(x.shape[1:])} does not match the model's {tuple(model.sample_shape)}")
    do_elbo = args.elbo_steps != 0 and model.sde.num_train_steps is not None
    elbo_k = args.elbo_steps if args.elbo_steps else None

    from tqdm.auto import tqdm

    bpd, elbo, nfe, enfe = [], [], [], []
    t_ode = t_elbo = 0.0
    mine = dist.shard(len(x))
    starts = range(mine.start, mine.stop, args.batch_size)
    for s in tqdm(starts, desc="nll", unit="batch", disable=args.no_progress or not dist.is_main):
        xb = x[s: min(s + args.batch_size, mine.stop)].to(dist.device)
        gens = per_sample_generators(args.seed + s, len(xb))
        t0 = time.perf_counter()
        r = log_likelihood(model, xb, method=args.method, rtol=args.rtol, atol=args.atol, t_end=args.t_end,
                           trace=args.trace, probes=args.probes, noise=args.noise, dequantize=deq,
                           num_bins=num_bins, generator=gens)
        t_ode += time.perf_counter() - t0
        bpd.append(r.bpd)
        nfe.append(r.nfe)
        if do_elbo:
            t0 = time.perf_counter()
            e = elbo_bpd(model, xb, num_timesteps=elbo_k, decoder="discrete" if deq else "gaussian",
                         num_bins=num_bins, generator=per_sample_generators(args.seed + s, len(xb)))
            t_elbo += time.perf_counter() - t0
            elbo.append(e.bpd)
            enfe.append(e.nfe)

    n = len(x)
    empty = torch.zeros(0, dtype=torch.float64)
    bpd_all = dist.gather_cat(torch.cat(bpd).double().cpu() if bpd else empty)
    elbo_all = dist.gather_cat(torch.cat(elbo).double().cpu() if elbo else empty) if do_elbo else None
    dist.close()
    if not dist.is_main:
        return 0
    nfe = nfe or [0]
    enfe = enfe or [0]
    m, ci = _mean_ci(bpd_all)
    unit = f"bits/dim of the {num_bins}-level data ({deq} dequantization)" if deq else "bits/dim of the continuous density"
    trace = f"{args.trace}" + (f" x{args.probes} {args.noise}" if args.trace == "hutchinson" else "")
    print(f"{name} {args.split}: {n} images, model {args.model}")
    print(f"ODE  {m:.4f} +- {ci:.4f} {unit}, 95% CI   [{args.method} rtol={args.rtol:g} atol={args.atol:g}, "
          f"trace {trace}, NFE {sum(nfe) / len(nfe):.0f}/batch, {t_ode:.1f} s]")
    if do_elbo:
        em, eci = _mean_ci(elbo_all)
        terms = f"{elbo_k} stratified terms" if elbo_k else f"all {model.sde.num_train_steps} terms"
        print(f"ELBO {em:.4f} +- {eci:.4f} bits/dim (upper bound), 95% CI   [{terms}, NFE {sum(enfe) / len(enfe):.0f}/batch, "
              f"{t_elbo:.1f} s]")
    elif args.elbo_steps != 0:
        print("ELBO skipped: the model's SDE is not a discrete chain")
    return 0
