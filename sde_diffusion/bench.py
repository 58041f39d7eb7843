"""The step-count benchmark: every solver x spacing x NFE against sample quality, with diffusers'
schedulers on the same network and the same x_T.

``run_bench(model, ...)`` writes to ``out_dir``:
  ``rows.jsonl``    one JSON line per finished configuration (append + fsync; the resume log);
  ``results.csv`` / ``results.json`` / ``results.md``  every metric row (rewritten atomically);
  ``plots/*.png``   quality vs measured NFE (log x; per solver its best spacing at each NFE, peers dashed);
  ``grids/*.png``   samples of every configuration at NFE 5, 10 and 20;
  ``cache/``        the reference probability-flow solve, keyed by (model, seed, n, tolerance).
A configuration is (library, solver, spacing, target NFE). A restarted run with the same model,
n and seed skips the configurations already in ``rows.jsonl``.

Solver error ("rmse_ref") is measured against a tight probability-flow solve from the same x_T:
the ``ode`` solver (dopri5 on the PF-ODE in log-SNR) at rtol = atol = 1e-6 from t = 1 to the last
training time t = 1/N, then the x0 prediction there -- the same final denoising step every
discrete-time solver and diffusers scheduler ends with.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from . import metrics as M
from .model import NoisePredictor
from .randomness import per_sample_generators

__all__ = ["run_bench", "load_bench_model", "gmm_benchmark", "reference_pf", "plan", "Config",
           "BenchModel", "CSV_COLUMNS", "QUICK_NFES", "FULL_NFES", "OUR_SPACINGS"]

QUICK_NFES = (5, 10, 20)
FULL_NFES = (5, 10, 20, 50)
QUICK_PEERS = ("ddim", "euler", "dpmpp_2m", "unipc")  # quick mode; full mode runs every peer in peers.PEERS
GRID_NFES = (5, 10, 20)
OUR_SPACINGS = ("uniform", "quadratic", "logsnr", "karras", "trailing")
ADAPTIVE_TOLS = (1e-2, 1e-3, 1e-4)
REF_TOL = 1e-6
NOISE_SEED_OFFSET = 2_000_003  # stochastic solvers' per-sample noise seeds: seed + offset + k
CSV_COLUMNS = ["library", "solver", "spacing", "steps", "nfe", "metric", "value", "ci_low", "ci_high", "wall_s",
               "target_nfe", "role", "options", "n", "ms_per_nfe", "overhead"]

# solver option variants benchmarked in addition to the defaults (full mode); quick mode uses the first
VARIANTS = {
    "dpm_solver": [{"order": 3}, {"order": 2}],
    "unipc": [{"order": 2}, {"order": 3}, {"order": 2, "variant": "bh1"}],
}


# ---- models ---------------------------------------------------------------------------------
@dataclass
class BenchModel:
    """A predictor plus what is needed to score its samples."""
    name: str
    predictor: NoisePredictor
    ident: str  # cache key: changes when the weights change
    dtype: torch.dtype = torch.float32
    mixture: object = None  # GaussianMixture for the analytic tier
    real: Optional[torch.Tensor] = None  # reference set (digits test split / exact mixture draws)
    floor: Optional[torch.Tensor] = None  # a real set disjoint from ``real`` for the floor row
    digits: bool = False

    @property
    def shape(self) -> tuple:
        return tuple(self.predictor.sample_shape)


def gmm_benchmark() -> tuple:
    """The analytic tier: 8 well-separated 2-D Gaussians (std 0.08, unequal weights) on a ring of
    radius 0.8, through the DDPM linear chain (1000 steps). Returns (mixture, predictor)."""
    from .analytic import GaussianMixture
    from .schedules import linear_betas
    from .sde import VPSDE

    K = 8
    ang = torch.arange(K, dtype=torch.float64) * 2 * math.pi / K
    means = 0.8 * torch.stack([ang.cos(), ang.sin()], 1)
    w = torch.tensor([2.0, 1, 1, 1, 2, 1, 1, 1], dtype=torch.float64)
    gm = GaussianMixture(means, 0.08, w / w.sum())
    return gm, gm.predictor(VPSDE.from_betas(linear_betas(1000)))


def load_bench_model(spec: str) -> BenchModel:
    """``"gmm"`` (analytic tier), ``"digits"`` (the shipped U-Net) or a model folder/path."""
    if spec == "gmm":
        gm, pred = gmm_benchmark()
        g = torch.Generator().manual_seed(12345)
        real = gm.sample(10000, generator=g)
        floor = gm.sample(10000, generator=g)
        return BenchModel("gmm", pred, "gmm-ring8-v1", torch.float64, mixture=gm, real=real, floor=floor)
    from .checkpoints import load_model

    pred = load_model(spec)
    sha = (getattr(pred, "config", {}) or {}).get("weights", {}).get("sha256", "") or str(spec)
    shape = tuple(pred.sample_shape)
    if shape == (1, 8, 8):
        from .data import load_digits

        return BenchModel(str(spec), pred, f"{Path(str(spec)).name}-{sha[:16]}", real=load_digits("test"),
                          floor=load_digits("train"), digits=True)
    return BenchModel(str(spec), pred, f"{Path(str(spec)).name}-{sha[:16]}")


# ---- configurations -------------------------------------------------------------------------
@dataclass
class Config:
    library: str  # "sde_diffusion", "diffusers" or "data"
    solver: str  # registry / peer name
    spacing: str
    target_nfe: int
    steps: Optional[int] = None
    options: dict = field(default_factory=dict)
    role: str = "solver"  # "solver", "reference" or "floor"

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items() if k not in ("orders", "ts", "rtol", "atol"))
        return f"{self.solver}[{opts}]" if opts else self.solver

    @property
    def key(self) -> str:
        return f"{self.library}|{self.label}|{self.spacing}|{self.target_nfe}"


def _zero_predictor(model: NoisePredictor) -> NoisePredictor:
    return NoisePredictor(lambda x, t: torch.zeros_like(x), model.sde, "epsilon",
                          sample_shape=model.sample_shape, timestep_dtype=torch.float64)


def _probe_nfe(zero: NoisePredictor, solver: str, steps: int, spacing: str, options: dict) -> int:
    from .sampling import sample

    x = torch.zeros((1, *zero.sample_shape), dtype=torch.float64)
    return sample(zero, x, solver=solver, steps=steps, spacing=spacing, seed=0, **options).nfe


def steps_for_nfe(model: NoisePredictor, solver: str, nfe: int, spacing: str, options: dict) -> Optional[tuple]:
    """(steps, options) spending at most ``nfe`` evaluations with ``solver`` -- the most steps that
    fit, found from the measured NFE of steps = 2, 3 (NFE is affine in steps) on a zero network.
    ``dpm_solver`` gets DPM-Solver-fast's per-step orders for exactly ``nfe`` (Lu et al. 2022, Sec. 3.4).
    None when even one step costs more than ``nfe``."""
    if solver == "dpm_solver":
        from .solvers.dpm import dpm_solver_fast_orders

        opts = dict(options)
        orders = dpm_solver_fast_orders(nfe, opts.get("order", 3))
        opts["orders"] = orders
        return len(orders), opts
    zero = _zero_predictor(model)
    try:
        n2, n3 = _probe_nfe(zero, solver, 2, spacing, options), _probe_nfe(zero, solver, 3, spacing, options)
    except ValueError:
        return None
    a, b = n3 - n2, n2 - 2 * (n3 - n2)
    if a <= 0:
        return None
    k = max(1, (nfe - b) // a)
    for _ in range(4):  # confirm on the solver itself (grids can change NFE at the ends)
        try:
            got = _probe_nfe(zero, solver, k, spacing, options)
        except ValueError:
            return None
        if got > nfe and k > 1:
            k -= 1
        elif got <= nfe and _probe_nfe(zero, solver, k + 1, spacing, options) <= nfe:
            k += 1
        else:
            break
    return (k, dict(options)) if _probe_nfe(zero, solver, k, spacing, options) <= nfe else None


def plan(model: BenchModel, solvers: Sequence[str], nfes: Sequence[int], quick: bool, peers=True,
         spacings: Optional[Sequence[str]] = None) -> list:
    """All configurations of a run, references and floor first."""
    from .solvers import ADAPTIVE, DEFAULT_SPACING, SOLVERS, STOCHASTIC

    pred = model.predictor
    discrete = pred.sde.num_train_steps is not None
    cfgs = [Config("data", "real", "-", 0, role="floor"),
            Config("sde_diffusion", "pf_reference", f"dopri5 tol={REF_TOL:g}", 0, role="reference")]
    if discrete:
        cfgs.append(Config("sde_diffusion", "ancestral", "uniform", pred.sde.num_train_steps,
                           steps=pred.sde.num_train_steps, role="reference"))
    for name in solvers:
        if name not in SOLVERS:
            raise ValueError(f"unknown solver {name!r}; valid: {', '.join(SOLVERS)}")
        if name in ADAPTIVE:
            for tol in ADAPTIVE_TOLS[:1] if quick else ADAPTIVE_TOLS:
                cfgs.append(Config("sde_diffusion", name, f"adaptive rtol={tol:g}", 0,
                                   options={"rtol": tol, "atol": tol}))
            continue
        params = inspect.signature(SOLVERS[name]).parameters
        variants = [v for v in VARIANTS.get(name, [{}]) if all(k in params for k in v)] or [{}]
        if quick:
            variants = variants[:1]
        sp_list = list(spacings) if spacings else list(OUR_SPACINGS)
        if (quick or name in STOCHASTIC) and not spacings:  # stochastic solvers: default spacing only
            sp_list = [DEFAULT_SPACING.get(name, "uniform")]
        if not discrete:
            sp_list = [s for s in sp_list if s not in ("trailing", "leading", "linspace")]
        for opts in variants:
            for sp in sp_list:
                for nfe in nfes:
                    got = steps_for_nfe(pred, name, nfe, sp, opts)
                    if got is not None:
                        cfgs.append(Config("sde_diffusion", name, sp, nfe, steps=got[0], options=got[1]))
            for nfe in nfes if opts == variants[0] else ():  # model-tuned grids shipped with the model
                got = steps_for_nfe(pred, name, nfe, "logsnr", opts)
                grid = _tuned_grid(model, name, got[0]) if got is not None else None
                if grid is not None:
                    cfgs.append(Config("sde_diffusion", name, "tuned", nfe, steps=got[0], options=dict(got[1], ts=grid)))
    if peers and discrete:
        from .peers import PEERS, peer_nfe, peer_spacings

        if peers is True:
            names = list(QUICK_PEERS) if quick else list(PEERS)
        else:
            names = [peers] if isinstance(peers, str) else list(peers)
        for name in names:
            sps = peer_spacings(name)[:1] if quick else peer_spacings(name)
            for sp in sps:
                for nfe in nfes:
                    k = (nfe + 1) // 2 if name == "heun" else nfe
                    if k >= 1 and peer_nfe(name, k) <= nfe and k <= pred.sde.num_train_steps:
                        cfgs.append(Config("diffusers", name, sp, nfe, steps=k))
    seen, out = set(), []
    for c in cfgs:
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out


def _tuned_grid(model: BenchModel, solver: str, steps: int) -> Optional[list]:
    """The model's tuned grid for (solver, steps) from ``sde_diffusion.tuning``, if shipped."""
    try:
        from .tuning import load_tuned_grid

        return [float(t) for t in load_tuned_grid(model.name, solver, steps)]
    except (ImportError, FileNotFoundError, ValueError):
        return None


