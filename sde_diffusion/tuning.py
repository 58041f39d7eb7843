"""Model-tuned few-step solvers: learn a K-step time grid plus a few per-step coefficients for one
model and NFE budget, by minimising the error against a tight probability-flow solve.

Method (docs/tuning.md). Learned time steps as in LD3 (Tong et al. 2025, "Learning to discretize
denoising diffusion ODEs", eq. 7: the loss is the distance between the few-step solve and a
teacher solve from the same x_T), which Align Your Steps (Sabour et al. 2024) and GITS (Chen et al.
2024) approximate with cheaper surrogates; plus, for ``dpmpp_2m``, one learned multistep weight per
step, a low-parameter form of the learned solver coefficients of Bespoke Non-Stationary solvers
(Shaul et al. 2024, eq. 12) and S4S (Frankel et al. 2025). The parameters are

- the grid: positive log-SNR increments, lambda_i = lambda(t_start) + sum_{j<=i} softplus(u_j); with
  ``free_start`` the first time is free too (the solve starts from x_T taken as the state at that
  time, as diffusers' multistep ``leading`` grids do); the last step always goes to t = 0;
- ``dpmpp_2m`` only: the weight w_i of the first divided difference in step i >= 1,
  x_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} phi_1(h_i) [m_i + w_i (m_i - m_{i-1})]
  (DPM-Solver++(2M), Lu et al. 2022b, Alg. 2, has w_i = 1/(2 r_i) and 0 on the step to t = 0;
  there the learned w extrapolates the last two x0 predictions). They are learned as offsets from
  the 2M value on the current grid, so the start point is exactly the standard solver;
- optionally (``time_shifts=True``, ``dpmpp_2m``): the time at which the network is evaluated in
  step i, log-SNR lambda_i + delta_i (time-shifted sampling, Li et al. 2024, "Alleviating exposure
  bias in diffusion models through sampling with shifted time steps").

That is 2K - 1 numbers (3K - 1 with time shifts; K - 1 or K for grid-only solvers), fitted by least
squares on the residual (solve - reference) over calibration x_T: Levenberg-Marquardt (Marquardt 1963) with
forward-difference Jacobians (one solve per parameter per iteration; LD3 backpropagates through the
solver instead, which needs a differentiable solver), or derivative-free Powell (``optimizer=``).
After every accepted iteration the RMSE on separate validation x_T is measured and the parameters
with the lowest validation error are kept (held-out early stopping; the run stops after
``patience`` iterations without a validation gain). The reported held-out error is measured on a
third set of x_T that neither the fit nor the stopping rule saw. All three sets come from named seed streams (``SEED_STREAMS``) that
no benchmark uses.

The result is a small JSON (``save_tuned``/``load_tuned``), consumed by
``sample(model, x_T, solver=S, steps=K, spacing="tuned")`` (configurations shipped beside a model
in ``assets/<model>/tuned.json``) or ``sample(..., tuned=FILE)``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .grids import time_grid
from .levenberg_marquardt import levenberg_marquardt
from .model import NoisePredictor
from .randomness import per_sample_generators
from .sampling import resolve_solver, sample
# the file side (format, loading, matching, export) lives in tuned_files.py; re-exported here
from .tuning_params import (Problem, check_inits, median_sample_rmse, rmse, shipped_grid,  # noqa: F401
                            shipped_matrices, standard_coefficients)
from .tuned_files import (FORMAT, FORMAT_VERSION, export_diffusers, load_tuned, load_tuned_grid,  # noqa: F401
                          model_fingerprint, resolve_tuned, save_tuned, shipped_tuned)  # noqa: F401

log = logging.getLogger(__name__)

__all__ = ["tune", "tune_grid", "reference_solve", "load_tuned", "save_tuned", "resolve_tuned", "load_tuned_grid",
           "export_diffusers", "model_fingerprint", "draw_noise", "steps_for_nfe", "SEED_STREAMS",
           "CALIBRATION_SEED", "FORMAT"]

# named seed streams: x_T number k of a stream is drawn with seed base + k. Benchmarks use seeds
# 0 .. n - 1 (+ 2_000_003 for stochastic noise), so these never meet a benchmark sample.
SEED_STREAMS = {"tune-calibration": 1_000_000, "tune-validation": 1_500_000, "tune-holdout": 1_700_000}
CALIBRATION_SEED = SEED_STREAMS["tune-calibration"]
MIN_CALIBRATION = 16
REFERENCE_TOL = 1e-6  # the benchmark's reference (sde_diffusion.bench.REF_TOL)
COEFFICIENT_SOLVERS = {"dpmpp_2m"}  # solvers that take learned per-step ``coefficients``


# ---- identity, noise, references ------------------------------------------------------------------

def draw_noise(model: NoisePredictor, stream: str, n: int, shape=None, device=None) -> torch.Tensor:
    """n starting points x_T from the named seed ``stream`` (x_T number k uses seed base + k)."""
    if stream not in SEED_STREAMS:
        raise ValueError(f"unknown seed stream {stream!r}; valid: {', '.join(SEED_STREAMS)}")
    shape = tuple(shape or model.sample_shape or ())
    if not shape:
        raise ValueError("give shape or a model with sample_shape")
    return model.sde.prior_sample((n, *shape), per_sample_generators(SEED_STREAMS[stream], n), device=device)


def reference_solve(model: NoisePredictor, x_T: torch.Tensor, rtol: float = REFERENCE_TOL, atol: float = REFERENCE_TOL,
                    cache=None, sample_kwargs: Optional[dict] = None) -> torch.Tensor:
    """A tight adaptive probability-flow solve from x_T at t = 1 to t = 0 (the ``ode`` solver, as the
    benchmark's reference). ``cache``: a folder; the result is stored there as safetensors, keyed by the
    model's weights hash, the bytes of x_T, the tolerances and the conditioning."""
    kw = dict(sample_kwargs or {})
    path = None
    if cache is not None:
        key = hashlib.sha256()
        key.update(f"{model_fingerprint(model)}|{rtol:g}|{atol:g}|{sorted((k, repr(v)) for k, v in kw.items() if k != 'cond')}".encode())
        key.update(x_T.detach().to("cpu").contiguous().numpy().tobytes())
        for k, v in sorted((kw.get("cond") or {}).items()):
            key.update(k.encode() + v.detach().to("cpu").contiguous().numpy().tobytes())
        path = Path(cache) / f"pf_reference_{key.hexdigest()[:24]}.safetensors"
        if path.is_file():
            from .files import load_safetensors

            return load_safetensors(path, device=x_T.device)[0]["x0"]
    out = sample(model, x_T, solver="ode", rtol=rtol, atol=atol, **kw).samples
    if path is not None:
        from .files import save_safetensors_atomic

        save_safetensors_atomic({"x0": out}, path, metadata={"rtol": f"{rtol:g}", "atol": f"{atol:g}"})
    return out


# ---- solver budget ----------------------------------------------------------------------------------

def _solver_for_tuning(solver: str):
    from .solvers import ADAPTIVE, STOCHASTIC

    if not isinstance(solver, str):
        raise ValueError(f"solver must be a solver name, got {type(solver).__name__}")
    name, fn = resolve_solver(solver)  # unknown names: ValueError listing the valid ones
    tunable = sorted(n for n in __import__("sde_diffusion.solvers", fromlist=["SOLVERS"]).SOLVERS
                     if n not in ADAPTIVE and n not in STOCHASTIC)
    if name in STOCHASTIC:
        raise ValueError(f"solver {name!r} is stochastic; tuning matches the deterministic probability-flow solve, "
                         f"use one of: {', '.join(tunable)}")
    if name in ADAPTIVE:
        raise ValueError(f"solver {name!r} is adaptive (chooses its own steps); tune a fixed-step solver: {', '.join(tunable)}")
    return name, fn


def steps_for_nfe(model: NoisePredictor, solver: str, nfe: int, options: Optional[dict] = None) -> int:
    """The most grid intervals K (>= 2) for which ``solver`` spends at most ``nfe`` network evaluations,
    counted on a zero network of the model's process (multistep solvers: K = nfe; heun: (nfe + 1) // 2)."""
    name, _ = _solver_for_tuning(solver)
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 1:
        raise ValueError(f"nfe must be an integer >= 1, got {nfe!r}")
    opts = {k: v for k, v in (options or {}).items() if k != "coefficients"}
    zero = NoisePredictor(lambda x, t: torch.zeros_like(x), model.sde, "epsilon", time_input=lambda t: t,
                          timestep_dtype=torch.float64)
    best, need = None, None
    for k in range(2, int(nfe) + 1):
        used = sample(zero, torch.zeros(1, 1, dtype=torch.float64), solver=name, ts=time_grid(model.sde, k, "uniform"),
                      **opts).nfe
        need = need or used
        if used <= nfe:
            best = k
        else:
            break
    if best is None:
        raise ValueError(f"solver {name!r} cannot make 2 steps (one interior time) within NFE {nfe}: "
                         f"it needs NFE >= {need or 2}")
    return best


# ---- the tuner --------------------------------------------------------------------------------------

def tune(model: NoisePredictor, solver: str, nfe: int, *, calibration: int = 256, validation: int = 64,
         holdout: int = 128, x_T: Optional[torch.Tensor] = None, reference: Optional[torch.Tensor] = None,
         x_val: Optional[torch.Tensor] = None, reference_val: Optional[torch.Tensor] = None,
         x_holdout: Optional[torch.Tensor] = None, reference_holdout: Optional[torch.Tensor] = None,
         coefficients: Optional[bool] = None, time_shifts: Optional[bool] = None, free_start: Optional[bool] = True, inits: Optional[Sequence[str]] = None,
         options: Optional[dict] = None, maxfev: int = 300, patience: int = 2, optimizer: str = "lm", cache=None,
         cond: Optional[dict] = None, guidance: Optional[float] = None, progress: bool = False) -> dict:
    """Learn a ``nfe``-evaluation configuration of ``solver`` for ``model`` (module docstring: method).

    ``calibration``/``validation``/``holdout``: sizes of the three x_T sets drawn from
    ``SEED_STREAMS`` (or pass ``x_T``/``x_val``/``x_holdout`` and, optionally, their references).
    ``coefficients``: learn per-step multistep weights (default: when the solver takes them, i.e.
    ``dpmpp_2m``). ``time_shifts``: learn the time at which the network is evaluated in each step
    (default: when the solver takes ``eval_times``, i.e. ``dpmpp_2m``). ``free_start``: also learn the first time (default True; None tries fixed and free
    starts and keeps the better on validation). ``inits``: starting grids, the best on calibration is used (default: logsnr,
    quadratic, uniform, karras and, with a free start, diffusers' multistep ``leading`` span).
    ``cache``: folder for the reference solves. ``cond``/``guidance``: conditioning passed to
    ``sample`` (guided tunes): per-sample tensors, cycled by index over each set of x_T (e.g.
    ``{"class_labels": torch.arange(10)}`` gives x_T number k the class k mod 10). Returns the JSON-ready dict that ``save_tuned`` writes.
    """
    from scipy.optimize import minimize

    name, fn = _solver_for_tuning(solver)
    if optimizer not in ("lm", "powell"):
        raise ValueError(f"optimizer must be 'lm' or 'powell', got {optimizer!r}")
    if isinstance(calibration, bool) or not isinstance(calibration, int) or calibration < MIN_CALIBRATION:
        raise ValueError(f"calibration must be an integer >= {MIN_CALIBRATION} x_T, got {calibration!r}")
    for nm, v in (("validation", validation), ("holdout", holdout)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{nm} must be an integer >= 0, got {v!r}")
    if x_T is not None and x_T.shape[0] < MIN_CALIBRATION:
        raise ValueError(f"calibration must be >= {MIN_CALIBRATION} x_T, got {x_T.shape[0]}")
    options = dict(options or {})
    if "coefficients" in options:
        raise ValueError("options must not contain 'coefficients' (they are what tune learns)")
    bespoke = name == "bespoke"
    takes = "coefficients" in __import__("inspect").signature(fn).parameters and not bespoke
    if bespoke and coefficients is False:
        raise ValueError("solver 'bespoke' is tuned with its coefficient matrix; for a grid-only tune pick its base solver")
    if coefficients and not takes and not bespoke:
        raise ValueError(f"solver {name!r} takes no per-step coefficients; coefficient solvers: {', '.join(sorted(COEFFICIENT_SOLVERS))}")
    learn_coef = takes if coefficients is None else bool(coefficients)
    takes_shifts = "eval_times" in __import__("inspect").signature(fn).parameters
    if options.get("eval_times") is not None:
        raise ValueError("options must not contain 'eval_times' (they are what tune learns)")
    if time_shifts is None:
        time_shifts = takes_shifts
    if time_shifts and not takes_shifts:
        raise ValueError(f"solver {name!r} takes no eval_times (time shifts); solvers that do: {', '.join(sorted(COEFFICIENT_SOLVERS))}")
    from .sampling import _check_options

    _check_options(name, fn, options)
    if inits is not None:
        inits = check_inits(inits)
    steps = steps_for_nfe(model, name, nfe, options)
    if not isinstance(maxfev, int) or maxfev < 1:
        raise ValueError(f"maxfev must be an integer >= 1, got {maxfev!r}")
    if guidance is not None and cond is None:
        raise ValueError("guidance needs cond (the conditioning to guide towards)")

    t_wall = time.perf_counter()
    if x_T is None:
        x_T = draw_noise(model, "tune-calibration", calibration)
    if x_val is None and validation:
        x_val = draw_noise(model, "tune-validation", validation, device=x_T.device)
    if x_holdout is None and holdout:
        x_holdout = draw_noise(model, "tune-holdout", holdout, device=x_T.device)

    def _kw(x):  # conditioning for a set of x_T: the given per-sample tensors, cycled by index
        if x is None or cond is None:
            return {}
        kw = {"cond": {k: v[torch.arange(x.shape[0], device=v.device) % v.shape[0]] for k, v in cond.items()}}
        if guidance is not None:
            kw["guidance"] = guidance
        return kw

    kw_cal, kw_val, kw_hold = _kw(x_T), _kw(x_val), _kw(x_holdout)
    t_ref = time.perf_counter()
    if reference is None:
        reference = reference_solve(model, x_T, cache=cache, sample_kwargs=kw_cal)
    if x_val is not None and reference_val is None:
        reference_val = reference_solve(model, x_val, cache=cache, sample_kwargs=kw_val)
    if x_holdout is not None and reference_holdout is None:
        reference_holdout = reference_solve(model, x_holdout, cache=cache, sample_kwargs=kw_hold)
    reference_s = time.perf_counter() - t_ref

    def run(x, grid, opts, kw):
        return sample(model, x, solver=name, ts=grid, **kw, **opts).samples

    def solve_error(x, ref, grid, opts, kw):
        """(RMSE, median per-sample RMSE) of one solve; (1e6, None) for a diverging configuration."""
        try:
            out = run(x, grid, opts, kw)
        except Exception as e:  # a diverging trial configuration scores as very bad
            if type(e).__name__ != "SolverError":
                raise
            return 1e6, None
        v = rmse(out, ref)
        return (v, median_sample_rmse(out, ref)) if math.isfinite(v) else (1e6, None)

    def err(x, ref, grid, opts, kw):
        return solve_error(x, ref, grid, opts, kw)[0]

    cal = lambda g, o: err(x_T, reference, g, o, kw_cal)  # noqa: E731
    val = (lambda g, o: err(x_val, reference_val, g, o, kw_val)) if x_val is not None else cal  # noqa: E731

    # starting grids: the standard spacings and, for a free start, diffusers' multistep leading span
    starts, start_opts = {}, {}  # start_opts: a start's own options (bespoke: a shipped configuration's matrix)
    for sp in (inits or ("logsnr", "quadratic", "uniform", "karras")):
        if sp == "leading-span":
            continue
        if sp.startswith("tuned") and bespoke:  # shipped linear configurations of this K ("tuned:S": solver S's), as matrices
            for key, (g, A) in shipped_matrices(model, steps, guidance).items():
                if sp == "tuned" or key == sp or key.startswith(sp + ":"):
                    starts[key], start_opts[key] = g, {**options, "coefficients": A}
            continue
        if sp == "tuned":  # the grid-only configuration shipped for this solver
            starts[sp] = shipped_grid(model, name, steps, options)
            continue
        try:
            starts[sp] = time_grid(model.sde, steps, sp)
        except ValueError:
            continue
    frees = (False, True) if free_start is None else (bool(free_start),)
    if True in frees and (inits is None or "leading-span" in inits):
        # timesteps N (K - j)/(K + 1) - 1 for j = 0 .. K-1, then t = 0 (diffusers' "leading", multistep form)
        tl = torch.tensor([(steps - j) / (steps + 1) for j in range(steps)] + [0.0], dtype=torch.float64)
        starts["leading-span"] = tl
    scored = {}
    for sp, g in starts.items():
        o = dict(start_opts.get(sp, options))
        if learn_coef:
            o["coefficients"] = [float(v) for v in standard_coefficients(model, g, options.get("lower_order_final", True))]
        scored[sp] = cal(g, o)
    evaluations = [len(scored)]
    runs = []
    for free in frees:
        cands = {sp: s for sp, s in scored.items() if free or (sp != "leading-span" and float(starts[sp][0]) == 1.0)}
        if not cands:
            continue
        init = min(cands, key=cands.get)
        init_grid = starts[init]
        prob = Problem(model, name, steps, 1.0, free, learn_coef, options, learn_shifts=time_shifts)
        p0 = prob.pack(init_grid)
        if free:  # a start at t = 1 sits where softplus is flat: begin a little inside so it can move
            p0[0] = max(p0[0], -3.0)
        std_opts = dict(start_opts.get(init, options))
        if learn_coef:
            std_opts["coefficients"] = [float(v) for v in standard_coefficients(model, init_grid, options.get("lower_order_final", True))]
        if bespoke:  # grid + the whole coefficient matrix (tuning_bespoke.py)
            from .tuning_bespoke import Calibration, fit_bespoke

            vset = Calibration(model, x_val, reference_val, kw_val) if x_val is not None else None
            fit = fit_bespoke(model, steps, options.get("base", "unipc"), options.get("base_options") or {},
                              lambda u, prob=prob: prob.unpack(u)[0], p0, free,
                              Calibration(model, x_T, reference, kw_cal), vset, maxfev, patience, init_grid,
                              A_start=std_opts.get("coefficients"),
                              on_log=(lambda it, c, v, free=free: log.info(
                                  "[bespoke K=%d free_start=%s] iteration %d: calibration %.5f validation %.5f",
                                  steps, free, it, c, v)) if progress else None)
            evaluations[0] += fit.pop("solves")
            runs.append(dict(free_start=free, init=init, **{k: fit[k] for k in ("grid", "options", "cal", "val",
                        "start_cal", "start_val", "iteration", "history", "parameters")}))
            continue

        def objective(p, prob=prob):
            evaluations[0] += 1
            try:
                g, o = prob.unpack(p)
            except ValueError:
                return 1e6
            return cal(g, o)

        start_cal, start_val = scored[init], val(init_grid, std_opts)
        # the standard start itself is the first candidate: the result is never worse on validation
        best = dict(p=None, grid=init_grid, opts=std_opts, val=start_val, cal=start_cal, iteration=0)
        history = [dict(iteration=0, calibration_rmse=start_cal, validation_rmse=start_val)]
        stale = [0]

        def callback(intermediate_result=None, prob=prob, best=best, history=history):
            p = np.asarray(intermediate_result.x if hasattr(intermediate_result, "x") else intermediate_result)
            g, o = prob.unpack(p)
            c, v = float(getattr(intermediate_result, "fun", cal(g, o))), val(g, o)
            it = len(history)
            history.append(dict(iteration=it, calibration_rmse=c, validation_rmse=v))
            if progress:
                log.info("[%s K=%d free_start=%s] iteration %d: calibration %.5f validation %.5f",
                         name, steps, free, it, c, v)
            if v < best["val"]:
                best.update(p=p.copy(), grid=g, opts=o, val=v, cal=c, iteration=it)
                stale[0] = 0
            else:
                stale[0] += 1
                if stale[0] >= patience:
                    raise StopIteration

        if optimizer == "lm":
            scale = 1.0 / math.sqrt(reference.numel())

            def resid(p, prob=prob):
                evaluations[0] += 1
                try:
                    g, o = prob.unpack(p)
                    out = run(x_T, g, o, kw_cal)
                except Exception as e:
                    if isinstance(e, ValueError) or type(e).__name__ == "SolverError":
                        return None
                    raise
                r = ((out.double() - reference.double()) * scale).flatten().cpu().numpy()
                return r if np.isfinite(r).all() else None

            def on_iterate(p, c):
                try:
                    callback(type("R", (), {"x": p, "fun": c})())
                except StopIteration:
                    return True
                return False

            x_end, _ = levenberg_marquardt(resid, p0, maxfev, on_iterate)
            res = type("R", (), {"x": x_end, "fun": best["cal"]})()
        else:
            res = minimize(objective, p0, method="Powell", callback=callback,
                           options=dict(maxfev=maxfev, xtol=1e-3, ftol=1e-5))
        if optimizer == "powell" and len(history) - 1 == best["iteration"]:
            # the budget ran out inside an iteration: score its last point on validation too
            try:
                g, o = prob.unpack(res.x)
                v = val(g, o)
                if v < best["val"]:
                    best.update(p=np.asarray(res.x).copy(), grid=g, opts=o, val=v, cal=float(res.fun),
                                iteration=len(history))
                    history.append(dict(iteration=len(history), calibration_rmse=float(res.fun), validation_rmse=v))
            except ValueError:
                pass
        g, o = best["grid"], best["opts"]
        runs.append(dict(free_start=free, init=init, grid=g, options=o, cal=best["cal"], val=best["val"],
                         start_cal=start_cal, start_val=start_val, iteration=best["iteration"], history=history,
                         parameters=len(p0)))
    pick = min(runs, key=lambda r: r["val"])
    hold = hold0 = med = med0 = None
    if x_holdout is not None:
        hold, med = solve_error(x_holdout, reference_holdout, pick["grid"], pick["options"], kw_hold)
        g_init = starts[pick["init"]]
        o_init = dict(start_opts.get(pick["init"], options))
        if learn_coef:
            o_init["coefficients"] = [float(v) for v in standard_coefficients(model, g_init, options.get("lower_order_final", True))]
        hold0, med0 = solve_error(x_holdout, reference_holdout, g_init, o_init, kw_hold)
    wall = time.perf_counter() - t_wall
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "solver": name, "nfe": int(nfe), "steps": steps,
        "ts": [float(t) for t in pick["grid"]],
        "options": {k: v for k, v in pick["options"].items()},
        "guidance": None if guidance is None else float(guidance),
        "model_sha256": model_fingerprint(model),
        "method": ("grid (log-SNR increments" + (", free start" if pick["free_start"] else "") + ")"
                   + (" + per-step dpmpp_2m weights" if learn_coef else "")
                   + (f" + the whole coefficient matrix (offsets from {options.get('base', 'unipc')})" if bespoke else "")
                   + (" + per-step network-time shifts" if time_shifts else "")
                   + ("; Levenberg-Marquardt" if optimizer == "lm" else "; Powell") + " on calibration RMSE, "
                   "early stopping on validation RMSE"),
        "parameters": pick["parameters"],
        "free_start": pick["free_start"],
        "calibration": {"n": int(x_T.shape[0]), "stream": "tune-calibration", "rmse": pick["cal"],
                        "start_rmse": pick["start_cal"]},
        "validation": {"n": int(x_val.shape[0]) if x_val is not None else 0, "stream": "tune-validation",
                       "rmse": pick["val"], "start_rmse": pick["start_val"], "best_iteration": pick["iteration"],
                       "history": pick["history"]},
        "holdout": {"n": int(x_holdout.shape[0]) if x_holdout is not None else 0, "stream": "tune-holdout",
                    "rmse": hold, "start_rmse": hold0, "median_sample_rmse": med, "start_median_sample_rmse": med0},
        "start": {"spacing": pick["init"], "calibration_rmse_by_spacing": scored},
        "reference": {"solver": "ode", "rtol": REFERENCE_TOL, "atol": REFERENCE_TOL},
        "evaluations": evaluations[0], "wall_s": round(wall, 1), "reference_s": round(reference_s, 1),
        "runs": [dict(free_start=r["free_start"], init=r["init"], calibration_rmse=r["cal"], validation_rmse=r["val"])
                 for r in runs],
    }


def tune_grid(model: NoisePredictor, solver: str, steps: int, *, x_T: Optional[torch.Tensor] = None, n: int = 64,
              reference: Optional[torch.Tensor] = None, maxfev: int = 400, free_start: bool = False,
              options: Optional[dict] = None, **kw) -> dict:
    """Grid-only tuning without validation/holdout sets (the earlier interface; ``steps`` = NFE for
    multistep solvers). Returns ``dict(ts=grid, rmse=..., rmse_init=..., evaluations=...)``."""
    if steps < 2:
        raise ValueError(f"tuning needs steps >= 2 (one interior time at least), got {steps}")
    if x_T is None:
        x_T = draw_noise(model, "tune-calibration", n)
    r = tune(model, solver, steps, calibration=max(int(x_T.shape[0]), MIN_CALIBRATION), validation=0, holdout=0,
             x_T=x_T, reference=reference, coefficients=False, free_start=free_start, maxfev=maxfev, options=options,
             **kw)
    return dict(ts=torch.tensor(r["ts"], dtype=torch.float64), rmse=r["calibration"]["rmse"],
                rmse_init=r["calibration"]["start_rmse"], evaluations=r["evaluations"], init=r["start"]["spacing"])
