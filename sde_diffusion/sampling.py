"""``sample()``: one front end for every solver in ``SOLVERS`` (or any solver function).

A solver is a plain function ``solver(model, x, ts, *, noise, callback, **options) -> x`` or
``-> (x, info)``. It owns its loop over the float64 grid ``ts`` (descending), calls the
``NoisePredictor`` (which counts NFE), draws randomness only from ``noise`` (see ``noise.py``) and
calls ``callback(dict(i=, t=, x=, x0=))`` after each step. ``sample`` builds the grid, draws x_T,
checks options, counts NFE and turns NaNs into ``SolverError``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch

from .grids import check_grid, grid_from_timesteps, time_grid
from .model import NoisePredictor, NonFiniteOutput
from .noise import make_noise
from .randomness import check_seed, draw_x_T

__all__ = ["sample", "SampleResult", "SolverError", "resolve_solver"]


class SolverError(RuntimeError):
    """A solve produced NaN/inf; names the solver, step, time and NFE so far."""


@dataclass
class SampleResult:
    samples: torch.Tensor  # the state at ts[-1], shaped like x_T
    nfe: int  # every network evaluation made (incl. rejected steps, correctors, denoising)
    ts: torch.Tensor  # the float64 grid used (for adaptive solvers: the requested span)
    info: dict = field(default_factory=dict)  # solver-specific (accepted/rejected steps, ...)


def resolve_solver(solver: Union[str, Callable]):
    """(name, function) for a solver name in ``SOLVERS`` or a user's callable."""
    from .solvers import SOLVERS

    if callable(solver):
        return getattr(solver, "__name__", "custom"), solver
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
    return solver, SOLVERS[solver]


def _check_options(name: str, fn: Callable, options: dict) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    taken = [k for k, p in params.items() if p.kind is p.KEYWORD_ONLY and k not in ("noise", "callback")]
    bad = sorted(set(options) - set(taken))
    if bad:
        raise TypeError(f"solver {name!r} does not take option(s) {', '.join(bad)}; it takes: {', '.join(taken) or 'none'}")