# ---- the reference probability-flow solve ----------------------------------------------------
def reference_pf(model: NoisePredictor, x_T: torch.Tensor, rtol: float = REF_TOL, atol: float = REF_TOL) -> tuple:
    """Tight PF-ODE solve from x_T at t = 1 with this project's ``ode`` solver (dopri5 in log-SNR,
    to t = 1/N, then the x0 prediction there); returns (x0, nfe)."""
    from .sampling import sample

    res = sample(model, x_T, solver="ode", rtol=rtol, atol=atol)
    return res.samples, res.nfe


SHIPPED_CACHE = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cache"


def _cached(bm: BenchModel, name: str, x_T, seed: int, cache_dir: Path, compute: Callable, dist=None) -> tuple:
    """(samples, nfe, wall_s) of a reference run, from ``cache_dir`` or the repository's
    ``benchmarks/results/cache`` (read-only) when present, else computed and stored in ``cache_dir``."""
    from .checkpoints import load_safetensors, save_safetensors_atomic

    fname = f"{_slug(name)}_{bm.ident}_seed{seed}_n{x_T.shape[0]}.safetensors"
    for d in (cache_dir, SHIPPED_CACHE):
        if (d / fname).is_file():
            try:
                t, meta = load_safetensors(d / fname)
                if t["x"].shape == x_T.shape:
                    return t["x"].to(bm.dtype), int(meta["nfe"]), float(meta["wall_s"])
            except (ValueError, KeyError):
                pass
    t0 = time.perf_counter()
    x, nfe = compute()
    wall = time.perf_counter() - t0
    if dist is None or dist.is_main:
        save_safetensors_atomic({"x": x}, cache_dir / fname, metadata={"nfe": str(nfe), "wall_s": repr(wall)})
    return x, nfe, wall


