"""``sde-diffusion train``: train an epsilon-prediction U-Net (Ho et al. 2020) with EMA and exact resume.

Every argument and the data are checked before the output folder is touched; the folder is then
locked for the job (a second ``train`` into it is refused), and a checkpoint is written at least
every ``--ckpt-minutes`` of wall time, so a kill loses at most that much work.
"""

from __future__ import annotations

import argparse
import inspect
import logging
from pathlib import Path
from typing import Any, Dict, List

from ..cli import CLIError
from .common import (
    OutputLock,
    add_common,
    apply_threads,
    apply_tf32,
    check_device,
    check_float,
    check_int,
    check_threads,
    check_writable_target,
    flag,
    job_rank,
    make_dirs,
    remove_created,
)

log = logging.getLogger(__name__)

# train seeds step s with seed * 1_000_003 + s (+ 2**40 + rank for dropout): keep that below 2**63
SEED_MAX = (2**63 - 1 - 2**41) // 1_000_003 - 1


def _ints(s: str) -> List[int]:
    """Comma-separated integers >= 1; an empty string is the empty list (e.g. no attention)."""
    try:
        vals = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if vals and min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {s!r}")
    return vals


def _mults(s: str) -> List[int]:
    vals = _ints(s)
    if not vals:
        raise argparse.ArgumentTypeError(f"expected at least one channel multiplier, e.g. 1,2,2; got {s!r}")
    return vals


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a U-Net noise predictor (digits or your own images; --conditional for labelled data)",
        description="Train an epsilon-prediction U-Net on the DDPM chain (Ho et al. 2020). Writes OUT/loss.csv, "
        "OUT/train_state.safetensors (resumable) and OUT/model/ (EMA weights, loadable by load_model / --model).\n"
        "The 4000-step digits model takes about 55 minutes on a 2-core CPU; rerun with --resume after a kill.",
    )
    p.add_argument("--data", default="digits",
                   help="'digits' (sklearn digits, train split), a .npy/.npz file or a folder of PNGs; with "
                   "--conditional an .npz with x and y, or a folder with one sub-folder of PNGs per class")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (locked while the job runs)")
    p.add_argument("--steps", type=int, default=1000, help="total optimisation steps")
    add_common(p, batch_default=128, batch_aliases=("--batch",),
               batch_help="batch size per process (under torchrun the global batch is this x processes)",
               seed_help=f"seed of the initial weights and of every step's batch, noise and dropout; in [0, {SEED_MAX}]",
               device_help="torch device: cpu, cuda, cuda:K or mps (default: cpu; under torchrun cuda is each rank's GPU)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak AdamW learning rate, > 0")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay, >= 0")
    p.add_argument("--warmup", type=int, default=200, help="linear learning-rate warm-up steps, >= 0")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the exported weights, in [0, 1)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, > 0")
    p.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every K steps")
    p.add_argument("--ckpt-minutes", type=float, default=5.0,
                   help="also checkpoint when this many minutes passed since the last one (0 = off), so a kill "
                   "loses at most about that much work")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.safetensors (must exist)")
    p.add_argument("--keep-snapshots", action="store_true", help="also keep OUT/snapshots/step_K/ at every checkpoint")
    p.add_argument("--conditional", action="store_true",
                   help="train a class-conditional net for classifier-free guidance (needs labelled data)")
    p.add_argument("--cond-drop", type=float, default=0.1,
                   help="with --conditional: probability of replacing a label by the null class, in [0, 1)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g = p.add_argument_group("architecture (UNet; defaults: the shipped digits model's)")
    g.add_argument("--base-channels", type=int, default=None, help="channels of the first level (default: 32)")
    g.add_argument("--channel-mults", type=_mults, default=None, help="channel multiplier per level, e.g. 1,2,2 (default)")
    g.add_argument("--num-res-blocks", type=int, default=None, help="residual blocks per level (default: 1)")
    g.add_argument("--attention-resolutions", type=_ints, default=None,
                   help="spatial sizes with self-attention, e.g. 4,2 (default); '' for none")
    g.add_argument("--dropout", type=float, default=None, help="dropout probability in [0, 1) (default: 0.1)")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    from ..train import STATE_NAME

    check_int("--steps", args.steps, lo=1)
    check_int(flag(args, "batch_size", "--batch-size"), args.batch_size, lo=1)
    check_int("--ckpt-every", args.ckpt_every, lo=1)
    check_int("--warmup", args.warmup, lo=0)
    check_int("--base-channels", args.base_channels, lo=1)
    check_int("--num-res-blocks", args.num_res_blocks, lo=1)
    check_threads(args.threads)
    if not 0 <= args.seed <= SEED_MAX:
        raise CLIError(f"--seed must be an integer in [0, {SEED_MAX}] for train, got {args.seed}")
    check_float("--lr", args.lr, lo=0.0, lo_open=True)
    check_float("--weight-decay", args.weight_decay, lo=0.0)
    check_float("--ema", args.ema, lo=0.0, hi=1.0, hi_open=True)
    check_float("--grad-clip", args.grad_clip, lo=0.0, lo_open=True)
    check_float("--ckpt-minutes", args.ckpt_minutes, lo=0.0)
    check_float("--cond-drop", args.cond_drop, lo=0.0, hi=1.0, hi_open=True)
    check_float("--dropout", args.dropout, lo=0.0, hi=1.0, hi_open=True)
    if args.lr > 1.0:
        log.warning("--lr %g is far above the usual 1e-4..1e-3; training will likely diverge", args.lr)
    out = Path(args.out)
    check_writable_target(out, want_dir=True)
    state = out / STATE_NAME
    if args.resume and not state.is_file():
        raise CLIError(f"--resume: {out} holds no checkpoint ({STATE_NAME}); drop --resume to start a new run there")
    if not args.resume and state.exists():
        raise CLIError(f"{state} exists: add --resume to continue that run, or choose another --out")


def _check_data(args: argparse.Namespace) -> None:
    """Load the data once before the folder is touched, so a bad file is a one-line error that
    leaves nothing behind (train() loads it again; both loads are cheap next to training)."""
    from ..data import load_data, load_labelled_data

    if args.conditional:
        load_labelled_data(args.data)
    else:
        load_data(args.data)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    device = check_device(args.device)
    apply_threads(args.threads)
    apply_tf32(args)
    _check_data(args)
    from .. import distributed
    from ..train import train

    net = {k: v for k, v in dict(base_channels=args.base_channels, channel_mults=args.channel_mults,
                                 num_res_blocks=args.num_res_blocks, attention_resolutions=args.attention_resolutions,
                                 dropout=args.dropout).items() if v is not None}
    kw: Dict[str, Any] = {}
    params = inspect.signature(train).parameters
    if "ckpt_seconds" in params:
        kw["ckpt_seconds"] = args.ckpt_minutes * 60.0 if args.ckpt_minutes > 0 else None
    if args.conditional:
        kw.update(conditional=True, cond_drop=args.cond_drop)
    dist = distributed.init(device)
    out = Path(args.out)
    owner = dist.is_main and job_rank() == 0
    created: List[Path] = []
    lock = None
    if owner:
        created = make_dirs(out)
        try:
            lock = OutputLock(out, folder=True).acquire()
        except BaseException:
            remove_created(created)
            raise
    ok = False
    try:
        res = train(args.data, out, steps=args.steps, batch=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                    warmup=args.warmup, ema=args.ema, grad_clip=args.grad_clip, ckpt_every=args.ckpt_every,
                    resume=args.resume, seed=args.seed, net=net, keep_snapshots=args.keep_snapshots,
                    progress=not args.no_progress, threads=args.threads, device=str(dist.device), **kw)
        ok = True
    finally:
        if lock is not None:
            lock.release()
        if not ok and created and not any(out.iterdir()):
            remove_created(created)
    dist.close()
    if not dist.is_main:
        return 0
    last = res["losses"][-1][1] if res["losses"] else float("nan")
    print(f"trained to step {res['step']} (last loss {last:.4f}); EMA model in {res['model_dir']}")
    return 0
