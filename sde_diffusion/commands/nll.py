"""``sde-diffusion nll``: bits/dim of a data split by the probability-flow ODE, with the DDPM ELBO beside it.

See docs/likelihood.md for the method, the units and the dequantization offsets. Every argument
is checked before the model or the data are loaded; the progress bar counts network evaluations.
"""

from __future__ import annotations

import argparse
import logging
import math
import threading
import time
from typing import Any, Optional

from ..cli import CLIError
from .common import add_common, flag, apply_threads, apply_tf32, check_device, check_float, check_int, check_seed, check_threads, progress_bar

log = logging.getLogger(__name__)

MAX_RTOL = 0.1  # looser tolerances give numbers that are not likelihoods (rtol 10 -> 39171 bits/dim)
TINY_TOL = 1e-8  # tighter ones cost many thousands of NFE per image: warn


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nll",
        help="negative log-likelihood in bits/dim (probability-flow ODE) and the DDPM ELBO",
        description="Exact likelihood through the probability-flow ODE (Song et al. 2021, App. D.2) in bits/dim "
        "of the dequantized discrete data, with a 95% confidence interval, NFE and time, and the discrete "
        "DDPM variational bound (Ho et al. 2020, eq. 5) beside it.",
    )
    p.add_argument("--model", default="digits", help="shipped name (digits), a model folder, or module:attribute")
    p.add_argument("--data", default="digits", help="'digits' (sklearn 8x8 digits, see --split) or a .npy/.npz file / PNG folder")
    p.add_argument("--split", default=None, choices=["train", "test", "all"], help="digits split (default: test; digits only)")
    add_common(p, num="evaluate the first N images of the data (default: all)", num_default=None,
               num_aliases=("--n", "--num-images"), batch_default=128, batch_help="images per ODE solve",
               seed_help="image k uses seed + k for its dequantization, probe and ELBO noise; in [0, 2^63 - N]")
    p.add_argument("--trace", default="hutchinson", choices=["exact", "hutchinson"], help="divergence estimator")
    p.add_argument("--probes", type=int, default=1, help="Hutchinson probes per image, fixed per solve")
    p.add_argument("--noise", default="rademacher", choices=["rademacher", "gaussian"], help="Hutchinson probe distribution")
    p.add_argument("--method", default="dopri5", help="ODE solver: a torchdiffeq method (dopri5, ...) or scipy:RK45 / "
                   "scipy:RK23 / scipy:DOP853")
    p.add_argument("--rtol", type=float, default=1e-5,
                   help=f"relative tolerance in (0, {MAX_RTOL:g}] (default 1e-5, as score_sde; 1e-4 is ~4x faster)")
    p.add_argument("--atol", type=float, default=1e-5, help=f"absolute tolerance in (0, {MAX_RTOL:g}] (default 1e-5)")
    p.add_argument("--t-end", type=float, default=1e-5, help="integrate from t_end (data) to 1, t_end in (0, 1) (default 1e-5)")
    p.add_argument("--dequantize", default="centered", choices=["centered", "uniform", "none"],
                   help="dequantization: centered, uniform (score_sde) or none")
    p.add_argument("--num-bins", type=int, default=None,
                   help="quantization levels of the data, >= 2 (default: 17 for digits, else 256)")
    p.add_argument("--elbo-steps", type=int, default=None,
                   help="ELBO: all N-1 diffusion terms (default) or K stratified terms; 0 skips the ELBO")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def _mean_ci(v: Any) -> tuple:
    """(mean, half-width of the 95% normal CI of the mean) of a 1-D tensor."""
    n = v.numel()
    sd = float(v.std()) if n > 1 else float("nan")
    return float(v.mean()), 1.96 * sd / math.sqrt(n)


def _check_method(method: str) -> None:
    """The library's own method check (the probability-flow engine's list), before any loading."""
    import importlib

    check = None
    for mod, name, kw in (("sde_diffusion.pf_ode", "check_method", {"divergence": True}),
                          ("sde_diffusion.likelihood", "_check_method", {})):
        try:
            fn = getattr(importlib.import_module(mod), name, None)
        except ImportError:
            fn = None
        if fn is not None:
            check = (fn, kw)
            break
    if check is None:
        return  # log_likelihood() checks it, still before any network call
    try:
        check[0](method, **check[1])
    except ValueError as e:
        raise CLIError(f"--method: {e}") from None


