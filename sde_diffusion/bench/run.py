"""Running one planned configuration: the only module of the benchmark that calls
``sampling.sample``, diffusers' schedulers (``peers.run_peer``) and ``distributed``.

Randomness follows ``sde-diffusion sample --seed S`` exactly, so every row reproduces from the CLI:
x_T of sample k is ``randomness.draw_x_T`` with seed S + k (counter-based, stream X_T) and a
stochastic solver's noise comes from ``sample(..., seed=S + k)``'s named streams. diffusers' DDPM
scheduler takes ``torch.Generator`` objects: sample k gets the generator seeded S + k.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..model import NoisePredictor
from ..randomness import per_sample_generators
from .models import BenchModel
from .plan import REF_TOL, Config

__all__ = ["Outcome", "start_streams", "fingerprint", "class_labels", "reference_pf", "run_config", "cached", "forward_ms", "slug"]


@dataclass(frozen=True)
class Outcome:
    """What running a configuration measured: samples, NFE, steps actually taken, wall seconds."""
    x: torch.Tensor
    nfe: int
    steps: Optional[int]
    wall_s: float


def slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in s)


def start_streams(seed: int, start: int, count: int, shape: Sequence[int], dtype, device) -> torch.Tensor:
    """x_T of samples start..start+count-1 as ``sde-diffusion sample --seed seed`` draws them."""
    from ..randomness import draw_x_T

    if count == 0:
        return torch.zeros((0, *shape), dtype=dtype, device=device)
    return draw_x_T((count, *shape), seed + start, dtype=dtype, device=device)


def fingerprint(x: torch.Tensor) -> str:
    """sha256 (16 hex) of a tensor's float64 CPU bytes: keys caches to the exact x_T."""
    import hashlib

    return hashlib.sha256(x.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()).hexdigest()[:16]


def class_labels(bm: BenchModel, n: int, device) -> Optional[torch.Tensor]:
    """Labels of a class-conditional run: sample k asks for class k mod num_classes (``sample
    --class 0,1,...,C-1`` assigns the same labels round-robin)."""
    if not bm.num_classes:
        return None
    return (torch.arange(n) % bm.num_classes).to(device)


def reference_pf(model: NoisePredictor, x_T: torch.Tensor, rtol: float = REF_TOL, atol: float = REF_TOL,
                 cond=None, guidance=None) -> tuple:
    """Tight PF-ODE solve from x_T at t = 1 with this project's ``ode`` solver (dopri5 in log-SNR,
    to t = 1/N, then the x0 prediction there); returns (x0, nfe)."""
    from ..sampling import sample

    res = sample(model, x_T, solver="ode", rtol=rtol, atol=atol, cond=cond, guidance=guidance)
    return res.samples, res.nfe


def cached(fname: str, x_T: torch.Tensor, dtype, cache_dirs: Sequence[Path], write_dir: Optional[Path],
           compute: Callable) -> tuple:
    """(samples, nfe, wall_s) of a reference run, read from the first of ``cache_dirs`` holding
    ``fname`` made from this very x_T (its fingerprint is stored in the file), else computed and
    (when ``write_dir``) stored there."""
    from ..files import load_safetensors, save_safetensors_atomic

    fp = fingerprint(x_T)
    for d in cache_dirs:
        p = Path(d) / fname
        if p.is_file():
            try:
                t, meta = load_safetensors(p)
                if t["x"].shape == x_T.shape and meta.get("x_T") == fp:
                    return t["x"].to(device=x_T.device, dtype=dtype), int(meta["nfe"]), float(meta["wall_s"])
            except (ValueError, KeyError):
                pass
    t0 = time.perf_counter()
    x, nfe = compute()
    wall = time.perf_counter() - t0
    if write_dir is not None:
        save_safetensors_atomic({"x": x}, Path(write_dir) / fname, metadata={"nfe": str(nfe), "wall_s": repr(wall), "x_T": fp})
    return x, nfe, wall


def forward_ms(pred: NoisePredictor, x: torch.Tensor, repeats: int = 3) -> float:
    """Median wall time of one network call at this batch, in ms."""
    with torch.no_grad():
        pred.raw(x, 0.5)
        times = []
        for _ in range(repeats):
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            t0 = time.perf_counter()
            pred.raw(x, 0.5)
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def run_config(bm: BenchModel, c: Config, seed: int, n: int, ref: Callable, cache_dirs: Sequence[Path],
               write_dir: Optional[Path], ident: str, dist, device="cpu") -> Outcome:
    """Samples of one configuration. Under torchrun every rank runs its block of the samples
    (sample k keeps generator seed + k) and all ranks get the union."""
    pred = bm.predictor
    m = dist.shard(n)
    x_all = start_streams(seed, 0, n, bm.shape, bm.dtype, device)
    x_mine = x_all[m.start:m.stop]
    s_mine = seed + m.start  # sample k's noise: the named streams of seed + k
    labels = class_labels(bm, n, device)
    cond = {"class_labels": labels[m.start:m.stop]} if labels is not None else None
    w = c.guidance
    if c.role == "floor":
        g = np.random.default_rng(seed)
        pool = bm.floor
        idx = g.choice(pool.shape[0], n, replace=n > pool.shape[0])
        return Outcome(pool[torch.as_tensor(idx)].to(device=device, dtype=bm.dtype), 0, None, 0.0)
    if c.solver == "pf_reference":
        return ref(w)
    if c.role == "reference":  # ancestral N steps: cached like the PF solve
        from ..sampling import sample

        def compute():
            res = sample(pred, x_mine, solver=c.solver, steps=c.steps, spacing=c.spacing, seed=s_mine,
                         cond=cond, guidance=w, **c.options)
            return dist.gather_cat(res.samples), res.nfe

        fname = f"{slug(c.key)}_{ident}_seed{seed}_n{n}.safetensors"
        x, nfe, wall = cached(fname, x_all, bm.dtype, cache_dirs, write_dir if dist.is_main else None, compute)
        return Outcome(x, nfe, c.steps, wall)
    if x_mine.is_cuda:
        torch.cuda.synchronize(x_mine.device)
    t0 = time.perf_counter()
    if c.library == "diffusers":
        from ..peers import run_peer

        ctx = pred.conditioned(cond, guidance=w) if cond is not None else nullcontext()
        with ctx:
            x, nfe = run_peer(pred, c.solver, c.steps, x_mine, spacing=c.spacing,
                              generator=per_sample_generators(s_mine, len(m)))
        steps = c.steps
    else:
        from ..sampling import sample

        kw = dict(c.options, seed=s_mine, cond=cond, guidance=w)
        if c.spacing.startswith("adaptive"):
            res = sample(pred, x_mine, solver=c.solver, **kw)
        else:
            res = sample(pred, x_mine, solver=c.solver, steps=c.steps, spacing=c.spacing, **kw)
        x, nfe = res.samples, res.nfe
        steps = c.steps if c.steps is not None else res.info.get("accepted", res.info.get("steps"))
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    wall = time.perf_counter() - t0  # this rank's time for its block
    return Outcome(dist.gather_cat(x), nfe, steps, wall)