# ---- metrics ------------------------------------------------------------------------------
def score(bm: BenchModel, x: torch.Tensor, ref: Optional[torch.Tensor], n_boot: int, seed: int) -> list:
    """Metric rows (metric, value, ci_low, ci_high) of samples x."""
    rows = []
    n = x.shape[0]

    def add(name, fn, recenter=False):
        v = float(fn(np.arange(n)))
        lo, hi = M.bootstrap_ci(fn, n, n_boot=n_boot, seed=seed, recenter=recenter) if n_boot >= 2 else (math.nan, math.nan)
        rows.append((name, v, lo, hi))

    if ref is not None:
        se = ((x.double() - ref.double()) ** 2).reshape(n, -1).mean(1).numpy()
        add("rmse_ref", lambda i: math.sqrt(se[i].mean()))
    flat = x.reshape(n, -1).double().numpy()
    real = bm.real.reshape(bm.real.shape[0], -1).double().numpy() if bm.real is not None else None
    if bm.mixture is not None:
        gm = bm.mixture
        lp = gm.log_prob(x.double()).numpy()
        add("logp", lambda i: lp[i].mean())
        mu_r, cov_r = _mixture_moments(gm)
        add("fd", lambda i: M.frechet_distance(*M.gaussian_stats(flat[i]), mu_r, cov_r), recenter=True)
        add("coverage", lambda i: M.mode_stats(gm, x[torch.as_tensor(i)])["coverage"])
        add("mode_tv", lambda i: M.mode_stats(gm, x[torch.as_tensor(i)])["mode_tv"])
    if bm.digits:
        feats = M.digits_features(x)
        mu_t, cov_t = M.digits_reference_stats()
        real_f = M.digits_features(bm.real)
        add("fd_digits", lambda i: M.frechet_distance(*M.gaussian_stats(feats[i]), mu_t, cov_t), recenter=True)
        add("kid_digits", lambda i: M.kid(feats[i], real_f), recenter=True)
    if real is not None:
        ref_sorted = np.sort(real @ M.projections(real.shape[1], 128, 0), axis=0)
        add("sw", lambda i: M.sliced_wasserstein(flat[i], real, 128, 0, y_proj_sorted=ref_sorted), recenter=True)
    return rows


