"""``sde-diffusion sample``: draw samples from a model with any solver; write a PNG grid, an .npz
or a folder of PNGs (the input FID tools read).

Every argument is checked before the model is loaded; what needs the model (the number of
training steps, the classes, the data range) is checked right after loading, before any network
call. The output (a file, or a folder) is locked for the duration of the job.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..cli import CLIError
from .common import (
    flag,
    OutputLock,
    add_common,
    apply_threads,
    apply_tf32,
    check_device,
    check_float,
    check_int,
    check_seed,
    check_threads,
    check_writable_target,
    job_rank,
    make_dirs,
    progress_bar,
    remove_created,
)

log = logging.getLogger(__name__)

# --steps when none is given (diffusers' pipelines default to 50 steps; 20 is past the knee of every
# fixed-step solver's error curve on the digits models, docs/benchmarks.md)
DEFAULT_STEPS = 20
# warn when the grid has more steps than this many times the model's training steps
_HUGE_STEPS_FACTOR = 1
_HUGE_STEPS_CONTINUOUS = 2000


def _option(text: str) -> Tuple[str, Any]:
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise CLIError(f"--option must look like KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k.strip(), json.loads(v)
    except ValueError:
        return k.strip(), v  # a plain string (e.g. method=dopri5)


def _classes(text: Optional[str]) -> Optional[List[int]]:
    if text is None:
        return None
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"--class must be a class label or a comma list of labels (e.g. 7 or 0,1,2), got {text!r}") from None
    if not vals:
        raise CLIError(f"--class must name at least one label, got {text!r}")
    if min(vals) < 0:
        raise CLIError(f"--class labels must be integers >= 0, got {min(vals)}")
    return vals


def _interval(text: Optional[str]) -> Optional[Tuple[float, float]]:
    if text is None:
        return None
    parts = text.split(",")
    try:
        lo, hi = (float(v) for v in parts)
    except ValueError:
        raise CLIError(f"--guidance-interval must be LO,HI with 0 <= LO < HI <= 1 (VP time), got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi <= 1.0):
        raise CLIError(f"--guidance-interval must be LO,HI with 0 <= LO < HI <= 1 (VP time), got {text!r}")
    return lo, hi


def register(sub: argparse._SubParsersAction) -> None:
    from ..grids import SPACINGS

    p = sub.add_parser(
        "sample", help="sample from a model with any solver; write a PNG grid, an .npz or a folder of PNGs",
        description="Sample from a model with any solver.\n\nOutputs (--out):\n"
        "  NAME.png   a grid of all samples (small images upscaled 4x), for looking\n"
        "  NAME.npz   'samples': float32 (N, C, H, W) in the model's data range; 'arr_0': uint8 (N, H, W, C)\n"
        "             pixels (the layout FID tools read); 'labels' with --class\n"
        "  DIR/       one uint8 PNG per sample, 000000.png ... (torch-fidelity / clean-fid input)\n\n"
        "Sample k starts from x_T drawn with seed + k, so results do not depend on --batch-size or on\n"
        "the number of processes (torchrun).",
    )
    p.add_argument("--model", default="digits", help="shipped name (digits, digits-cond), a model folder, a diffusers "
                   "pipeline folder, or module:attribute / file.py:attribute (this imports and runs that code)")
    p.add_argument("--solver", default="dpmpp_2m", metavar="NAME", help="solver name; `sde-diffusion solvers` lists them")
    p.add_argument("--steps", type=int, default=None, metavar="K",
                   help=f"number of grid steps (default {DEFAULT_STEPS}); not taken by the adaptive ode and scipy")
    p.add_argument("--spacing", default=None, choices=[*SPACINGS, "tuned"],
                   help="time spacing of the grid; tuned = the grid tuned for this model, solver and --steps "
                   "(default: the solver's own, see `sde-diffusion solvers`)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta in [0, 1] (0 = deterministic; ddim only)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other solver option, e.g. order=3 or rtol=1e-6 (repeatable)")
    p.add_argument("--noise", default="gaussian", choices=["gaussian", "brownian"],
                   help="noise of stochastic solvers (brownian: one Brownian path per sample across step counts)")
    g = p.add_argument_group("conditioning (class-conditional models, classifier-free guidance)")
    g.add_argument("--class", dest="classes", default=None, metavar="LABELS",
                   help="class label, or a comma list assigned to the samples round-robin (default: unconditional, "
                   "through the model's null class)")
    g.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="classifier-free guidance scale w >= 0: eps_u + w (eps_c - eps_u); 1 = plain conditional "
                   "(default: 1)")
    g.add_argument("--guidance-rescale", type=float, default=0.0, metavar="PHI",
                   help="guidance rescale phi in [0, 1] (Lin et al. 2024)")
    g.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                   help="apply guidance only for VP time t in [LO, HI] within [0, 1] (Kynkaanniemi et al. 2024; "
                   "default: everywhere)")
    add_common(p, num="number of samples", num_default=64, num_aliases=("--n",),
               batch_default=256, batch_help="samples per solve (memory; results do not depend on it)",
               seed_help="sample k starts from x_T seeded seed + k; an integer in [0, 2^63 - N]",
               device_help="torch device: cpu, cuda, cuda:K or mps (default: cpu; under torchrun cuda is each "
               "rank's GPU)")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="NAME.png (grid), NAME.npz (arrays) or DIR/ (a folder of PNGs, one per sample); suffixes "
                   "are case-insensitive")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def resolve_model(spec: str, device: str = "cpu") -> Any:
    """A NoisePredictor from a shipped name, a folder, ``module:attribute`` or ``gmm``
    (the library's one resolver: ``sde_diffusion.resolve.resolve_model``)."""
    from ..resolve import resolve_model as _resolve_model

    return _resolve_model(spec, device=device)


def output_kind(out: str) -> str:
    """'png', 'npz' or 'dir' from the --out text (suffix case-insensitive; a trailing / or an
    existing folder without a suffix means a folder of PNGs)."""
    p = Path(out)
    if out.endswith(("/", "\\")) or (p.is_dir() and not p.suffix):
        return "dir"
    suffix = p.suffix.lower()
    if suffix in (".png", ".npz"):
        return suffix[1:]
    raise CLIError(f"--out must end in .png (a grid), .npz (arrays) or / (a folder of PNGs), got {out!r}")


def _check_args(args: argparse.Namespace) -> Dict[str, Any]:
    """Everything that can be checked without the model. Returns the solver options."""
    from ..solvers import ADAPTIVE, SOLVERS

    kind = output_kind(args.out)
    check_writable_target(Path(args.out), want_dir=kind == "dir")
    if kind == "dir" and Path(args.out).is_dir():
        old = [f for f in Path(args.out).iterdir() if f.suffix.lower() == ".png"]
        if old:
            raise CLIError(f"--out {args.out} already holds {len(old)} PNG files; FID statistics would mix runs, "
                           "so give an empty or new folder")
    check_int(flag(args, "num_samples", "-n"), args.num_samples, lo=1)
    check_int(flag(args, "batch_size", "--batch-size"), args.batch_size, lo=1)
    check_seed(args.seed, args.num_samples)
    check_threads(args.threads)
    if args.solver not in SOLVERS:
        raise CLIError(f"unknown solver {args.solver!r}; valid: {', '.join(SOLVERS)}")
    adaptive = args.solver in ADAPTIVE
    if adaptive and args.steps is not None:
        raise CLIError(f"--steps does not apply to the adaptive solver {args.solver!r} (it chooses its own steps); "
                       "drop --steps and set --option rtol=... --option atol=...")
    if adaptive and args.spacing is not None:
        raise CLIError(f"--spacing does not apply to the adaptive solver {args.solver!r}")
    if not adaptive and args.steps is None:
        args.steps = DEFAULT_STEPS
    check_int("--steps", args.steps, lo=1)
    options = dict(_option(o) for o in args.option)
    if args.eta is not None:
        check_float("--eta", args.eta, lo=0.0, hi=1.0)
        if "eta" in options:
            raise CLIError("give eta once: --eta or --option eta=..., not both")
        options["eta"] = args.eta
    _check_solver_options(args.solver, SOLVERS[args.solver], options)
    classes = _classes(args.classes)
    if args.guidance is not None:
        check_float("--guidance", args.guidance, lo=0.0)
        if classes is None:
            raise CLIError("--guidance needs --class (guidance pushes towards a class; without --class the "
                           "model samples unconditionally)")
    check_float("--guidance-rescale", args.guidance_rescale, lo=0.0, hi=1.0)
    interval = _interval(args.guidance_interval)
    if classes is None and (args.guidance_rescale or interval is not None):
        raise CLIError("--guidance-rescale and --guidance-interval need --class and --guidance")
    args.class_list, args.interval, args.out_kind = classes, interval, kind
    return options


def _check_solver_options(name: str, fn: Any, options: Dict[str, Any]) -> None:
    from ..solvers import SPECS

    taken = list(SPECS[name].options)  # the keyword-only options of the solver's signature
    bad = sorted(set(options) - set(taken))
    if bad:
        flags = ", ".join("--eta" if k == "eta" else f"--option {k}=..." for k in bad)
        raise CLIError(f"solver {name!r} does not take {flags}; its options: {', '.join(taken) or 'none'}")


def _check_with_model(args: argparse.Namespace, model: Any) -> Tuple[Optional[int], Tuple[float, float]]:
    """Checks that need the model; returns (grid steps or None for adaptive, data range)."""
    from ..images import check_value_range
    from ..solvers import ADAPTIVE

    if model.sample_shape is None:
        raise CLIError(f"model {args.model!r} does not say its sample shape; give it a sample_shape attribute (C, H, W)")
    cfg = getattr(model, "config", None) or {}
    data = cfg.get("data", {}) if isinstance(cfg, dict) else {}
    try:
        value_range = check_value_range(data.get("range", [-1.0, 1.0]))
    except ValueError as e:
        raise CLIError(f"model {args.model!r}: config data.range: {e}") from None
    steps = None
    if args.spacing == "tuned":
        steps = args.steps  # the model's tuned grid for this solver and step count (checked by sample())
    elif args.solver not in ADAPTIVE:
        from ..sampling import _build_grid

        grid = _build_grid(model, args.solver, args.steps, args.spacing, None, None)
        steps = len(grid) - 1
        n_train = model.sde.num_train_steps
        limit = n_train * _HUGE_STEPS_FACTOR if n_train else _HUGE_STEPS_CONTINUOUS
        if steps > limit:
            what = f"the model's {n_train} training steps" if n_train else f"{_HUGE_STEPS_CONTINUOUS}"
            log.warning("--steps %d is more than %s: %d network evaluations per sample or more, which buys "
                        "nothing over ~%d steps; this will take long", steps, what, steps, limit)
    conditioning = getattr(model, "conditioning", None) or {}
    if args.class_list is not None:
        spec = conditioning.get("class_labels") if isinstance(conditioning, dict) else None
        if not isinstance(spec, dict) or not spec.get("num_classes"):
            raise CLIError(f"--class: model {args.model!r} has no classes (it is unconditional)")
        c = int(spec["num_classes"])
        bad = [v for v in args.class_list if v >= c]
        if bad:
            raise CLIError(f"--class {bad[0]} is outside the model's classes 0..{c - 1}")
    return steps, value_range


class _NfePoller:
    """Updates a bar from ``model.nfe`` twice a second (for solvers without per-step callbacks)."""

    def __init__(self, model: Any, bar: Any) -> None:
        self.model, self.bar, self.base = model, bar, model.nfe
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            self.bar.n = self.model.nfe - self.base
            self.bar.refresh()

    def __enter__(self) -> "_NfePoller":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.bar.n = self.model.nfe - self.base


def run(args: argparse.Namespace) -> int:
    options = _check_args(args)
    device = check_device(args.device)
    apply_threads(args.threads)
    apply_tf32(args)

    import numpy as np
    import torch

    from .. import distributed
    from ..randomness import draw_x_T
    from ..sampling import sample

    dist = distributed.init(device)
    model = resolve_model(args.model, str(dist.device))
    steps, value_range = _check_with_model(args, model)
    shape = tuple(model.sample_shape)
    out = Path(args.out)
    kind = args.out_kind
    labels_all = None
    if args.class_list is not None:
        labels_all = torch.tensor([args.class_list[k % len(args.class_list)] for k in range(args.num_samples)])

    owner = dist.is_main and job_rank() == 0
    created: List[Path] = []
    lock = None
    if owner:  # take the output before the work, so a second job is refused now, not after it
        created = make_dirs(out if kind == "dir" else out.parent)
        try:
            lock = OutputLock(out, folder=kind == "dir").acquire()
        except BaseException:
            remove_created(created)
            raise
    ok = False
    try:
        mine = dist.shard(args.num_samples)  # this rank's sample indices; sample k is seeded seed + k
        n_batches = math.ceil(len(mine) / args.batch_size) if len(mine) else 0
        hide = args.no_progress or not dist.is_main
        if steps is not None:
            bar = progress_bar(n_batches * steps, f"sample {args.solver}", "step", hide)
        else:
            bar = progress_bar(None, f"sample {args.solver}", "NFE", hide)
        chunks, nfe, t0 = [], 0, time.perf_counter()
        try:
            for start in range(mine.start, mine.stop, args.batch_size):
                b = min(args.batch_size, mine.stop - start)
                # sample k starts from x_T of seed + k and draws its noise from seed + k, exactly as
                # sample(model, shape=(n, ...), seed=seed) does in one call
                x_T = draw_x_T((b, *shape), args.seed + start, device=dist.device)
                kw: Dict[str, Any] = {}
                if labels_all is not None:
                    kw.update(cond={"class_labels": labels_all[start: start + b].to(dist.device)},
                              guidance=args.guidance, guidance_rescale=args.guidance_rescale,
                              guidance_interval=args.interval)

                def step_cb(d: Dict[str, Any]) -> None:
                    bar.update(1)

                if steps is not None:
                    res = sample(model, x_T, solver=args.solver, steps=args.steps, spacing=args.spacing,
                                 seed=args.seed + start, noise=args.noise, callback=step_cb, **kw, **options)
                else:
                    with _NfePoller(model, bar):
                        res = sample(model, x_T, solver=args.solver, seed=args.seed + start, noise=args.noise,
                                     **kw, **options)
                    bar.refresh()
                chunks.append(res.samples.float().cpu())
                nfe = res.nfe
                bar.set_postfix_str(f"{start + b - mine.start}/{len(mine)} img, NFE {nfe}/sample", refresh=False)
        except BaseException:
            bar.leave = False  # the error line stands alone
            raise
        finally:
            bar.close()
        local = torch.cat(chunks) if chunks else torch.zeros((0, *shape))
        x = dist.gather_cat(local)
        assert x is not None
        dist.close()
        if not owner:
            ok = True
            return 0
        written = _write(x, out, kind, value_range, nfe, args.solver, labels_all, np)
        ok = True
    finally:
        if lock is not None:
            lock.release()
        if not ok:
            remove_created(created)
    print(f"wrote {written} ({len(x)} samples, solver {args.solver}, NFE {nfe} per sample, "
          f"{time.perf_counter() - t0:.1f} s)")
    return 0


def _write(x: Any, out: Path, kind: str, value_range: Tuple[float, float], nfe: int, solver: str,
           labels: Any, np: Any) -> str:
    from ..files import atomic_write_bytes
    from ..images import save_grid, save_png_folder, to_uint8

    if kind == "png":
        save_grid(x, out, value_range=value_range)
        return str(out)
    if kind == "dir":
        save_png_folder(x, out, value_range=value_range)
        return f"{out}/ ({len(x)} PNGs)"
    arrays = {"samples": x.numpy().astype(np.float32), "arr_0": to_uint8(x, value_range),
              "nfe": np.asarray(nfe), "solver": np.asarray(solver),
              "value_range": np.asarray(value_range, dtype=np.float64)}
    if labels is not None:
        arrays["labels"] = labels.numpy().astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(out, buf.getvalue())
    return str(out)
