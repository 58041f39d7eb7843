"""``sde-diffusion bench``: the step-count benchmark (every solver x NFE vs quality, diffusers side by side).

    sde-diffusion bench --quick
    sde-diffusion bench --model digits --n 128 --nfe 5,10,20 --out benchmarks/results
    sde-diffusion bench report benchmarks/results --docs docs/benchmarks.md
"""

from __future__ import annotations

import shlex
import sys


def _ints(text: str) -> list:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--nfe must be comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise ValueError(f"--nfe values must be integers >= 1, got {text!r}")
    return vals


def _floats(text: str) -> list:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--guidance must be comma-separated numbers, got {text!r}") from None
    if not vals:
        raise ValueError(f"--guidance needs at least one scale, got {text!r}")
    return vals


def _names(text):
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def add_arguments(p) -> None:
    """Arguments shared by ``sde-diffusion bench`` and ``benchmarks/step_count.py``."""
    p.add_argument("--quick", action="store_true",
                   help="every fixed-step solver and 4 diffusers schedulers at NFE 5,10 with default spacings (+ tuned grids), "
                        "n=128 (about 2 minutes on 2 CPU cores with the committed reference cache)")
    p.add_argument("--model", default="digits", help="digits (shipped U-Net), digits-cond, gmm (analytic mixture), a model folder or a diffusers folder")
    p.add_argument("--solvers", default=None, help="comma-separated solver names (default: all in SOLVERS; --quick leaves out the adaptive ode/scipy)")
    p.add_argument("--peers", default="all", help="comma-separated diffusers schedulers, 'all' or 'none'")
    p.add_argument("--spacings", default=None, help="comma-separated spacings for our solvers (default: quick = each solver's default, "
                                                    "full = uniform,quadratic,logsnr,karras,trailing; 'tuned' = the model's tuned grids)")
    p.add_argument("--nfe", default=None, help="comma-separated target NFEs, at most 1000 (default 5,10 quick; 5,10,20,50 full)")
    p.add_argument("-n", "--n", "--num-samples", dest="n", type=int, default=None,
                   help="samples per row (default 128 quick, 256 full)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (everything runs there)")
    p.add_argument("--seed", type=int, default=0, help="sample k draws x_T and its noise from seed + k (named seed streams), exactly as `sample --seed`")
    p.add_argument("--guidance", default=None, help="comma-separated classifier-free guidance scales for a class-conditional model "
                                                    "(sample k asks for class k mod C), e.g. 1,2,4")
    p.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples per metric (default 50 quick, 200 full; 0 = no intervals)")
    p.add_argument("--ci", default=None, choices=["BCa", "percentile"],
                   help="bootstrap interval method of scipy.stats.bootstrap (default: percentile with --quick, else BCa)")
    p.add_argument("--ref-tol", type=float, default=1e-6,
                   help="rtol = atol of the reference probability-flow solve (default 1e-6; at most 1e-3)")
    p.add_argument("--out", default=None, help="output folder (default runs/bench_quick or runs/bench); rerun to resume")
    p.add_argument("--cache-dir", action="append", default=None,
                   help="extra folder to read reference solves from (repeatable; default: benchmarks/results/cache when it exists)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="committed: the run committed in benchmarks/results (digits, n=128, NFE 5,10,20, 100 resamples, "
                        "resumable), then its report spliced into docs/benchmarks.md")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


PRESETS = {"committed": dict(model="digits", n=128, nfe="5,10,20", n_boot=100, seed=0, out="benchmarks/results",
                             docs="docs/benchmarks.md")}


def register(sub) -> None:
    p = sub.add_parser("bench", help="step-count benchmark: solvers x NFE vs quality, diffusers side by side",
                       description=__doc__)
    add_arguments(p)
    p.set_defaults(func=run)
    sub2 = p.add_subparsers(dest="bench_action", metavar="report")
    r = sub2.add_parser("report", help="rebuild tables, plots and summary.md of a bench folder from rows.jsonl alone",
                        description="Rebuild results.csv/json/md, summary.md and plots/ of a bench folder from rows.jsonl "
                                    "and run.json alone (no sampling).")
    r.add_argument("folder", help="a bench output folder (holding rows.jsonl and run.json)")
    r.add_argument("--docs", default=None, help="also replace the generated section of this markdown page (e.g. docs/benchmarks.md)")
    r.add_argument("--no-plots", action="store_true", help="tables only")
    r.set_defaults(func=run_report)


def run_report(args) -> int:
    from ..bench import report

    rows = report(args.folder, plots=not args.no_plots, docs=args.docs)
    print(f"{len(rows)} metric rows: {args.folder}/results.csv, results.md, summary.md, plots/"
          + (f"; updated {args.docs}" if args.docs else ""))
    return 0


def run(args) -> int:
    import time
    from pathlib import Path

    from ..bench import run_bench

    docs = None
    if getattr(args, "preset", None):
        for k, v in PRESETS[args.preset].items():
            if k == "docs":
                docs = v if Path(v).is_file() else None
            else:
                setattr(args, k, v)
    if args.n_boot is not None and args.n_boot < 0:
        raise ValueError(f"--n-boot must be >= 0 (0 = no intervals), got {args.n_boot}")
    peers = {"all": True, "none": False}.get(args.peers, None)
    if peers is None:
        peers = _names(args.peers)
    n = args.n if args.n is not None else (128 if args.quick else 256)
    out = args.out or ("runs/bench_quick" if args.quick else "runs/bench")
    caches = args.cache_dir if args.cache_dir is not None else [d for d in ["benchmarks/results/cache"] if Path(d).is_dir()]
    from .. import distributed

    dist = distributed.init(args.device)  # under torchrun: samples sharded by index, rank 0 scores/writes
    t0 = time.perf_counter()
    rows = run_bench(args.model, solvers=_names(args.solvers), nfes=_ints(args.nfe) if args.nfe else None, n=n,
                     seed=args.seed, out_dir=out, quick=args.quick, peers=peers, spacings=_names(args.spacings),
                     n_boot=args.n_boot, progress=not args.no_progress, dist=dist, cache_dirs=caches,
                     device=str(dist.device), guidance=_floats(args.guidance) if args.guidance else None,
                     ci_method=args.ci, ref_tol=args.ref_tol, command=shlex.join(["sde-diffusion", "bench"] + sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None,
                     log=print if dist.is_main else (lambda *a, **k: None))
    dist.close()
    if not dist.is_main:
        return 0
    if docs is not None:
        from ..bench import report

        report(out, plots=False, docs=docs)
    print(f"{len(rows)} metric rows in {out}/results.csv (+ results.md, summary.md, results.json, plots/, grids/); "
          f"{time.perf_counter() - t0:.0f} s")
    return 0
