"""Train a U-Net noise predictor on the discrete DDPM chain (Ho et al. 2020, Algorithm 1).

Loss: ``|| eps - eps_theta(sqrt(ac_n) x0 + sqrt(1 - ac_n) eps, n) ||^2`` with the timestep index n
uniform in 0..N-1 and ``ac = sde.alphas_cumprod``; the net receives n as a float, which is what
``NoisePredictor`` feeds a discrete-chain net at sampling time. AdamW, linear LR warm-up, gradient
clipping and an EMA of the weights (decay warm-up ``min(ema, (1+s)/(10+s))``).

Exact resume: the batch indices, timesteps, noise and dropout of step s are drawn from generators
seeded with ``seed * 1_000_003 + s``, so they are a function of (seed, s) only; a run resumed from a
checkpoint (weights, EMA, AdamW state, step) reproduces an uninterrupted run's losses bit for bit
on the same machine and thread count.

Files in ``out``: ``train_state.safetensors`` (everything needed to resume, written atomically;
metadata holds the JSON run config), ``loss.csv`` (step,loss,lr), ``model/`` (EMA weights as a
``load_model`` folder) and, with ``keep_snapshots``, ``snapshots/step_XXXXXXX/``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Optional

import torch

from .checkpoints import (
    atomic_write_bytes,
    load_safetensors,
    save_checkpoint,
    save_safetensors_atomic,
    schedule_betas,
)
from .data import load_data, load_labelled_data
from .nets.unet import UNet
from .sde import VPSDE

__all__ = ["train", "DEFAULT_NET", "DEFAULT_SCHEDULE", "STATE_NAME", "LOSS_NAME"]

STATE_NAME = "train_state.safetensors"
LOSS_NAME = "loss.csv"
DEFAULT_SCHEDULE = {"kind": "linear", "num_train_steps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
# the shipped digits model's architecture (see docs/model.md)
DEFAULT_NET = dict(base_channels=32, channel_mults=[1, 2, 2], num_res_blocks=1, attention_resolutions=[4, 2],
                   dropout=0.1, head_channels=32)
# run settings that must not change across a resume (``steps`` may be extended)
_FROZEN = ("seed", "batch", "conditional", "cond_drop", "world_size", "lr", "weight_decay", "warmup", "ema", "grad_clip", "net", "schedule", "data_shape", "data_count")


def _step_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


def _lr_at(step: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then constant (steps are 1-based)."""
    return lr * min(1.0, step / warmup) if warmup > 0 else lr


def _ema_decay(step: int, ema: float) -> float:
    return min(ema, (1.0 + step) / (10.0 + step))


def _pack_state(step, net, ema_net, opt, run_cfg, wall) -> tuple:
    tensors = {}
    for k, v in net.state_dict().items():
        tensors["model." + k] = v
    for k, v in ema_net.state_dict().items():
        tensors["ema." + k] = v
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in st:
                tensors[f"opt.{i}.{key}"] = torch.as_tensor(st[key])
    meta = {"format": "sde_diffusion.train_state", "step": str(step), "run": json.dumps(run_cfg),
            "wall_seconds": repr(float(wall)), "num_params": str(len(params))}
    return tensors, meta