def _check_args(args: argparse.Namespace) -> None:
    check_int(flag(args, "num_samples", "-n"), args.num_samples, lo=1)
    check_int(flag(args, "batch_size", "--batch-size"), args.batch_size, lo=1)
    check_int("--probes", args.probes, lo=1)
    check_int("--elbo-steps", args.elbo_steps, lo=0)
    check_int("--num-bins", args.num_bins, lo=2)
    check_seed(args.seed, args.num_samples or 1)
    check_threads(args.threads)
    for name, v in (("--rtol", args.rtol), ("--atol", args.atol)):
        check_float(name, v, lo=0.0, lo_open=True)
        if v > MAX_RTOL:
            raise CLIError(f"{name} {v:g} is too loose for a likelihood (the result would not be one); "
                           f"use a value in (0, {MAX_RTOL:g}], e.g. 1e-4")
    check_float("--t-end", args.t_end, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    if args.split is not None and args.data != "digits":
        raise CLIError(f"--split applies to --data digits only; {args.data!r} is used whole (use -n to take the first N)")
    _check_method(args.method)
    if min(args.rtol, args.atol) < TINY_TOL:
        log.warning("--rtol/--atol below %g: expect many thousands of network evaluations per image "
                    "(1e-5 is the usual choice)", TINY_TOL)


def _load_data(args: argparse.Namespace) -> tuple:
    if args.data == "digits":
        from ..data import load_digits

        return load_digits(args.split or "test"), f"digits {args.split or 'test'}", 17
    from ..data import load_data

    return load_data(args.data), str(args.data), 256


class _Progress:
    """A bar over network evaluations: its total is estimated from the first batch (ODE NFE per
    batch x batches + ELBO terms), so it shows an ETA from then on."""

    def __init__(self, model: Any, n_batches: int, elbo_nfe: int, disable: bool) -> None:
        self.model, self.n_batches, self.elbo_nfe = model, n_batches, elbo_nfe
        self.bar = progress_bar(None, "nll", "NFE", disable)
        self.base = model.nfe
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            self.bar.n = self.model.nfe - self.base
            self.bar.refresh()

    def batch_done(self, k: int, images_done: int, images: int, ode_nfe_first: int) -> None:
        if k == 1 and self.n_batches > 0:
            self.bar.total = ode_nfe_first * self.n_batches + self.elbo_nfe * self.n_batches
        self.bar.n = self.model.nfe - self.base
        self.bar.set_postfix_str(f"{images_done}/{images} img")

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.bar.n = self.model.nfe - self.base
        self.bar.close()


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    device = check_device(args.device)
    apply_threads(args.threads)
    apply_tf32(args)

    import torch

    from .. import distributed
    from ..likelihood import elbo_bpd, log_likelihood
    from ..randomness import per_sample_generators
    from .sample import resolve_model

    deq: Optional[str] = None if args.dequantize == "none" else args.dequantize
    dist = distributed.init(device)  # under torchrun: images are sharded by index
    model = resolve_model(args.model, device=str(dist.device))
    x, name, default_bins = _load_data(args)
    num_bins = args.num_bins if args.num_bins is not None else default_bins
    if args.num_samples is not None:
        if args.num_samples > len(x):
            raise CLIError(f"-n {args.num_samples} exceeds the {len(x)} images of {name}")
        x = x[: args.num_samples]
    check_seed(args.seed, len(x))
    if model.sample_shape is not None and tuple(x.shape[1:]) != tuple(model.sample_shape):
        raise CLIError(f"data shape {tuple(x.shape[1:])} does not match the model's {tuple(model.sample_shape)}")
    n_train = model.sde.num_train_steps
    do_elbo = args.elbo_steps != 0 and n_train is not None
    elbo_k = args.elbo_steps if args.elbo_steps else None
    if do_elbo and elbo_k is not None and elbo_k > n_train - 1:
        raise CLIError(f"--elbo-steps {elbo_k} exceeds the model's {n_train - 1} diffusion terms; use 1..{n_train - 1} "
                       "(or omit it for all)")

    bpd, elbo, nfe, enfe = [], [], [], []
    t_ode = t_elbo = 0.0
    mine = dist.shard(len(x))
    starts = range(mine.start, mine.stop, args.batch_size)
    elbo_terms = (elbo_k or (n_train - 1 if n_train else 0)) if do_elbo else 0
    prog = _Progress(model, len(starts), elbo_terms, disable=args.no_progress or not dist.is_main)
    try:
        for k, s in enumerate(starts, 1):
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
            prog.batch_done(k, s + len(xb) - mine.start, len(mine), nfe[0])
    except BaseException:
        prog.bar.leave = False  # the error line stands alone
        raise
    finally:
        prog.close()

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
    print(f"{name}: {n} images, model {args.model}")
    print(f"ODE  {m:.4f} +- {ci:.4f} {unit}, 95% CI   [{args.method} rtol={args.rtol:g} atol={args.atol:g}, "
          f"trace {trace}, NFE {sum(nfe) / len(nfe):.0f}/batch, {t_ode:.1f} s]")
    if do_elbo:
        em, eci = _mean_ci(elbo_all)
        terms = f"{elbo_k} stratified terms" if elbo_k else f"all {n_train} terms"
        print(f"ELBO {em:.4f} +- {eci:.4f} bits/dim (upper bound), 95% CI   [{terms}, NFE {sum(enfe) / len(enfe):.0f}/batch, "
              f"{t_elbo:.1f} s]")
    elif args.elbo_steps != 0:
        print("ELBO skipped: the model's SDE is not a discrete chain")
    return 0
