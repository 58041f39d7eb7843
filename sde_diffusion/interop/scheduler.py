"""``SDEDiffusionScheduler``: every fixed-grid solver of ``SOLVERS`` inside a diffusers pipeline.

    pipe.scheduler = SDEDiffusionScheduler.from_config(pipe.scheduler.config, solver="unipc", spacing="logsnr")
    images = pipe(prompt, num_inference_steps=10).images

One solver, two callers. ``sample()`` calls a solver function, which owns its loop and calls the
network; a pipeline owns the loop instead and calls ``scheduler.step(model_output, t, x)`` once per
network evaluation. Rather than a second, stateful copy of every update rule (diffusers' Heun
scheduler is the cautionary tale), the scheduler runs the *unchanged* solver function as a
coroutine: the solver runs in a worker thread on a ``NoisePredictor`` whose network hands
(x, timesteps) to the pipeline and waits; ``step()`` supplies the pipeline's model output, lets the
solver run up to its next network call and returns that call's x as ``prev_sample`` (for Heun the
intermediate Euler point, as diffusers' Heun scheduler does), or the solver's result after the last
evaluation. Exactly one of the two threads runs at any time (the hand-over is a pair of queues), so
random draws happen in the same order as in ``sample()`` and the result is the same to float rounding.
``sample()`` itself is untouched: its overhead is unchanged.

``set_timesteps`` finds the network-evaluation times by a dry run of the solver on a 1-element
float64 state with a constant stand-in net: for fixed-grid solvers the times do not depend on the
values (adaptive solvers are refused). ``timesteps`` lists them as the float indices n = t N - 1
the network receives from ``sample()`` (Lu et al. 2022, App. D: t_n = (n + 1)/N), one entry per
evaluation: NFE entries, e.g. 2K - 1 for Heun on a grid ending at t = 0.

The process (betas, prediction type) is read from the pipeline's scheduler config exactly as
``load_model`` reads it (``interop/diffusers_config.py``); sampling keys of the old scheduler
(``timestep_spacing``, ``steps_offset``, ``clip_sample``, ``solver_order``, ...) are not read. The
pipeline's guidance needs nothing here: the pipeline guides the model output it passes to ``step``.
"""

from __future__ import annotations

import inspect
import math
import queue
import threading
import weakref
from typing import List, Optional, Sequence, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput

from ..grids import SPACINGS, check_grid, grid_from_timesteps, time_grid
from ..model import NoisePredictor
from ..noise import NoiseSource
from ..randomness import randn
from ..sde import VPSDE, _bcast
from .diffusers import prediction_from_diffusers_config, sde_from_diffusers_config

__all__ = ["SDEDiffusionScheduler"]

