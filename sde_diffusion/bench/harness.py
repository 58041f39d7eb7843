"""The step-count benchmark, orchestrated: open the run, plan, loop (run, score, record), report.

Nothing inside ``sde_diffusion.bench`` imports this module (the package ``__init__`` re-exports it).
Folder layout (``out``):
  ``rows.jsonl``  one JSON record per finished configuration (the resume log; ``store.py``);
  ``run.json``    the run's identity and metadata;  ``bench.lock`` one running bench per folder;
  ``results.{csv,json,md}``, ``summary.md``, ``plots/*.png``   rebuilt by ``report(out)`` from the log;
  ``grids/nfe{5,10,20}/*.png``  64 samples of each configuration;  ``samples/`` the first samples of
  the rows the samples figure may need;  ``cache/`` reference solves keyed by (weights, seed, n).
Reference caches are read from ``cache_dirs`` (passed in; e.g. a committed results folder's cache)
and ``out/cache``; new ones are written to ``out/cache``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import plots as P
from . import report as R
from . import store as S
from .models import BenchModel, load_bench_model
from .plan import FULL_NFES, GRID_NFES, MAX_NFE, QUICK_NFES, REF_TOL, plan
from .run import Outcome, class_labels, forward_ms, reference_pf, run_config, slug, start_streams
from .score import CI_METHODS, score

__all__ = ["run_bench", "report", "load_folder", "reproduce_peer"]

KEEP = {4: 16, 2: 1024}
REF_CHUNK = 128  # the reference solve runs on blocks of this many samples (results independent of torchrun's world size)  # kept samples per row for the samples figure: images 16, 2-D points 1024


def _check_args(n, nfes, n_boot, seed, ci_method, guidance):
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in nfes):
        raise ValueError(f"NFE values must be integers >= 1, got {nfes!r}")
    if any(k > MAX_NFE for k in nfes):
        raise ValueError(f"NFE {max(nfes)} is above the benchmark's limit {MAX_NFE} (the training chain has at most "
                         f"1000 steps; the reference rows already cover the converged solve)")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        raise ValueError(f"n_boot must be an integer >= 0 (0 = no intervals), got {n_boot!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if ci_method not in CI_METHODS:
        raise ValueError(f"unknown interval method {ci_method!r}; valid: {', '.join(CI_METHODS)}")
    for w in guidance:
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0):
            raise ValueError(f"guidance scales must be finite numbers >= 0, got {w!r}")


def _device(device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; valid: cpu, cuda, cuda:N")
    return dev


def _to_device(bm: BenchModel, dev: torch.device) -> BenchModel:
    net = bm.predictor.net
    if isinstance(net, torch.nn.Module):
        net.to(dev)
    if bm.mixture is not None and hasattr(bm.mixture, "to"):
        bm.mixture.to(dev)
    return bm


def run_bench(model, solvers: Optional[Sequence[str]] = None, nfes: Optional[Sequence[int]] = None, n: int = 2000,
              seed: int = 0, out_dir="runs/bench", quick: bool = False, peers=True, spacings=None,
              n_boot: Optional[int] = None, progress: bool = False, plots: bool = True, log=print, dist=None,
              cache_dirs: Sequence = (), device="cpu", guidance: Optional[Sequence[float]] = None,
              ci_method: Optional[str] = None, command: Optional[str] = None, ref_tol: float = REF_TOL) -> list:
    """Run (or resume) the benchmark; returns the flat metric rows (also written to ``out_dir``).

    ``model``: a spec for ``load_bench_model`` or a ``BenchModel``. ``solvers``: names in
    ``SOLVERS`` (default all; quick mode leaves out the adaptive ones). ``nfes``: target NFEs
    (default 5, 10 quick / 5, 10, 20, 50 full; at most 1000). ``peers``: True (``QUICK_PEERS`` quick, all of ``peers.PEERS`` full), False, or a
    list of names. ``spacings``: our spacings (default: quick = each solver's default, full =
    ``OUR_SPACINGS``). ``n_boot``: bootstrap resamples (0 = no intervals); ``ci_method``: "BCa" or
    "percentile" (default: percentile in quick mode, BCa otherwise). ``guidance``: scales for a
    class-conditional model (sample k asks for class k mod C). ``cache_dirs``: extra folders to read
    reference solves from. ``ref_tol``: rtol = atol of the reference probability-flow solve. ``dist``: under torchrun, samples are sharded by index and rank 0 scores
    and writes (rows equal a single-process run's)."""
    from ..distributed import Dist
    from ..solvers import SOLVERS

    dist = dist or Dist()
    main = dist.is_main
    nfes = tuple(nfes) if nfes else (QUICK_NFES if quick else FULL_NFES)
    n_boot = n_boot if n_boot is not None else (50 if quick else 200)
    ci_method = ci_method or ("percentile" if quick else "BCa")
    gs = tuple(float(w) for w in guidance) if guidance else (None,)
    _check_args(n, nfes, n_boot, seed, ci_method, gs)
    dev = _device(device)
    from ..solvers import ADAPTIVE

    solvers = list(solvers) if solvers else [s for s in SOLVERS if not (quick and s in ADAPTIVE)]
    bm = load_bench_model(model, device=dev)
    if gs != (None,) and not bm.num_classes:
        raise ValueError(f"--guidance needs a class-conditional model; {bm.name!r} declares no class_labels")
    bm = _to_device(bm, dev)
    skipped = []
    if not (isinstance(ref_tol, float) and 0 < ref_tol <= 1e-3):
        raise ValueError(f"ref_tol must be a float in (0, 1e-3], got {ref_tol!r}")
    cfgs = plan(bm, solvers, nfes, quick, peers, spacings, gs, skipped, ref_tol)  # name errors before any work
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    run_id = dict(model=bm.name, ident=bm.ident, n=n, seed=seed, guidance=list(gs) if gs != (None,) else None)
    S.check_identity(out, run_id)
    with S.folder_lock(out) if main else nullcontext():
        return _run(bm, cfgs, skipped, out, run_id, n, seed, quick, n_boot, ci_method, dev, dist, progress, plots,
                    log, [Path(d) for d in cache_dirs], command, ref_tol)


def _run(bm, cfgs, skipped, out, run_id, n, seed, quick, n_boot, ci_method, dev, dist, progress, plots, log,
         cache_dirs, command, ref_tol) -> list:
    main = dist.is_main
    pred = bm.predictor
    x_T = start_streams(seed, 0, n, bm.shape, bm.dtype, dev)
    labels = class_labels(bm, n, dev)
    fwd_ms = forward_ms(pred, x_T)
    meta = dict(run_id, quick=quick, planned=len(cfgs), forward_ms=fwd_ms, n_boot=n_boot, ci_method=ci_method, device=str(dev),
                num_classes=bm.num_classes, machine=_machine(), versions=_versions(),
                date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), **({"command": command} if command else {}))
    if main:
        S.write_meta(out, meta)
    for name, sp, nfe, why in skipped:
        log(f"  skipped {name} {sp} NFE {nfe}: {why}")
    records = S.read_records(out) if main else []
    done = dist.broadcast_object({rec["key"] for rec in records})  # every rank skips the same rows
    todo = sorted((c for c in cfgs if c.key not in done), key=_priority)  # stable: plan order within a priority
    log(f"bench {bm.name}: {len(cfgs)} configurations, {len(cfgs) - len(todo)} already done; n={n}, "
        f"one forward {fwd_ms:.1f} ms on {dev}")
    caches = list(cache_dirs) + [out / "cache"]
    refs = {}

    def ref(w):
        if w not in refs:
            def compute():  # in fixed chunks: the adaptive solve's steps depend on its batch, not on the world size
                m = dist.shard(math.ceil(n / REF_CHUNK))
                parts, nfe = [], 0
                for a in range(m.start * REF_CHUNK, min(m.stop * REF_CHUNK, n), REF_CHUNK):
                    b = min(a + REF_CHUNK, n)
                    cond = {"class_labels": labels[a:b]} if labels is not None else None
                    x, k = reference_pf(pred, x_T[a:b], ref_tol, ref_tol, cond=cond, guidance=w)
                    parts.append(x)
                    nfe = max(nfe, k)
                local = torch.cat(parts) if parts else x_T[:0]
                nfes = dist.gather_cat(torch.tensor([nfe], dtype=torch.float64, device=x_T.device))
                return dist.gather_cat(local), int(nfes.max())

            name = f"pf_dopri5_tol{ref_tol:g}" + ("" if w is None else f"_w{w:g}")
            x, nfe, wall = _cached_ref(name, bm, seed, x_T, caches, out / "cache" if main else None, compute)
            refs[w] = Outcome(x, nfe, None, wall)
        return refs[w]

    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="cfg", desc="bench")
    t_start = time.perf_counter()
    for c in todo:
        if bar is not None:
            bar.set_postfix_str(f"{c.library}:{c.label} {c.spacing} nfe{c.target_nfe}"[:60])
        try:
            res = run_config(bm, c, seed, n, ref, caches, out / "cache", bm.ident, dist, dev)
        except Exception as e:  # a failing solver is a result, not a crash of the whole run
            from ..sampling import SolverError

            if not isinstance(e, (SolverError, ValueError, FloatingPointError)):
                raise
            log(f"  {c.key}: failed ({type(e).__name__}: {e})")
            res = None
        reference = None if c.role == "floor" else ref(c.guidance).x
        if not main:
            continue
        rows = []
        cmd = R.sample_command(dict(asdict(c)), meta)
        if res is not None:
            lab = labels if (c.role != "floor" and labels is not None and c.guidance is not None) else None
            scores = score(bm, res.x, reference, n_boot, seed, labels=lab, method=ci_method)
            if c.role == "floor" and bm.digits:
                from .. import metrics as M
                from ..data import load_digits

                k = min(n, 898)
                scores.append((f"fd_digits_disjoint_{k}", M.noise_floor_fd(load_digits("all"), k, seed, M.digits_features),
                               math.nan, math.nan))
            nfe, wall = res.nfe, res.wall_s
            for metric, v, lo, hi in scores:
                rows.append(dict(library=c.library, solver=c.label, spacing=c.spacing, steps=res.steps, nfe=nfe,
                                 metric=metric, value=v, ci_low=lo, ci_high=hi, wall_s=wall, target_nfe=c.target_nfe,
                                 role=c.role, options=json.dumps(dict(c.options)), n=n, guidance=c.guidance,
                                 ms_per_nfe=1000 * wall / nfe if nfe else None,
                                 overhead=wall / (nfe * fwd_ms / 1000) if nfe else None, command=cmd))
            _keep_samples(out, c, res.x)
        S.append_record(out, dict(key=c.key, config=asdict(c), command=cmd, rows=rows))
        records.append(dict(key=c.key, config=asdict(c), command=cmd, rows=rows))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if not main:
        return []
    meta["run_s_this_call"] = time.perf_counter() - t_start
    S.write_meta(out, meta)
    return report(out, plots=plots)