def _unpack_state(path: Path, net, ema_net, opt) -> tuple:
    tensors, meta = load_safetensors(path)
    if meta.get("format") != "sde_diffusion.train_state":
        raise ValueError(f"{path}: not an sde_diffusion training state")
    try:
        step = int(meta["step"])
        run_cfg = json.loads(meta["run"])
        wall = float(meta.get("wall_seconds", "0"))
        model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        ema_sd = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        net.load_state_dict(model_sd, strict=True)
        ema_net.load_state_dict(ema_sd, strict=True)
    except (KeyError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: training state does not match this run: {str(e).splitlines()[0]}") from None
    params = [p for g in opt.param_groups for p in g["params"]]
    if int(meta.get("num_params", -1)) != len(params):
        raise ValueError(f"{path}: optimizer state has {meta.get('num_params')} parameters, model has {len(params)}")
    for i, p in enumerate(params):
        keys = [f"opt.{i}.{k}" for k in ("exp_avg", "exp_avg_sq", "step")]
        if all(k in tensors for k in keys):
            opt.state[p] = {"step": tensors[keys[2]].clone(), "exp_avg": tensors[keys[0]].clone(),
                            "exp_avg_sq": tensors[keys[1]].clone()}
    return step, run_cfg, wall


def _read_losses(path: Path, upto: int) -> list:
    rows = []
    if path.is_file():
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                try:
                    s = int(r["step"])
                except (KeyError, TypeError, ValueError):
                    continue
                if s <= upto:
                    rows.append((s, float(r["loss"]), float(r["lr"])))
    return rows


def train(
    data="digits",
    out="runs/train",
    *,
    steps: int = 1000,
    batch: int = 128,
    lr: float = 5e-4,
    weight_decay: float = 0.0,
    warmup: int = 200,
    ema: float = 0.999,
    grad_clip: float = 1.0,
    ckpt_every: int = 500,
    resume: bool = False,
    seed: int = 0,
    net: Optional[dict] = None,
    schedule: Optional[dict] = None,
    keep_snapshots: bool = False,
    progress: bool = True,
    threads: Optional[int] = None,
    stop_after: Optional[int] = None,
    device: str = "cpu",
    conditional: bool = False,
    cond_drop: float = 0.1,
    ckpt_seconds: Optional[float] = None,
) -> dict:
    """Train an epsilon-prediction U-Net and return ``{"losses": [(step, loss, lr), ...], "out": Path,
    "step": last step, "model_dir": Path}``.

    ``data``: ``"digits"`` (train split), a .npy/.npz path, a PNG folder or an (N,C,H,W) tensor in
    [-1, 1]. ``net``: UNet keyword overrides of ``DEFAULT_NET``. ``schedule``: the discrete chain
    (default DDPM linear, 1000 steps). ``resume``: continue from ``out/train_state.safetensors``
    (``steps`` may be raised). ``stop_after``: stop after that step as if killed (for tests).

    Under ``torchrun`` (a ``torch.distributed`` process group is initialised), ``batch`` is per rank:
    every rank draws the same global batch of ``batch x world_size`` from the step's generator and
    trains on its slice, DistributedDataParallel averages the gradients (= the gradient of the global
    mean loss), the logged loss is the all-reduced mean, and only rank 0 writes files. So W ranks with
    batch B follow 1 process with batch W B (exactly, up to float reduction order, when dropout = 0).

    ``conditional=True`` trains a class-conditional net for classifier-free guidance (Ho & Salimans
    2022): ``data`` must carry labels (see ``sde_diffusion.data.load_labelled_data``), the U-Net gets
    a class embedding with a null class (index C), and each example's label is replaced by the null
    class with probability ``cond_drop`` (condition dropout), so one net learns both eps(x, t, y) and
    eps(x, t).

    ``ckpt_seconds``: also checkpoint when that much wall time passed since the last checkpoint
    (resume is exact from any step), so a kill loses at most about that much work.
    """
    for name, v in (("steps", steps), ("batch", batch), ("ckpt_every", ckpt_every)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema decay must be in [0, 1), got {ema!r}")
    if warmup < 0 or weight_decay < 0 or grad_clip <= 0:
        raise ValueError("warmup and weight_decay must be >= 0 and grad_clip > 0")
    if not 0.0 <= cond_drop < 1.0:
        raise ValueError(f"cond_drop must be in [0, 1), got {cond_drop!r}")
    if threads is not None:
        torch.set_num_threads(int(threads))
    y_all = None
    if conditional:
        x_all, y_all = load_labelled_data(data)
        num_classes = int(y_all.max()) + 1
    else:
        x_all = load_data(data)
    n_data, shape = x_all.shape[0], tuple(x_all.shape[1:])
    schedule = dict(schedule or DEFAULT_SCHEDULE)
    sde = VPSDE.from_betas(schedule_betas(schedule))
    ac = sde.alphas_cumprod.to(torch.float32)
    n_train = sde.num_train_steps
    net_cfg = dict(DEFAULT_NET)
    net_cfg.update(net or {})
    net_cfg.update(in_channels=shape[0], out_channels=shape[0], image_size=shape[1])
    if conditional:
        net_cfg["num_classes"] = num_classes
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if dist else (0, 1)
    main = rank == 0
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # initial weights are a function of the seed
        model = UNet(**net_cfg)
    if shape[1] % model.downsample_factor or shape[2] % model.downsample_factor:
        raise ValueError(f"data of size {shape[1]}x{shape[2]} is not divisible by {model.downsample_factor} "
                         f"({len(model.config['channel_mults'])} U-Net levels); use fewer channel_mults")
    ema_model = UNet(**net_cfg)
    ema_model.load_state_dict(model.state_dict())
    ema_model.requires_grad_(False)
    model.to(dev)
    ema_model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)

    out = Path(out)
    run_cfg = dict(seed=seed, batch=batch, lr=lr, weight_decay=weight_decay, warmup=warmup, ema=ema,
                   grad_clip=grad_clip, net=model.config, schedule=schedule, data_shape=list(shape),
                   data_count=n_data, data=str(data) if not isinstance(data, torch.Tensor) else "<tensor>",
                   steps=steps, ckpt_every=ckpt_every, world_size=world,
                   conditional=bool(conditional), cond_drop=float(cond_drop) if conditional else None)
    state_path, loss_path = out / STATE_NAME, out / LOSS_NAME
    start, wall_before = 0, 0.0
    if state_path.exists():
        if not resume:
            raise ValueError(f"{state_path} exists: pass resume=True (--resume) to continue, or choose another output folder")
        start, saved_cfg, wall_before = _unpack_state(state_path, model, ema_model, opt)
        diff = [k for k in _FROZEN if json.dumps(saved_cfg.get(k, 1 if k == "world_size" else None), sort_keys=True) != json.dumps(run_cfg[k], sort_keys=True)]
        if diff:
            raise ValueError(f"cannot resume {state_path}: settings differ from the saved run: "
                             + ", ".join(f"{k} (saved {saved_cfg.get(k)!r}, now {run_cfg[k]!r})" for k in diff))
        if start > steps:
            raise ValueError(f"{state_path} is at step {start}, beyond steps={steps}")
    losses = _read_losses(loss_path, start) if start > 0 else []
    if main:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["step", "loss", "lr"])
        for r in losses:
            w.writerow([r[0], repr(r[1]), repr(r[2])])
        atomic_write_bytes(loss_path, buf.getvalue().encode())
    if dist:
        torch.distributed.barrier()
    fwd = model
    if dist:
        from torch.nn.parallel import DistributedDataParallel

        fwd = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    def export(step, wall):
        training = dict(steps=step, ema=True, ema_decay=ema, batch=batch, lr=lr, warmup=warmup, seed=seed,
                        grad_clip=grad_clip, weight_decay=weight_decay, data=run_cfg["data"],
                        wall_seconds=round(wall, 1), loss="epsilon MSE (Ho et al. 2020)")
        data_info = {"shape": list(shape), "range": [-1.0, 1.0]}
        if run_cfg["data"] == "digits":
            data_info.update(dataset="sklearn digits (train split)", scaling="x / 8 - 1 from pixel values 0..16")
        else:
            data_info.update(dataset=run_cfg["data"], scaling="uint8 x / 127.5 - 1; floats in [0, 1] -> 2x - 1")
        extra = {}
        if conditional:
            training["cond_drop"] = cond_drop
            extra["conditioning"] = {"class_labels": {"num_classes": num_classes, "null_class": num_classes}}
        save_checkpoint(out / "model", ema_model, schedule=schedule, prediction="epsilon", data=data_info,
                        training=training, **extra)
        if keep_snapshots:
            save_checkpoint(out / "snapshots" / f"step_{step:07d}", ema_model, schedule=schedule,
                            prediction="epsilon", data=data_info, training=training, **extra)

    model.train()
    t0 = last_ckpt = time.perf_counter()
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc="train", mininterval=2.0, dynamic_ncols=True)
    end = steps if stop_after is None else min(steps, stop_after)
    step = start
    with torch.random.fork_rng(devices=[]), open(loss_path if main else os.devnull, "a", newline="") as lf:
        lw = csv.writer(lf, lineterminator="\n")
        mine = slice(rank * batch, (rank + 1) * batch)  # this rank's part of the global batch
        for step in range(start + 1, end + 1):
            g = torch.Generator().manual_seed(_step_seed(seed, step))
            idx = torch.randint(0, n_data, (batch * world,), generator=g)[mine]
            n = torch.randint(0, n_train, (batch * world,), generator=g)[mine]
            eps = torch.randn((batch * world, *shape), generator=g)[mine].to(dev)
            kw = {}
            if conditional:  # condition dropout: the null class (index C) with probability cond_drop
                drop = torch.rand((batch * world,), generator=g)[mine] < cond_drop
                kw["class_labels"] = torch.where(drop, num_classes, y_all[idx]).to(dev)
            torch.manual_seed(_step_seed(seed, step) + 2**40 + rank)  # dropout
            x0 = x_all[idx].to(dev)
            a = ac[n].sqrt().view(-1, 1, 1, 1).to(dev)
            s = (1 - ac[n]).sqrt().view(-1, 1, 1, 1).to(dev)
            xt = a * x0 + s * eps
            cur_lr = _lr_at(step, lr, warmup)
            for grp in opt.param_groups:
                grp["lr"] = cur_lr
            loss = torch.mean((fwd(xt, n.to(device=dev, dtype=torch.float32), **kw) - eps) ** 2)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss.detach())} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            d = _ema_decay(step, ema)
            with torch.no_grad():
                for pe, pm in zip(ema_model.parameters(), model.parameters()):
                    pe.mul_(d).add_(pm.detach(), alpha=1 - d)
                for be, bm in zip(ema_model.buffers(), model.buffers()):
                    be.copy_(bm)
            lt = loss.detach().clone()
            if dist:  # the global batch's mean loss
                torch.distributed.all_reduce(lt)
                lt /= world
            lv = float(lt)
            losses.append((step, lv, cur_lr))
            lw.writerow([step, repr(lv), repr(cur_lr)])
            lf.flush()
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or step == end:
                    bar.set_postfix(loss=f"{lv:.4f}", lr=f"{cur_lr:.2e}", refresh=False)
            due = ckpt_seconds is not None and time.perf_counter() - last_ckpt >= ckpt_seconds
            if main and (step % ckpt_every == 0 or step == steps or due):
                last_ckpt = time.perf_counter()
                wall = wall_before + time.perf_counter() - t0
                run_cfg["steps"] = max(steps, step)
                tensors, meta = _pack_state(step, model, ema_model, opt, run_cfg, wall)
                save_safetensors_atomic(tensors, state_path, metadata=meta)
                export(step, wall)
    if bar is not None:
        bar.close()
    return {"losses": losses, "out": out, "step": step, "model_dir": out / "model",
            "wall_seconds": wall_before + time.perf_counter() - t0}