_PROCESS_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                 "rescale_betas_zero_snr", "prediction_type")
_GRID_KEYS = ("spacing", "timesteps", "sigmas", "ts", "tuned")
_VARIANCE_TYPES = (None, "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
_N_TOL = 1e-3  # |timestep - expected| accepted in step(), in units of the training index n


# ---- the hand-over between the pipeline's thread and the solver's thread ---------------------------

class _Cancelled(BaseException):
    """Raised inside the solver thread to unwind it (a BaseException so no solver can swallow it)."""


_CANCEL = object()


class _Handoff:
    """Two queues: the solver posts ("eval", x, timesteps), ("done", x) or ("error", exc); the pipeline
    answers each "eval" with (model_output, generator, cuda_stream) or ``_CANCEL``."""

    def __init__(self, generator):
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.replies: queue.SimpleQueue = queue.SimpleQueue()
        self.generator = generator  # the generator of the step() call the solver is running for

    def net(self, x, timesteps):
        """The network as the solver's ``NoisePredictor`` sees it: ask the pipeline and wait."""
        self.requests.put(("eval", x, timesteps))
        reply = self.replies.get()
        if reply is _CANCEL:
            raise _Cancelled
        out, self.generator, stream = reply
        if stream is not None:  # CUDA streams are per thread: queue the solver's kernels on the pipeline's
            torch.cuda.set_stream(stream)
        return out

    def cancel(self):
        self.replies.put(_CANCEL)


class _PipelineNoise(NoiseSource):
    """N(0, I) drawn from the generator of the current ``step()`` call (one generator or one per
    sample), as ``GaussianNoise`` draws from ``sample()``'s generator."""

    def __init__(self, handoff: _Handoff, shape, dtype, device):
        self.handoff, self.shape, self.dtype, self.device = handoff, tuple(shape), dtype, device

    def interval(self, t0, t1):
        return self.fresh()

    def fresh(self):
        return randn(self.shape, self.handoff.generator, dtype=self.dtype, device=self.device)


def _solve_in_thread(handoff: _Handoff, fn, model, x, grid, noise, options, inference: bool):
    try:
        with torch.inference_mode() if inference else torch.no_grad():
            out = fn(model, x, grid, noise=noise, callback=None, **options)
        handoff.requests.put(("done", out[0] if isinstance(out, tuple) else out))
    except _Cancelled:
        pass
    except BaseException as e:  # noqa: BLE001 - handed to the pipeline's thread and raised there
        handoff.requests.put(("error", e))


class _Run:
    """One solve in progress: the worker thread, its hand-over and what it asked for last."""

    def __init__(self, owner, fn, model_args, x, grid, options, generator):
        self.handoff = _Handoff(generator)
        sde, prediction = model_args
        model = NoisePredictor(self.handoff.net, sde, prediction)
        noise = _PipelineNoise(self.handoff, x.shape, x.dtype, x.device)
        self.thread = threading.Thread(
            target=_solve_in_thread, name="sde-diffusion-solver", daemon=True,
            args=(self.handoff, fn, model, x, grid, noise, options, torch.is_inference_mode_enabled()))
        # the thread refers to the hand-over, never to the scheduler: a scheduler that is dropped
        # mid-solve (a pipeline that stops early) cancels its solver
        self.finalizer = weakref.finalize(owner, self.handoff.cancel)
        self.thread.start()
        self.pending = self.handoff.requests.get()

    def answer(self, model_output, generator, stream):
        self.handoff.replies.put((model_output, generator, stream))
        self.pending = self.handoff.requests.get()

    def stop(self):
        if self.thread.is_alive():
            self.handoff.cancel()
            self.thread.join()
        self.finalizer.detach()


# ---- dry run: the evaluation times of a fixed-grid solver --------------------------------------------

class _CountingNoise(NoiseSource):
    def __init__(self, evals: list):
        self.evals, self.before_first_eval = evals, 0

    def interval(self, t0, t1):
        return self.fresh()

    def fresh(self):
        if not self.evals:
            self.before_first_eval += 1
        return torch.zeros(1, 1, dtype=torch.float64)


def _evaluation_plan(fn, sde: VPSDE, prediction: str, grid: torch.Tensor, options: dict):
    """(times t of every network evaluation (float64), index of the first evaluation of each grid
    step, number of noise draws before the first evaluation) from one run on a constant stand-in net."""
    times: list = []

    def net(x, t):  # receives float64 t (time_input below): record it, predict zeros
        times.append(float(t[0]))
        return torch.zeros_like(x)

    model = NoisePredictor(net, sde, prediction, time_input=lambda t: t, timestep_dtype=torch.float64,
                           check_finite=False)
    ends: list = []
    noise = _CountingNoise(times)
    with torch.no_grad():
        fn(model, torch.zeros(1, 1, dtype=torch.float64), grid, noise=noise,
           callback=lambda d: ends.append(len(times)), **options)
    starts = [0] + ends[:-1]
    return torch.tensor(times, dtype=torch.float64), starts, noise.before_first_eval


# ---- the scheduler --------------------------------------------------------------------------------

class SDEDiffusionScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs ``sde_diffusion``'s solvers (see the module docstring).

    Process (read like ``load_model`` reads a diffusers scheduler config): ``num_train_timesteps``,
    ``beta_start``, ``beta_end``, ``beta_schedule`` ("linear", "scaled_linear", "squaredcos_cap_v2"),
    ``trained_betas``, ``rescale_betas_zero_snr``, ``prediction_type`` ("epsilon", "v_prediction",
    "sample"), and ``variance_type`` (only to keep the mean half of a "learned"/"learned_range" output).

    Sampler: ``solver`` (any non-adaptive name in ``SOLVERS``), ``solver_options`` (its keyword
    options, e.g. ``{"eta": 1.0}`` for ddim), and the grid: ``spacing`` (default: the solver's
    default, as in ``sample()``) with the pipeline's ``num_inference_steps``; or a fixed grid:
    ``timesteps`` (discrete indices n, descending; a final step to t = 0 is appended), ``sigmas``
    (Karras' sigma = sigma/alpha per step start, descending; a final 0 is appended unless present),
    ``ts`` (float64 times, descending) or ``tuned`` (a tuned configuration file, dict or list from
    ``sde-diffusion tune``; ``tuned_guidance`` picks the one tuned at that guidance scale).
    """

    order = 1
    # the VP schedulers whose configs ``from_config`` takes: their sampling keys are dropped quietly
    # (as between diffusers' own schedulers) and kept in the config for a round trip, but not read
    _compatibles = [e.name for e in KarrasDiffusionSchedulers]

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[List[float], Sequence[float]]] = None,
        rescale_betas_zero_snr: bool = False,
        prediction_type: str = "epsilon",
        variance_type: Optional[str] = None,
        solver: str = "dpmpp_2m",
        solver_options: Optional[dict] = None,
        spacing: Optional[str] = None,
        timesteps: Optional[List[float]] = None,
        sigmas: Optional[List[float]] = None,
        ts: Optional[List[float]] = None,
        tuned=None,
        tuned_guidance: Optional[float] = None,
    ):
        from ..solvers import ADAPTIVE, SOLVERS

        process = {"num_train_timesteps": num_train_timesteps, "beta_start": beta_start, "beta_end": beta_end,
                   "beta_schedule": beta_schedule, "rescale_betas_zero_snr": rescale_betas_zero_snr,
                   "prediction_type": prediction_type}
        if trained_betas is not None:
            process["trained_betas"] = [float(b) for b in trained_betas]
        self.sde = sde_from_diffusers_config(process)
        self.prediction = prediction_from_diffusers_config(process)
        NoisePredictor(_no_net, self.sde, self.prediction)  # refuses e.g. epsilon at zero terminal SNR
        if variance_type not in _VARIANCE_TYPES:
            raise ValueError(f"variance_type={variance_type!r} is not supported; valid: {', '.join(map(str, _VARIANCE_TYPES))}")
        fixed = sorted(n for n in SOLVERS if n not in ADAPTIVE)
        if solver in ADAPTIVE:
            raise ValueError(f"solver={solver!r} is adaptive: its evaluation times depend on the values, but a pipeline "
                             f"must know them before it starts; use a fixed-grid solver: {', '.join(fixed)}")
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(fixed)}")
        self._fn = SOLVERS[solver]
        self._options = dict(solver_options or {})
        taken = [k for k, p in inspect.signature(self._fn).parameters.items()
                 if p.kind is p.KEYWORD_ONLY and k not in ("noise", "callback")]
        bad = sorted(set(self._options) - set(taken))
        if bad:
            raise ValueError(f"solver_options: solver {solver!r} does not take {', '.join(bad)}; it takes: {', '.join(taken) or 'none'}")
        if spacing is not None and spacing not in SPACINGS + ("tuned",):
            raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS + ('tuned',))}")
        lists = [k for k, v in (("timesteps", timesteps), ("sigmas", sigmas), ("ts", ts), ("tuned", tuned)) if v is not None]
        if len(lists) > 1:
            raise ValueError(f"give at most one of timesteps, sigmas, ts or tuned; got {', '.join(lists)}")
        if spacing == "tuned" and tuned is None:
            raise ValueError("spacing='tuned' needs tuned=FILE (a configuration from `sde-diffusion tune`): the scheduler "
                             "cannot see the pipeline's weights to pick a shipped one")
        if spacing not in (None, "tuned") and lists:
            raise ValueError(f"spacing={spacing!r} conflicts with {lists[0]}=: that grid is already explicit")
        self._fixed_grid = None
        if timesteps is not None or sigmas is not None or ts is not None:
            self._fixed_grid = self._grid_from_lists(timesteps, sigmas, ts)
            self.register_to_config(**{lists[0]: [float(v) for v in (timesteps if timesteps is not None else
                                                                      sigmas if sigmas is not None else ts)]})
        # check the options on a small grid now, before any pipeline work (per-step lists such as
        # dpm_solver's orders need the pipeline's step count: they are checked by set_timesteps)
        per_step = any(isinstance(v, (list, tuple)) for v in self._options.values())
        if self._fixed_grid is not None or not per_step:
            probe = self._fixed_grid if self._fixed_grid is not None else time_grid(self.sde, 2, "uniform")
            self._plan(probe, self._options)

        self.init_noise_sigma = 1.0  # VP: x_T ~ N(0, I)
        self.timesteps: Optional[torch.Tensor] = None
        self.num_inference_steps: Optional[int] = None
        self.grid: Optional[torch.Tensor] = None  # the float64 time grid of the current solve
        self._eval_t = self._starts = None
        self._begin = 0
        self._done = 0  # evaluations answered so far (from the start of the table)
        self._run: Optional[_Run] = None
        self._failed: Optional[str] = None

    # ---- construction from a pipeline's config --------------------------------------------------
    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """``from_config(pipe.scheduler.config, solver=..., spacing=..., ...)``. Refuses a config the
        VP-SDE cannot represent (variance-exploding, EDM, flow matching) naming the key. Every process
        key is taken from the config as written, also those the original class left at its own
        defaults (diffusers would substitute this class's defaults, e.g. Heun's 0.00085/0.012 betas).
        Keyword arguments describe the new sampler: a grid keyword (spacing, timesteps, sigmas, ts,
        tuned) replaces every grid key of the config, and ``solver`` without ``solver_options``
        drops the config's solver options."""
        cfg = getattr(config, "config", config)
        if cfg is not None and not isinstance(cfg, str) and hasattr(cfg, "keys"):
            cfg = dict(cfg)
            sde_from_diffusers_config({k: v for k, v in cfg.items() if k not in _PROCESS_KEYS or v is not None})
            cfg.pop("_use_default_values", None)
            # keyword arguments describe the new sampler: a new grid replaces the config's grid, a new
            # solver the config's solver options (from_config(our_config, solver="heun") starts clean)
            if any(kwargs.get(k) is not None for k in _GRID_KEYS):
                for k in _GRID_KEYS:
                    cfg.pop(k, None)
            if "solver" in kwargs and "solver_options" not in kwargs:
                cfg.pop("solver_options", None)
            config = cfg
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def __getstate__(self):  # copy.deepcopy / pickle: the configuration, not a solve in progress
        state = dict(self.__dict__)
        state["_run"], state["_done"], state["_failed"] = None, 0, None
        return state

    def __len__(self):
        return self.config.num_train_timesteps

    # ---- grids and timesteps ----------------------------------------------------------------------
    def _grid_from_lists(self, timesteps, sigmas, ts) -> torch.Tensor:
        if timesteps is not None:
            return grid_from_timesteps(self.sde, torch.as_tensor(timesteps, dtype=torch.float64).detach().cpu())
        if ts is not None:
            return check_grid(ts)
        s = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
        if s.ndim != 1 or s.numel() < 1 or torch.isnan(s).any() or (s < 0).any():
            raise ValueError(f"sigmas must be a non-empty 1-D list of numbers >= 0 (descending), got {s.tolist()[:6]}")
        if s[-1] != 0:
            s = torch.cat([s, torch.zeros(1, dtype=torch.float64)])
        pos = s[:-1]
        if (pos == 0).any():
            raise ValueError("sigmas: only the last entry may be 0")
        t = self.sde.t_from_log_snr(-torch.log(pos))  # sigma = exp(-lambda); sigma = inf -> t = 1
        return check_grid(torch.cat([t, torch.zeros(1, dtype=torch.float64)]))

    def _plan(self, grid, options):
        times, starts, early = _evaluation_plan(self._fn, self.sde, self.prediction, grid, options)
        if early:
            raise ValueError(f"solver {self.config.solver!r} with options {options} draws noise before its first network "
                             "evaluation (e.g. churn at the first step), but a pipeline evaluates the network at its own "
                             "x_T first; start the churn later (S_tmax below the first sigma)")
        return times, starts

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Union[str, torch.device, None] = None,
                      timesteps: Optional[List[float]] = None, sigmas: Optional[List[float]] = None):
        """Build the grid and the table of network-evaluation timesteps; cancels a solve in progress.

        ``timesteps``/``sigmas`` (lists as in the constructor) override the configured grid for this
        solve; otherwise ``num_inference_steps`` = K steps with the configured spacing (or tuned
        configuration), or, for a scheduler built with a fixed grid, None or that grid's K.
        """
        self._stop()
        if timesteps is not None and sigmas is not None:
            raise ValueError("give timesteps or sigmas, not both")
        options = dict(self._options)
        if timesteps is not None or sigmas is not None:
            grid = self._grid_from_lists(timesteps, sigmas, None)
        elif self._fixed_grid is not None:
            grid = self._fixed_grid
        else:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
                raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
            if self.config.tuned is not None:
                from ..tuned_files import resolve_tuned

                grid, tuned_options = resolve_tuned(NoisePredictor(_no_net, self.sde, self.prediction), self.config.solver,
                                                    num_inference_steps, self.config.tuned, self.config.tuned_guidance)
                options = {**tuned_options, **options}
            else:
                from ..solvers import DEFAULT_SPACING

                grid = time_grid(self.sde, num_inference_steps, self.config.spacing or DEFAULT_SPACING[self.config.solver])
        K = len(grid) - 1
        if num_inference_steps is not None and num_inference_steps != K:
            where = "the timesteps/sigmas given" if (timesteps is not None or sigmas is not None) else "this scheduler's fixed grid"
            raise ValueError(f"num_inference_steps={num_inference_steps} but {where} has {K} steps; pass num_inference_steps={K}")
        times, starts = self._plan(grid, options)
        self.grid, self._run_options = grid, options
        self._eval_t, self._starts = times, starts
        self.num_inference_steps = K
        self.order = max(1, math.ceil(len(times) / K))
        n = self.sde.timestep_of(times)  # what the net receives from sample(): n = t N - 1, cast to float32
        self.timesteps = n.to(dtype=torch.float32, device=device)
        self._n = n.to(torch.float32).tolist()  # the same values as Python floats, for cheap checks in step()
        self._begin, self._done, self._failed = 0, 0, None

    @property
    def step_index(self) -> Optional[int]:
        """Index into ``timesteps`` of the next evaluation to be answered by ``step()``."""
        return None if self.timesteps is None else self._begin + self._done

    @property
    def begin_index(self) -> int:
        return self._begin

    def set_begin_index(self, begin_index: int = 0):
        """Start the solve at ``timesteps[begin_index]`` (img2img with strength < 1): it must be the first
        evaluation of a grid step; the solver then runs on the grid from that step on."""
        if self.timesteps is None:
            if begin_index == 0:  # nothing to do: every solve starts at its first evaluation
                return
            raise ValueError("call set_timesteps() before set_begin_index()")
        if begin_index not in self._starts:
            raise ValueError(f"begin_index {begin_index} is not the first evaluation of a grid step of solver "
                             f"{self.config.solver!r}; valid: {', '.join(map(str, self._starts))}")
        self._stop()
        k = self._starts.index(begin_index)
        if k > 0:
            times, _ = self._plan(self.grid[k:], self._sub_options(k))
            if times.shape != self._eval_t[begin_index:].shape or not torch.equal(times, self._eval_t[begin_index:]):
                raise ValueError(f"solver {self.config.solver!r} with options {self._run_options} evaluates at other times "
                                 f"when started at grid step {k}; it cannot start part-way (img2img)")
        self._begin, self._done, self._failed = begin_index, 0, None

    def _sub_options(self, k):
        """Options for the solve on the grid from step k: per-step lists lose their first k entries
        (dpm_solver's ``orders``, dpmpp_2m's ``eval_times`` (one per step) and ``coefficients`` (one
        per step after the first))."""
        opts = dict(self._run_options)
        for key in ("orders", "eval_times", "coefficients"):
            if opts.get(key) is not None:
                opts[key] = list(opts[key])[k:]
        return opts

    # ---- the pipeline's calls ---------------------------------------------------------------------
    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The network sees the VP state itself."""
        return sample

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True, **kwargs):
        """Answer the network evaluation at ``timestep`` with ``model_output`` and run the solver up to
        its next evaluation: ``prev_sample`` is the x at which the network must be evaluated next (at
        ``timesteps[step_index]``), or the solver's result after the last evaluation.

        ``generator``: what stochastic solvers draw from (one generator or one per sample). Accepted
        for DDIMPipeline: ``eta`` (must equal the configured eta for solver "ddim", 0 otherwise) and
        ``use_clipped_model_output`` (None/False: nothing is clipped).
        """
        self._check_step_kwargs(kwargs)
        if self.timesteps is None:
            raise ValueError("call set_timesteps() before step()")
        if self._failed is not None:
            raise RuntimeError(f"this solve failed earlier ({self._failed}); call set_timesteps() to start again")
        i = self._begin + self._done
        if i >= len(self.timesteps):
            raise ValueError(f"all {len(self.timesteps) - self._begin} network evaluations of this solve are done; "
                             "call set_timesteps() to start another")
        if not isinstance(sample, torch.Tensor) or not isinstance(model_output, torch.Tensor):
            raise ValueError("model_output and sample must be tensors")
        expected = self._n[i]
        if isinstance(timestep, (int, float)) or (isinstance(timestep, torch.Tensor) and timestep.numel() == 1):
            given = float(timestep)
            wrong = abs(given - expected) > _N_TOL
        else:
            given = torch.as_tensor(timestep).detach().flatten()
            wrong = given.numel() < 1 or bool((given.float().cpu() - expected).abs().max() > _N_TOL)
        if wrong:
            raise ValueError(f"step() got timestep {given if isinstance(given, float) else given.tolist()[:4]}, expected "
                             f"{expected:.6g} = timesteps[{i}]: call step() once per entry of scheduler.timesteps, in order")
        model_output = self._mean_output(model_output, sample)
        if isinstance(generator, (list, tuple)) and len(generator) != sample.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {sample.shape[0]}")
        if self._run is None:
            self._run = _Run(self, self._fn, (self.sde, self.prediction), sample, self.grid[self._starts.index(self._begin):],
                             self._sub_options(self._starts.index(self._begin)), generator)
            kind, x = self._run.pending[:2]
            if kind == "eval" and x is not sample:
                self._fail("the solver changed x before its first evaluation")
                raise RuntimeError(f"solver {self.config.solver!r} evaluates the network at another x than the pipeline's "
                                   "first one; it cannot run in a pipeline")
        pending = self._run.pending
        if pending[0] == "error":
            self._fail(repr(pending[1]))
            raise pending[1]
        x_expected = pending[1]
        if sample is not x_expected and (sample.shape != x_expected.shape or
                                         not torch.equal(sample.to(x_expected.dtype), x_expected)):
            raise ValueError(f"step() got a sample that differs from the prev_sample returned by the previous step "
                             f"(timesteps[{i - 1}]): this scheduler keeps the solver's own state (e.g. a multistep "
                             "history), so latents edited between steps (inpainting, callbacks) are not supported")
        stream = torch.cuda.current_stream(sample.device) if sample.is_cuda else None
        self._run.answer(model_output, generator, stream)
        self._done += 1
        kind = self._run.pending[0]
        if kind == "error":
            err = self._run.pending[1]
            self._fail(repr(err))
            raise err
        if kind == "eval":
            n_req = float(self._run.pending[2][0])
            if abs(n_req - self._n[i + 1]) > _N_TOL:  # cannot happen for a fixed-grid solver
                self._fail("evaluation times differ from the dry run")
                raise RuntimeError(f"solver {self.config.solver!r} asked for timestep {n_req:.6g}, but the dry run "
                                   f"planned {self._n[i + 1]:.6g}; its times depend on the values")
        elif self._begin + self._done != len(self.timesteps):
            self._fail("the solver finished early")
            raise RuntimeError(f"solver {self.config.solver!r} finished after {self._done} evaluations, the dry run "
                               f"planned {len(self.timesteps) - self._begin}")
        prev = self._run.pending[1]
        if kind == "done":
            self._stop()
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def _check_step_kwargs(self, kwargs):
        unknown = sorted(set(kwargs) - {"eta", "use_clipped_model_output"})
        if unknown:
            raise ValueError(f"step() got unexpected argument(s) {', '.join(unknown)}; it takes model_output, timestep, "
                             "sample, generator, return_dict (and eta, use_clipped_model_output from DDIMPipeline)")
        eta = kwargs.get("eta")
        if eta is not None:
            want = self._options.get("eta", 0.0) if self.config.solver == "ddim" else 0.0
            if float(eta) != float(want):
                raise ValueError(f"eta={eta} but this scheduler runs solver {self.config.solver!r} with eta={want}: build it with "
                                 f"from_config(..., solver='ddim', solver_options={{'eta': {eta}}}) or pass eta={want}")
        if kwargs.get("use_clipped_model_output"):
            raise ValueError("use_clipped_model_output=True: this scheduler never clips x0, so there is no clipped output")

    def _mean_output(self, model_output, sample):
        if model_output.shape == sample.shape:
            return model_output
        c = sample.shape[1] if sample.ndim > 1 else None
        if (c is not None and model_output.ndim == sample.ndim and model_output.shape[1] == 2 * c
                and self.config.variance_type in ("learned", "learned_range")):
            return model_output[:, :c]  # [mean, variance] outputs: the mean half
        raise ValueError(f"model_output shape {tuple(model_output.shape)} does not match sample shape {tuple(sample.shape)} "
                         f"(variance_type={self.config.variance_type!r})")

    def _fail(self, why: str):
        self._failed = why
        self._stop()

    def _stop(self):
        run, self._run = getattr(self, "_run", None), None
        if run is not None:
            run.stop()

    # ---- forward process (img2img, training) ------------------------------------------------------
    def _times_of(self, timesteps, like: torch.Tensor) -> torch.Tensor:
        """Times t (float64) of timesteps: an entry of ``self.timesteps`` maps to its exact evaluation
        time, any other index n to t = (n + 1)/N."""
        n = torch.as_tensor(timesteps).detach().to("cpu", torch.float64).flatten()
        if n.numel() == 1:
            n = n.expand(like.shape[0])
        if n.shape != (like.shape[0],):
            raise ValueError(f"timesteps must be a scalar or have one entry per sample ({like.shape[0]}), got {n.numel()}")
        t = self.sde.t_of_timestep(n)
        if self.timesteps is not None:
            table = self.timesteps.detach().to("cpu", torch.float64)
            d = (n[:, None] - table[None, :]).abs()
            hit = d.min(dim=1)
            t = torch.where(hit.values <= _N_TOL, self._eval_t[hit.indices], t)
        return t

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """x_t = alpha(t) x0 + sigma(t) noise (Ho et al. 2020, eq. 4) at the times of ``timesteps``."""
        if noise.shape != original_samples.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != original_samples shape {tuple(original_samples.shape)}")
        t = self._times_of(timesteps, original_samples)
        return _bcast(self.sde.alpha(t), original_samples) * original_samples + _bcast(self.sde.sigma(t), original_samples) * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """v = alpha(t) noise - sigma(t) x0 (Salimans & Ho 2022), the v-prediction training target."""
        t = self._times_of(timesteps, sample)
        return _bcast(self.sde.alpha(t), sample) * noise - _bcast(self.sde.sigma(t), sample) * sample


def _no_net(x, timesteps):
    raise RuntimeError("internal: this NoisePredictor only describes the process")