def _mixture_moments(gm) -> tuple:
    w = gm.weights.numpy()
    mu = gm.means.numpy()
    m = w @ mu
    cov = sum(w[k] * (gm.covs[k].numpy() + np.outer(mu[k] - m, mu[k] - m)) for k in range(gm.K))
    return m, cov


# ---- running one configuration -------------------------------------------------------------
def _forward_ms(pred: NoisePredictor, x: torch.Tensor, repeats: int = 3) -> float:
    with torch.no_grad():
        pred.raw(x, 0.5)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            pred.raw(x, 0.5)
            times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def _run_config(bm: BenchModel, c: Config, x_T, seed: int, ref_cache: Callable, cache_dir: Path, dist=None) -> tuple:
    """(samples, measured nfe, wall seconds) of one configuration. Under torchrun every rank runs
    its block of the samples (sample k keeps generator seed + k) and all ranks get the union."""
    from .distributed import Dist

    dist = dist or Dist()
    pred = bm.predictor
    n = x_T.shape[0]
    m = dist.shard(n)
    x_mine = x_T[m.start:m.stop]
    if c.role == "floor":
        g = np.random.default_rng(seed)
        pool = bm.floor
        idx = g.choice(pool.shape[0], n, replace=n > pool.shape[0])
        return pool[torch.as_tensor(idx)].to(bm.dtype), 0, 0.0
    if c.solver == "pf_reference":
        return ref_cache()
    noise_seed = seed + NOISE_SEED_OFFSET
    if c.role == "reference":  # ancestral 1000 steps: cached like the PF solve
        from .sampling import sample

        def compute():
            res = sample(pred, x_mine, solver=c.solver, steps=c.steps, spacing=c.spacing,
                         generator=per_sample_generators(noise_seed + m.start, len(m)), **c.options)
            return dist.gather_cat(res.samples), res.nfe

        return _cached(bm, c.key, x_T, seed, cache_dir, compute, dist)
    t0 = time.perf_counter()
    if c.library == "diffusers":
        from .peers import run_peer

        x, nfe = run_peer(pred, c.solver, c.steps, x_mine, spacing=c.spacing,
                          generator=per_sample_generators(noise_seed + m.start, len(m)))
    else:
        from .sampling import sample

        kw = dict(c.options, generator=per_sample_generators(noise_seed + m.start, len(m)))
        if c.spacing.startswith("adaptive") or c.spacing == "tuned":
            res = sample(pred, x_mine, solver=c.solver, **kw)
        else:
            res = sample(pred, x_mine, solver=c.solver, steps=c.steps, spacing=c.spacing, **kw)
        x, nfe = res.samples, res.nfe
        if c.steps is None:
            c.steps = res.info.get("accepted", res.info.get("steps"))
    wall = time.perf_counter() - t0  # this rank's time for its block
    return dist.gather_cat(x), nfe, wall