def _build_grid(model: NoisePredictor, name: str, steps, spacing, timesteps, ts, sigmas=None) -> torch.Tensor:
    from .solvers import ADAPTIVE, DEFAULT_SPACING

    given = [k for k, v in (("timesteps", timesteps), ("ts", ts), ("sigmas", sigmas), ("steps", steps)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give exactly one of timesteps, ts, sigmas or steps (+ spacing); got {', '.join(given)}")
    if spacing is not None and steps is None:
        raise ValueError("spacing needs steps; with timesteps or ts the grid is already explicit")
    adaptive = name in ADAPTIVE
    if adaptive and steps is not None:
        raise ValueError(f"solver {name!r} is adaptive and chooses its own steps; set rtol/atol instead of steps "
                         "(or pass ts=[t_start, t_end] for the span)")
    if timesteps is not None:
        return grid_from_timesteps(model.sde, timesteps)
    if ts is not None:
        return check_grid(ts)
    if sigmas is not None:  # k-diffusion's noise levels sigma = sigma_VP/alpha = exp(-lambda) (paths.ts_from_sigmas)
        from .paths import ts_from_sigmas

        return check_grid(ts_from_sigmas(model.sde, sigmas))
    if adaptive:
        return torch.tensor([1.0, 0.0], dtype=torch.float64)
    if steps is None:
        raise ValueError("give the grid: steps=K (with optional spacing), timesteps=[...] or ts=[...]")
    if spacing is None:
        spacing = DEFAULT_SPACING.get(name, "uniform")
        if model.sde.num_train_steps is None and spacing in ("leading", "trailing", "linspace"):
            spacing = "uniform"
        # log-SNR and Karras grids need a finite log-SNR at t = 1; a zero-terminal-SNR path (flow
        # matching: alpha(1) = 0) gets the grid uniform in t instead, which for flow matching is
        # diffusers' FlowMatchEuler grid with shift 1. An explicit spacing is never replaced.
        if getattr(model.sde, "zero_terminal_snr", False) and spacing in ("logsnr", "karras"):
            spacing = "uniform"
    return time_grid(model.sde, steps, spacing)


def sample(model: NoisePredictor, x_T: Optional[torch.Tensor] = None, *, solver="dpmpp_2m", steps=None,
           spacing=None, timesteps=None, ts=None, sigmas=None, shape=None, seed=None, generator=None,
           noise="gaussian", progress=False, callback=None, cond=None, guidance=None, guidance_rescale=0.0,
           guidance_interval=None, null_cond=None, tuned=None, **options) -> SampleResult:
    """Sample from ``model`` by solving the reverse process from ``x_T`` at ``ts[0]`` to ``ts[-1]``.

    Args:
        model: the ``NoisePredictor`` (any net seen through one VP-SDE); its ``nfe`` counter advances.
        x_T: the starting state, shape (B, *sample_shape), floating point, on the device and in the
            dtype the solve runs in. ``None``: drawn from N(0, I) with ``shape`` and ``seed``/``generator``.
        solver: a name in ``SOLVERS`` (``sde-diffusion solvers`` lists them with their facts) or a
            function ``solver(model, x, ts, *, noise, callback, **options)``.
        steps: number of grid intervals K; with ``spacing`` (default: the solver's declared
            ``default_spacing``; one of ``grids.SPACINGS`` or ``"tuned"``).
        spacing: how the K intervals are placed (``"uniform"`` in t, ``"logsnr"``, ``"karras"``,
            ``"quadratic"``, diffusers' ``"leading"``/``"trailing"``/``"linspace"``, ``"tuned"``).
        timesteps: discrete training indices, descending (a final step to t = 0 is appended).
        ts: float64 times in [0, 1], strictly descending.
        sigmas: descending noise levels sigma = sigma_VP / alpha (k-diffusion's), optional final 0.
            Give exactly one of ``steps``, ``timesteps``, ``ts``, ``sigmas`` (adaptive solvers: none, or
            ``ts=[t_start, t_end]``).
        shape: the shape of x_T to draw when ``x_T`` is None (default (1, *model.sample_shape)).
        seed: per-sample counter-based randomness (``randomness.counter_randn``): sample k uses seed + k
            for x_T and every noise draw, so it does not depend on its batch-mates or the batch size
            (bitwise); an integer in [0, 2**63).
        generator: instead of ``seed``: one ``torch.Generator`` or a list with one per sample.
        noise: ``"gaussian"`` (fresh draws) or ``"brownian"`` (one Brownian path per sample, shared by
            runs at different step counts), or a ``noise.NoiseSource``.
        progress: show a progress bar over the grid's steps.
        callback: called after every step with ``dict(i=, t=, x=, x0=)``.
        cond: per-sample conditioning for the net's keyword inputs, e.g. ``{"class_labels": y}``
            (first dimension = batch); refused for a model that declares no ``conditioning``.
        guidance: classifier-free guidance scale w, out = out_uncond + w (out_cond - out_uncond), in one
            doubled batch (``guidance.py``); None or 1: plain conditional sampling; finite, >= 0.
        guidance_rescale: phi in [0, 1] (Lin et al. 2024), as diffusers' ``guidance_rescale``.
        guidance_interval: (t_lo, t_hi) with 0 <= t_lo <= t_hi <= 1: guide only there (Kynkäänniemi et al. 2024).
        null_cond: the unconditional input per key, overriding the model's declared null condition.
        tuned: a tuned configuration (file, dict or list; ``tuning.py``) giving the grid and per-step
            solver options; ``spacing="tuned"`` reads the configurations shipped with the model.
        **options: passed to the solver (e.g. ``eta`` for ddim, ``order`` for unipc).

    Returns:
        ``SampleResult(samples, nfe, ts, info)``: the state at ``ts[-1]`` shaped like x_T (same device
        and dtype); ``nfe``, every network evaluation made (rejected steps, correctors and the final
        denoising included; a guided evaluation counts once); ``ts``, the float64 grid used (adaptive
        solvers: the requested span); ``info``, solver facts (accepted/rejected steps, ...) and
        ``network_rows``, the rows the network processed.

    Raises:
        ValueError: bad input, before any network call: an unknown solver or spacing, more than one
            grid, a grid that is not descending, x_T of another sample shape than the model's, a
            non-floating x_T, seed and generator together, a seed outside [0, 2**63), bad conditioning
            or guidance arguments, a tuned configuration for other weights / solver / step count.
        TypeError: an option the solver does not take (the message lists the ones it takes).
        SolverError: the solve produced NaN/inf (names the solver, step, time and NFE so far).
    """
    if not isinstance(model, NoisePredictor):
        raise ValueError(f"model must be a NoisePredictor (wrap your net with NoisePredictor(net, sde)), got {type(model).__name__}")
    name, fn = resolve_solver(solver)
    if spacing == "tuned" or tuned is not None:  # model-tuned grid + per-step options (tuning.py)
        from .tuned_files import resolve_tuned

        if ts is not None or timesteps is not None or sigmas is not None:
            raise ValueError("spacing='tuned' / tuned= set the grid; do not also pass ts or timesteps")
        ts, tuned_options = resolve_tuned(model, name, steps, tuned, guidance)
        options, steps, spacing = {**tuned_options, **options}, None, None
    _check_options(name, fn, options)
    grid = _build_grid(model, name, steps, spacing, timesteps, ts, sigmas)

    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    if x_T is None:
        if shape is None:
            shape = (1, *model.sample_shape) if model.sample_shape is not None else None
            if shape is None:
                raise ValueError("give x_T or shape")
        shape = tuple(shape)
        x_T = draw_x_T(shape, seed, generator)  # N(0, I): the VP prior (approximate if ts[0] < 1)
    elif shape is not None and tuple(shape) != tuple(x_T.shape):
        raise ValueError(f"shape {tuple(shape)} conflicts with x_T.shape {tuple(x_T.shape)}")
    elif seed is not None:
        check_seed(seed, x_T.shape[0] if isinstance(x_T, torch.Tensor) and x_T.ndim else 1)
    if not isinstance(x_T, torch.Tensor) or x_T.ndim < 1:
        raise ValueError("x_T must be a tensor with a batch dimension")
    if not torch.is_floating_point(x_T):
        raise ValueError(f"x_T must be floating point, got {x_T.dtype}")
    if x_T.dtype in (torch.float16, torch.bfloat16):
        raise ValueError(f"x_T is {x_T.dtype}: the solver state must be float32 or float64 (steps lose accuracy in half "
                         "precision); pass x_T.float(), and run the network in half precision with "
                         "NoisePredictor(..., net_dtype=torch.bfloat16)")
    model.check_input(x_T)
    if isinstance(generator, (list, tuple)) and len(generator) != x_T.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x_T.shape[0]}")
    if model.sample_shape is not None and tuple(x_T.shape[1:]) != tuple(model.sample_shape):
        raise ValueError(f"x_T has sample shape {tuple(x_T.shape[1:])} but the model was trained on {tuple(model.sample_shape)}")
    # entering the context validates cond/guidance against the model, before any network call
    with model.conditioned(cond, guidance=guidance, guidance_rescale=guidance_rescale,
                           guidance_interval=guidance_interval, null_cond=null_cond,
                           batch=x_T.shape[0], device=x_T.device):
        return _solve(model, name, fn, x_T, grid, seed, generator, noise, progress, callback, options)


def _solve(model, name, fn, x_T, grid, seed, generator, noise, progress, callback, options) -> SampleResult:
    src = make_noise(noise, x_T.shape, generator=generator, seeds=seed, dtype=x_T.dtype, device=x_T.device)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(grid) - 1, desc=name, unit="step", leave=False)
    state = {"i": -1, "t": float(grid[0])}

    def _callback(d):
        state.update(i=d.get("i", state["i"]), t=d.get("t", state["t"]))
        x = d.get("x")
        if x is not None and not torch.isfinite(x).all():
            raise SolverError(f"solver {name!r} produced NaN/inf at step {state['i']} (t={state['t']:.6g}), nfe so far {model.nfe - nfe0}")
        if bar is not None:
            bar.update(1)
        if callback is not None:
            callback(d)

    nfe0, rows0 = model.nfe, model.net_rows
    try:
        with torch.no_grad():
            out = fn(model, x_T, grid, noise=src, callback=_callback, **options)
    except NonFiniteOutput as e:
        raise SolverError(f"solver {name!r}: {e} after step {state['i']} (t={state['t']:.6g}), nfe so far {model.nfe - nfe0}") from e
    finally:
        if bar is not None:
            bar.close()
    x, info = out if isinstance(out, tuple) else (out, {})
    if not torch.isfinite(x).all():
        raise SolverError(f"solver {name!r} returned NaN/inf (nfe {model.nfe - nfe0})")
    info = dict(info)
    info.setdefault("network_rows", model.net_rows - rows0)
    return SampleResult(samples=x, nfe=model.nfe - nfe0, ts=grid, info=info)