def _priority(c) -> int:
    """Run order: floor and PF reference, then each solver's and peer's default spacing (the rows a
    partial run most needs), then the 1000-step ancestral reference, then the remaining sweep."""
    from ..solvers import DEFAULT_SPACING

    if c.role == "floor" or c.solver == "pf_reference":
        return 0
    if c.role == "reference":
        return 2
    if c.library == "diffusers":
        from ..peers import peer_spacings

        return 1 if c.spacing == peer_spacings(c.solver)[0] else 3
    return 1 if c.spacing in ("tuned", DEFAULT_SPACING.get(c.solver)) or c.spacing.startswith("adaptive") else 3


def _cached_ref(name, bm, seed, x_T, caches, write_dir, compute):
    from .run import cached

    fname = f"{slug(name)}_{bm.ident}_seed{seed}_n{x_T.shape[0]}.safetensors"
    return cached(fname, x_T, bm.dtype, caches, write_dir, compute)


def _keep_samples(out: Path, c, x: torch.Tensor) -> None:
    from ..files import save_safetensors_atomic

    if c.role == "floor" or not (c.target_nfe in GRID_NFES or c.solver == "pf_reference"):
        return
    if c.role == "solver":
        P.save_grid_png(x, out / "grids" / f"nfe{c.target_nfe}" / (slug(f"{c.library}_{c.label}_{c.spacing}") + ".png"))
    k = KEEP.get(x.ndim, 16)
    save_safetensors_atomic({"x": x[:k].detach().cpu()}, out / "samples" / f"{slug(c.key)}.safetensors")


