"""``sde-diffusion tune``: learn a few-step solver configuration (time grid + per-step coefficients)
for one model and NFE budget, against tight probability-flow solves (``sde_diffusion.tuning``).

Every argument is checked before the model is loaded; what needs the model (classes, NFE the
solver can reach) right after loading, before any network call.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="learn a model-specific few-step grid (+ per-step coefficients) for a solver and NFE",
        description="Learn the time grid (and, for dpmpp_2m, one multistep weight per step; for bespoke, its whole "
        "coefficient matrix) that make "
        "SOLVER's NFE-evaluation solve closest to a tight probability-flow solve, on calibration x_T from "
        "a named seed stream, with early stopping on validation x_T and the error reported on held-out x_T "
        "(LD3 / Align Your Steps style learned time steps; Bespoke-style learned coefficients). "
        "Use the result with sample(..., tuned=FILE); configurations shipped beside a model (assets/<model>/tuned.json) "
        "are what `sample(..., spacing='tuned')` and `sde-diffusion sample --spacing tuned` use.",
    )
    p.add_argument("--model", default="digits", help="shipped name (digits) or a model folder")
    p.add_argument("--solver", default="dpmpp_2m", help="deterministic fixed-step solver (default dpmpp_2m)")
    p.add_argument("--nfe", type=int, default=None, help="network evaluations per sample (required unless --from)")
    p.add_argument("--calibration", type=int, default=256, help="calibration x_T the error is minimised on (>= 16; default 256)")
    p.add_argument("--validation", type=int, default=64, help="validation x_T for early stopping (default 64)")
    p.add_argument("--holdout", type=int, default=128, help="held-out x_T the reported error is measured on (default 128)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight (conditional models)")
    p.add_argument("--class", dest="class_", default=None, metavar="CLASS",
                   help="class label for a conditional model: an integer, or 'all' (x_T number k gets class k mod C)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="solver option kept fixed while tuning (JSON value), e.g. --option order=2; repeatable")
    p.add_argument("--no-coefficients", action="store_true", help="tune the grid only (no per-step coefficients)")
    p.add_argument("--no-time-shifts", action="store_true",
                   help="do not learn the per-step network evaluation times (learned by default for dpmpp_2m)")
    p.add_argument("--start", default="free", choices=["free", "fixed", "both"],
                   help="first time: learned (free, default), t = 1 (fixed), or try both")
    p.add_argument("--init", default=None, metavar="NAME[,NAME...]",
                   help="starting grids to choose from (the best on calibration is used): grid spacings (logsnr, "
                        "quadratic, uniform, karras, ...), 'leading-span' (diffusers' multistep leading times, free start "
                        "only), 'tuned' (the grid-only configuration shipped for the solver; bespoke: every shipped linear "
                        "configuration of this NFE, as its coefficient matrix; 'tuned:SOLVER' only SOLVER's). "
                        "Default: logsnr,quadratic,uniform,karras,leading-span")
    p.add_argument("--maxfev", type=int, default=600, help="most objective evaluations per optimisation (default 600)")
    p.add_argument("--patience", type=int, default=2, help="stop after this many iterations without a validation gain")
    p.add_argument("--cache", default=os.path.join("~", ".cache", "sde_diffusion", "tune-references"),
                   help="folder caching the reference solves (default ~/.cache/sde_diffusion/tune-references; '' = none)")
    p.add_argument("--out", default=None, help="write the tuned configuration (JSON) here")
    p.add_argument("--export", default=None, choices=["diffusers"],
                   help="print the grid as diffusers' set_timesteps(timesteps=...) / sigmas=... lists")
    p.add_argument("--from", dest="from_", default=None, metavar="FILE", help="export an existing tuned FILE instead of tuning")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no per-iteration progress")
    p.set_defaults(func=run)


def _options(items) -> dict:
    out = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"--option must look like KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _check_args(a) -> None:
    if a.from_ is None and a.nfe is None:
        raise ValueError("give --nfe K (or --from FILE to export an existing configuration)")
    if a.from_ is not None:
        if a.export is None:
            raise ValueError("--from FILE is for exporting: add --export diffusers")
        if not Path(a.from_).is_file():
            raise FileNotFoundError(f"--from: no such file {a.from_}")
        return
    if a.nfe < 1:
        raise ValueError(f"--nfe must be >= 1, got {a.nfe}")
    from ..tuning import MIN_CALIBRATION, _solver_for_tuning

    _solver_for_tuning(a.solver)
    if a.calibration < MIN_CALIBRATION:
        raise ValueError(f"--calibration must be >= {MIN_CALIBRATION}, got {a.calibration}")
    for nm in ("validation", "holdout"):
        if getattr(a, nm) < 0:
            raise ValueError(f"--{nm} must be >= 0, got {getattr(a, nm)}")
    if a.maxfev < 1 or a.patience < 1:
        raise ValueError("--maxfev and --patience must be >= 1")
    if a.guidance is not None and not math.isfinite(a.guidance):
        raise ValueError(f"--guidance must be a finite number, got {a.guidance}")
    if a.guidance is not None and a.class_ is None:
        raise ValueError("--guidance needs --class (an integer or 'all')")
    if a.class_ is not None and a.class_ != "all":
        try:
            int(a.class_)
        except ValueError:
            raise ValueError(f"--class must be an integer or 'all', got {a.class_!r}") from None
    if a.out is not None:
        d = Path(a.out).expanduser().resolve().parent
        if not d.is_dir():
            raise ValueError(f"--out: folder {d} does not exist")
    if a.threads is not None and a.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {a.threads}")


def _cond(model, class_):
    import torch

    if class_ is None:
        return None
    meta = (getattr(model, "conditioning", None) or {}).get("class_labels")
    if not meta:
        raise ValueError("--class needs a class-conditional model; this one takes no class_labels")
    C = int(meta["num_classes"])
    if class_ == "all":
        return {"class_labels": torch.arange(C)}
    c = int(class_)
    if not 0 <= c < C:
        raise ValueError(f"--class must be in 0..{C - 1} (or 'all'), got {c}")
    return {"class_labels": torch.tensor([c])}


def export_for(config: dict, model) -> dict:
    """The ``--export diffusers`` record of one tuned configuration."""
    from ..tuning import export_diffusers

    return {"solver": config["solver"], "steps": config["steps"], **export_diffusers(config, model)}


def _resolve(spec, device):
    try:
        from ..resolve import resolve_model
    except ImportError:  # older layout
        from ..checkpoints import load_model as resolve_model
    return resolve_model(spec, device=device)


def run(a) -> int:
    _check_args(a)
    opts = _options(a.option)
    import torch

    from .. import tuning

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.from_ is not None:
        configs = tuning.load_tuned(a.from_)
        model = None
        try:
            model = _resolve(a.model, a.device)
        except (FileNotFoundError, ValueError):
            pass
        for c in configs:
            print(json.dumps(export_for(c, model)))
        return 0
    inits = None if a.init is None else tuple(v.strip() for v in a.init.split(","))
    if inits is not None:
        from ..tuning import check_inits

        check_inits(inits)
    model = _resolve(a.model, a.device)
    cond = _cond(model, a.class_)
    free = {"free": True, "fixed": False, "both": None}[a.start]
    cache = os.path.expanduser(a.cache) if a.cache else None
    tuning.steps_for_nfe(model, a.solver, a.nfe, opts)  # NFE too small: one line, before any network call
    res = tuning.tune(model, a.solver, a.nfe, calibration=a.calibration, validation=a.validation, holdout=a.holdout,
                      coefficients=False if a.no_coefficients else None,
                      time_shifts=False if a.no_time_shifts else None,
                      free_start=free, options=opts, inits=inits,
                      maxfev=a.maxfev, patience=a.patience, cache=cache, cond=cond, guidance=a.guidance,
                      progress=not a.quiet)
    res["model"] = a.model
    if a.class_ is not None:
        res["class"] = a.class_
    cal, hold = res["calibration"], res["holdout"]
    line = (f"{res['solver']} NFE {res['nfe']} ({res['steps']} steps, {res['parameters']} parameters): calibration RMSE "
            f"{cal['rmse']:.5f} (start {cal['start_rmse']:.5f}, {res['start']['spacing']})")
    if hold["rmse"] is not None:
        line += f"; held-out RMSE {hold['rmse']:.5f} (start {hold['start_rmse']:.5f})"
    line += f"; {res['evaluations']} evaluations, {res['wall_s']:.0f} s ({res['reference_s']:.0f} s references)"
    print(line, file=sys.stderr if a.export else sys.stdout)
    if a.out is not None:
        tuning.save_tuned(res, Path(a.out).expanduser())
    if a.export == "diffusers":
        print(json.dumps(export_for(res, model)))
    return 0
