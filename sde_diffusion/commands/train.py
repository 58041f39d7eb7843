"""``sde-diffusion train``: train an epsilon-prediction U-Net (Ho et al. 2020) with EMA and exact resume."""

from __future__ import annotations

import argparse


def _ints(s: str) -> list:
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a U-Net noise predictor (digits or your own images)",
        description="Train an epsilon-prediction U-Net on the DDPM chain (Ho et al. 2020). Writes OUT/loss.csv, "
        "OUT/train_state.safetensors (resumable) and OUT/model/ (EMA weights, loadable by load_model / --model).",
    )
    p.add_argument("--data", default="digits", help="'digits' (sklearn digits, train split), a .npy/.npz file or a folder of PNGs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int, default=1000, help="total optimisation steps (default 1000)")
    p.add_argument("--batch", type=int, default=128, help="batch size per process (default 128; under torchrun the global batch is batch x processes)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak AdamW learning rate (default 5e-4)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=200, help="linear LR warm-up steps (default 200)")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay (default 0.999)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (default 1.0)")
    p.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every K steps (default 500)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.safetensors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--keep-snapshots", action="store_true", help="also keep OUT/snapshots/step_K/ at every checkpoint")
    p.add_argument("--device", default="cpu", help="torch device; under torchrun 'cuda' means each rank's local GPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("architecture (UNet)")
    g.add_argument("--base-channels", type=int, default=None)
    g.add_argument("--channel-mults", type=_ints, default=None, help="e.g. 1,2,2")
    g.add_argument("--num-res-blocks", type=int, default=None)
    g.add_argument("--attention-resolutions", type=_ints, default=None, help="e.g. 4,2 (spatial sizes)")
    g.add_argument("--dropout", type=float, default=None)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train import train

    net = {k: v for k, v in dict(base_channels=args.base_channels, channel_mults=args.channel_mults,
                                 num_res_blocks=args.num_res_blocks, attention_resolutions=args.attention_resolutions,
                                 dropout=args.dropout).items() if v is not None}
    from .. import distributed

    dist = distributed.init(args.device)
    res = train(args.data, args.out, steps=args.steps, batch=args.batch, lr=args.lr, weight_decay=args.weight_decay,
                warmup=args.warmup, ema=args.ema, grad_clip=args.grad_clip, ckpt_every=args.ckpt_every,
                resume=args.resume, seed=args.seed, net=net, keep_snapshots=args.keep_snapshots,
                progress=not args.no_progress, threads=args.threads, device=str(dist.device))
    dist.close()
    if not dist.is_main:
        return 0
    last = res["losses"][-1][1] if res["losses"] else float("nan")
    print(f"trained to step {res['step']} (last loss {last:.4f}); EMA model in {res['model_dir']}")
    return 0