# ---- files --------------------------------------------------------------------------------
def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_log(path: Path) -> list:
    """Finished records of rows.jsonl; a torn last line (killed mid-write) is cut off."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(data))
    out = []
    for line in data.decode().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _append_log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_tables(out: Path, records: list, meta: dict) -> list:
    """results.csv / results.json / results.md from the log records; returns the flat rows."""
    import csv
    import io

    rows = [r for rec in records for r in rec["rows"]]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in CSV_COLUMNS})
    _atomic_write(out / "results.csv", buf.getvalue())
    _atomic_write(out / "results.json", json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    _atomic_write(out / "results.md", markdown(rows, meta))
    return rows


def _best(rows, metric, nfe, library, lower=True):
    cand = [r for r in rows if r["metric"] == metric and r["target_nfe"] == nfe and r["library"] == library
            and r["role"] == "solver"]
    if not cand:
        return None
    return min(cand, key=lambda r: r["value"] if lower else -r["value"])


HIGHER_IS_BETTER = {"logp", "coverage"}


def summary(rows: list) -> list:
    """Per target NFE and metric: our best vs diffusers' best (with the ratio ours/theirs)."""
    out = []
    metrics = sorted({r["metric"] for r in rows})
    nfes = sorted({r["target_nfe"] for r in rows if r["role"] == "solver" and r["target_nfe"] > 0})
    for nfe in nfes:
        for m in metrics:
            low = m not in HIGHER_IS_BETTER
            a, b = _best(rows, m, nfe, "sde_diffusion", low), _best(rows, m, nfe, "diffusers", low)
            if a is None:
                continue
            ok = b is not None and low and b["value"] > 0 and a["value"] >= 0
            ratio = a["value"] / b["value"] if ok else math.nan  # only for lower-is-better, positive metrics
            out.append(dict(target_nfe=nfe, metric=m, ours=a, theirs=b, ratio=ratio))
    return out