def _load_samples(out: Path, records: list) -> dict:
    from ..files import load_safetensors

    got = {}
    for rec in records:
        p = out / "samples" / f"{slug(rec['key'])}.safetensors"
        if p.is_file():
            try:
                got[rec["key"]] = load_safetensors(p)[0]["x"].numpy()
            except (ValueError, KeyError):
                continue
    return got


def load_folder(out: Path) -> tuple:
    """(records, meta, flat rows) of a bench folder, read from rows.jsonl and run.json only."""
    out = Path(out)
    missing = [f for f in (S.ROWS_NAME, S.META_NAME) if not (out / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{out} is not a benchmark folder: missing {', '.join(missing)} "
                                f"(run `sde-diffusion bench --out {out}` first)")
    records = S.read_records(out, repair=False)
    meta = dict(S.read_meta(out), done=len(records))
    rows = R.flat_rows(records, meta)
    for r in rows:  # JSON null -> NaN for the numeric columns
        for k in ("value", "ci_low", "ci_high", "wall_s"):
            r[k] = math.nan if r.get(k) is None else float(r[k])
    return records, meta, rows


def report(out, plots: bool = True, docs: Optional[Path] = None) -> list:
    """Rebuild results.csv/json/md, summary.md and plots/ of ``out`` from its rows.jsonl and
    run.json alone (no sampling); with ``docs``, splice summary.md into that page's generated
    section. Returns the flat metric rows."""
    out = Path(out)
    records, meta, rows = load_folder(out)
    R.write_tables(out, rows, meta)
    if plots and rows:
        figures = P.plot_all(out, rows, _load_samples(out, records))
    else:  # tables only: link the figures already there
        figures = sorted(p.relative_to(out) for p in (out / "plots").glob("*.png"))
    if plots:  # figures of metrics or rows no longer in the log would be stale
        for old in (out / "plots").glob("*.png"):
            if old.relative_to(out) not in figures:
                old.unlink()
    from ..files import atomic_write_text

    atomic_write_text(out / "summary.md", R.docs_markdown(rows, meta, figures, "."))
    if docs is not None:
        link = R.relative_link(docs, out)
        R.splice_docs(Path(docs), R.docs_markdown(rows, meta, figures, link), link)
    return rows


def reproduce_peer(model: str, peer: str, spacing: str, steps: int, n: int, seed: int = 0,
                   guidance: Optional[float] = None, out: Optional[str] = None) -> torch.Tensor:
    """The samples of a diffusers row: scheduler ``peer`` driving ``model`` from the bench's x_T
    (x_T of sample k from seed + k as ``sample --seed``; DDPM's noise from the generator seeded seed + k)."""
    from ..peers import run_peer

    bm = load_bench_model(model)
    from ..randomness import per_sample_generators

    x_T = start_streams(seed, 0, n, bm.shape, bm.dtype, "cpu")
    gens = per_sample_generators(seed, n)
    labels = class_labels(bm, n, "cpu")
    pred = bm.predictor
    if guidance is not None and labels is not None:
        with pred.conditioned({"class_labels": labels}, guidance=guidance):
            x, _ = run_peer(pred, peer, steps, x_T, spacing=spacing, generator=gens)
    else:
        x, _ = run_peer(pred, peer, steps, x_T, spacing=spacing, generator=gens)
    if out is not None:
        np.savez(out, samples=x.float().numpy())
    return x


def _machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"


def _versions() -> dict:
    import sys

    v = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__}
    try:
        import diffusers

        v["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return v
