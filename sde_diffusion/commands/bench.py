"""``sde-diffusion bench``: the step-count benchmark (every solver x NFE vs quality, diffusers side by side)."""

from __future__ import annotations


def _ints(text: str) -> list:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--nfe must be comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise ValueError(f"--nfe values must be integers >= 1, got {text!r}")
    return vals


def _names(text):
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def add_arguments(p) -> None:
    """Arguments shared by ``sde-diffusion bench`` and ``benchmarks/step_count.py``."""
    p.add_argument("--quick", action="store_true",
                   help="every solver and 4 diffusers schedulers at NFE 5,10,20 with default spacings, n=128 (about 2 minutes once references are cached)")
    p.add_argument("--model", default="digits", help="digits (shipped U-Net), gmm (analytic mixture) or a model folder")
    p.add_argument("--solvers", default=None, help="comma-separated solver names (default: all in SOLVERS)")
    p.add_argument("--peers", default="all", help="comma-separated diffusers schedulers, 'all' or 'none'")
    p.add_argument("--spacings", default=None, help="comma-separated spacings for our solvers (default: quick = each solver's default, "
                                                    "full = uniform,quadratic,logsnr,karras,trailing)")
    p.add_argument("--nfe", default=None, help="comma-separated target NFEs (default 5,10,20 quick; 5,10,20,50,100 full)")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=None,
                   help="samples per row (default 128 quick, 256 full; under torchrun spell it --num-samples)")
    p.add_argument("--device", default="cpu", help="torch device (bench: cpu only for now)")
    p.add_argument("--seed", type=int, default=0, help="sample k starts from x_T seeded seed + k")
    p.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples per metric (default 50 quick, 200 full)")
    p.add_argument("--out", default=None, help="output folder (default runs/bench_quick or runs/bench); rerun to resume")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def register(sub) -> None:
    p = sub.add_parser("bench", help="step-count benchmark: solvers x NFE vs quality, diffusers side by side")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from ..bench import run_bench

    peers = {"all": True, "none": False}.get(args.peers, None)
    if peers is None:
        peers = _names(args.peers)
    n = args.n if args.n is not None else (128 if args.quick else 256)
    out = args.out or ("runs/bench_quick" if args.quick else "runs/bench")
    from .. import distributed
    from ..cli import CLIError

    if args.device != "cpu":
        raise CLIError(f"bench runs on the CPU for now (got --device {args.device}); sample/nll/train take --device cuda")
    dist = distributed.init(args.device)  # under torchrun: samples sharded by index, rank 0 scores/writes
    t0 = time.perf_counter()
    rows = run_bench(args.model, solvers=_names(args.solvers), nfes=_ints(args.nfe) if args.nfe else None, n=n,
                     seed=args.seed, out_dir=out, quick=args.quick, peers=peers, spacings=_names(args.spacings),
                     n_boot=args.n_boot, progress=not args.no_progress, dist=dist,
                     log=print if dist.is_main else (lambda *a, **k: None))
    dist.close()
    if not dist.is_main:
        return 0
    print(f"{len(rows)} metric rows in {out}/results.csv (+ results.md, results.json, plots/, grids/); "
          f"{time.perf_counter() - t0:.0f} s")
    return 0