def markdown(rows: list, meta: dict) -> str:
    lines = [f"# Step-count benchmark: {meta.get('model')}", "",
             f"n = {meta.get('n')} samples per row, seed {meta.get('seed')}, one forward at batch n = "
             f"{meta.get('forward_ms', float('nan')):.2f} ms; {meta.get('machine', '')}", ""]
    lines += ["## Best of each library per NFE", "",
              "| NFE | metric | ours (solver, spacing, nfe) | value | diffusers (scheduler, spacing, nfe) | value | ours/theirs |",
              "|---|---|---|---|---|---|---|"]
    for s in summary(rows):
        a, b = s["ours"], s["theirs"]
        bd = f"{b['solver']}, {b['spacing']}, {b['nfe']}" if b else "-"
        bv = f"{b['value']:.4g}" if b else "-"
        lines.append(f"| {s['target_nfe']} | {s['metric']} | {a['solver']}, {a['spacing']}, {a['nfe']} | "
                     f"{a['value']:.4g} | {bd} | {bv} | {s['ratio']:.3g} |")
    metrics = sorted({r["metric"] for r in rows})
    lines += ["", "## All rows", "", "Value [95% bootstrap CI]; wall in s; ms/NFE; overhead = wall / (NFE x one forward).", "",
              "| library | solver | spacing | steps | NFE | " + " | ".join(metrics) + " | wall | ms/NFE | overhead |",
              "|---|---|---|---|---|" + "---|" * len(metrics) + "---|---|---|"]
    by_cfg = {}
    for r in rows:
        by_cfg.setdefault((r["role"], r["library"], r["solver"], r["spacing"], r["target_nfe"]), []).append(r)
    order = {"floor": 0, "reference": 1, "solver": 2}
    for key in sorted(by_cfg, key=lambda k: (order[k[0]], k[4], k[1], k[2], k[3])):
        rs = by_cfg[key]
        m = {r["metric"]: r for r in rs}
        r0 = rs[0]
        cells = []
        for name in metrics:
            r = m.get(name)
            if r is None:
                cells.append("")
            elif math.isnan(r["ci_low"]):
                cells.append(f"{r['value']:.4g}")
            else:
                cells.append(f"{r['value']:.4g} [{r['ci_low']:.3g}, {r['ci_high']:.3g}]")
        lines.append(f"| {r0['library']} | {r0['solver']} | {r0['spacing']} | {_fmt(r0['steps'])} | {r0['nfe']} | "
                     + " | ".join(cells) + f" | {r0['wall_s']:.2f} | {_fmt(r0['ms_per_nfe'])} | {_fmt(r0['overhead'])} |")
    return "\n".join(lines) + "\n"


def plot(out: Path, rows: list) -> list:
    """quality vs measured NFE per metric; each solver at its best spacing per NFE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for metric in sorted({r["metric"] for r in rows if r["role"] == "solver"}):
        fig, ax = plt.subplots(figsize=(7.5, 5))
        low = metric not in HIGHER_IS_BETTER
        lines = {}
        for r in rows:
            if r["metric"] != metric or r["role"] != "solver":
                continue
            k = (r["library"], r["solver"], r["target_nfe"])
            if k not in lines or (r["value"] < lines[k]["value"]) == low:
                lines[k] = r
        by_solver = {}
        for (lib, sol, _), r in lines.items():
            by_solver.setdefault((lib, sol), []).append(r)
        for i, ((lib, sol), rs) in enumerate(sorted(by_solver.items())):
            rs.sort(key=lambda r: r["nfe"])
            ax.plot([r["nfe"] for r in rs], [r["value"] for r in rs], "--" if lib == "diffusers" else "-",
                    marker="o" if lib != "diffusers" else "s", ms=3, label=("diffusers " if lib == "diffusers" else "") + sol,
                    color=plt.cm.tab20(i % 20))
        for r in rows:
            if r["metric"] == metric and r["role"] in ("reference", "floor"):
                ax.axhline(r["value"], color="gray", ls=":", lw=1)
                ax.annotate(f"{r['solver']} ({r['role']})", (1.0, r["value"]), xycoords=("axes fraction", "data"),
                            fontsize=7, color="gray", ha="right", va="bottom")
        ax.set_xscale("log")
        if low and all(r["value"] > 0 for rs in by_solver.values() for r in rs):
            ax.set_yscale("log")
        ax.set_xlabel("measured NFE")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs NFE (each solver at its best spacing per NFE; diffusers dashed)", fontsize=9)
        ax.legend(fontsize=6, ncol=2)
        ax.grid(True, which="both", alpha=0.3)
        p = out / "plots" / f"{metric}_vs_nfe.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    return paths


def _save_grid(bm: BenchModel, x: torch.Tensor, path: Path) -> None:
    if x.ndim == 4:
        from .images import save_grid

        save_grid(x[:64].float(), path, nrow=8)
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 3))
    v = x.reshape(x.shape[0], -1).double().numpy()
    ax.scatter(v[:, 0], v[:, 1], s=2, alpha=0.5)
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)
    ax.set_title(path.stem, fontsize=6)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in s)


# ---- the harness --------------------------------------------------------------------------
def run_bench(model, solvers: Optional[Sequence[str]] = None, nfes: Optional[Sequence[int]] = None, n: int = 2000,
              seed: int = 0, out_dir="runs/bench", quick: bool = False, peers=True, spacings=None,
              n_boot: Optional[int] = None, progress: bool = False, plots: bool = True, log=print, dist=None) -> list:
    """Run (or resume) the benchmark; returns the flat metric rows (also written to ``out_dir``).

    ``model``: a spec for ``load_bench_model`` or a ``BenchModel``. ``solvers``: names in
    ``SOLVERS`` (default all). ``nfes``: target NFEs (default 5, 10, 20 quick / 5, 10, 20, 50 full).
    ``peers``: True (``QUICK_PEERS`` quick, all of ``peers.PEERS`` full), False, or a list of names.
    Quick mode uses each solver's default spacing and options and each peer's default spacing;
    full mode sweeps ``OUR_SPACINGS`` (stochastic solvers: default spacing only), ``VARIANTS`` and
    every peer spacing.

    ``dist`` (``sde_diffusion.distributed.init()`` under torchrun): samples are sharded by index,
    gathered, and scored and written by rank 0 only; rows equal a single-process run's."""
    from .distributed import Dist
    from .solvers import SOLVERS

    dist = dist or Dist()
    main = dist.is_main

    bm = model if isinstance(model, BenchModel) else load_bench_model(model)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    nfes = tuple(nfes) if nfes else (QUICK_NFES if quick else FULL_NFES)
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in nfes):
        raise ValueError(f"NFE values must be integers >= 1, got {nfes!r}")
    solvers = list(solvers) if solvers else list(SOLVERS)
    n_boot = n_boot if n_boot is not None else (50 if quick else 200)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "rows.jsonl"

    run_id = dict(model=bm.name, ident=bm.ident, n=n, seed=seed)
    meta_path = out / "run.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        same = ("ident", "n", "seed")  # the weights' hash identifies the model, not how it was named
        if {k: old.get(k) for k in same} != {k: run_id[k] for k in same}:
            raise ValueError(f"{out} holds results of another run ({ {k: old.get(k) for k in run_id} }); use a new --out")
    pred = bm.predictor
    x_T = pred.sde.prior_sample((n, *bm.shape), per_sample_generators(seed, n), dtype=bm.dtype)
    fwd_ms = _forward_ms(pred, x_T)
    meta = dict(run_id, quick=quick, forward_ms=fwd_ms, n_boot=n_boot, machine=_machine(),
                versions=_versions(), date=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    if main:
        _atomic_write(meta_path, json.dumps(meta, indent=1) + "\n")

    cfgs = plan(bm, solvers, nfes, quick, peers, spacings)
    records = _read_log(log_path) if main else []
    done = dist.broadcast_object({rec["key"] for rec in records})  # every rank skips the same rows
    todo = [c for c in cfgs if c.key not in done]
    log(f"bench {bm.name}: {len(cfgs)} configurations, {len(cfgs) - len(todo)} already done; n={n}, "
        f"one forward {fwd_ms:.1f} ms")

    ref_state = {}

    def _sharded_reference():
        m = dist.shard(n)
        x, nfe = reference_pf(bm.predictor, x_T[m.start:m.stop])
        return dist.gather_cat(x), nfe

    def ref_cache():
        if "x" not in ref_state:
            ref_state["x"], ref_state["nfe"], ref_state["wall"] = _cached(
                bm, f"pf_dopri5_tol{REF_TOL:g}", x_T, seed, out / "cache", _sharded_reference, dist)
        return ref_state["x"], ref_state["nfe"], ref_state["wall"]

    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="cfg", desc="bench")
    t_start = time.perf_counter()
    for c in todo:
        if bar is not None:
            bar.set_postfix_str(f"{c.library}:{c.label} {c.spacing} nfe{c.target_nfe}"[:60])
        try:
            x, nfe, wall = _run_config(bm, c, x_T, seed, ref_cache, out / "cache", dist)
        except Exception as e:  # a failing solver is a result, not a crash of the whole run
            from .sampling import SolverError

            if not isinstance(e, (SolverError, ValueError, FloatingPointError)):
                raise
            log(f"  {c.key}: failed ({type(e).__name__}: {e})")
            x, nfe, wall = None, 0, 0.0
        ref = None if c.role == "floor" else ref_cache()[0]
        if not main:  # rank 0 scores and writes
            continue
        rows = []
        if x is not None:
            scores = score(bm, x, ref, n_boot, seed)
            if c.role == "floor" and bm.digits:
                from .data import load_digits

                k = min(n, 898)
                scores.append((f"fd_digits_disjoint_{k}", M.noise_floor_fd(load_digits("all"), k, seed, M.digits_features),
                               math.nan, math.nan))
            for metric, v, lo, hi in scores:
                rows.append(dict(library=c.library, solver=c.label, spacing=c.spacing, steps=c.steps, nfe=nfe,
                                 metric=metric, value=v, ci_low=lo, ci_high=hi, wall_s=wall, target_nfe=c.target_nfe,
                                 role=c.role, options=json.dumps({k: v for k, v in c.options.items()}), n=n,
                                 ms_per_nfe=1000 * wall / nfe if nfe else None,
                                 overhead=wall / (nfe * fwd_ms / 1000) if nfe else None))
            if c.target_nfe in GRID_NFES and c.role == "solver":
                _save_grid(bm, x, out / "grids" / f"nfe{c.target_nfe}" / (_slug(f"{c.library}_{c.label}_{c.spacing}") + ".png"))
        _append_log(log_path, dict(key=c.key, config=asdict(c), rows=rows))
        records.append(dict(key=c.key, rows=rows))
        write_tables(out, records, meta)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if not main:
        return []
    meta["run_s_this_call"] = time.perf_counter() - t_start
    _atomic_write(meta_path, json.dumps(meta, indent=1) + "\n")
    rows = write_tables(out, records, meta)
    if plots and rows:
        plot(out, rows)
    return rows


def _machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"


def _versions() -> dict:
    import sys

    v = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__}
    try:
        import diffusers

        v["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return v
