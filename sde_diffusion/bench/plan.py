"""The plan of a benchmark run: which (library, solver, spacing, NFE, guidance) configurations it
holds. Pure: no file I/O, no timing. A ``Config`` is frozen -- running it never changes it; what
was measured (steps taken by an adaptive solver, NFE) goes into the result record."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..model import NoisePredictor

__all__ = ["Config", "plan", "steps_for_nfe", "check_names", "QUICK_NFES", "FULL_NFES", "QUICK_PEERS",
           "GRID_NFES", "OUR_SPACINGS", "ADAPTIVE_TOLS", "REF_TOL", "VARIANTS", "MAX_NFE"]

QUICK_NFES = (5, 10)  # quick mode stays under 2 minutes on 2 CPU cores (docs/benchmarks.md)
FULL_NFES = (5, 10, 20, 50)
MAX_NFE = 1000
QUICK_PEERS = ("ddim", "euler", "dpmpp_2m", "unipc")  # quick mode; full mode runs every peer in peers.PEERS
GRID_NFES = (5, 10, 20)  # sample grids (and the samples figure) are kept at these NFEs
OUR_SPACINGS = ("uniform", "quadratic", "logsnr", "karras", "trailing")
ADAPTIVE_TOLS = (1e-2, 1e-3, 1e-4)
REF_TOL = 1e-6

# solver option variants benchmarked in addition to the defaults (full mode); quick mode uses the first
VARIANTS = {
    "dpm_solver": [{"order": 3}, {"order": 2}],
    "unipc": [{"order": 2}, {"order": 3}, {"order": 2, "variant": "bh1"}],
}


@dataclass(frozen=True)
class Config:
    """One configuration. ``steps`` is decided by the plan (None for adaptive solvers);
    ``guidance`` is None for an unconditional run, else the classifier-free guidance scale."""
    library: str  # "sde_diffusion", "diffusers" or "data"
    solver: str  # registry / peer name
    spacing: str
    target_nfe: int
    steps: Optional[int] = None
    options: dict = field(default_factory=dict)
    role: str = "solver"  # "solver", "reference" or "floor"
    guidance: Optional[float] = None

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items() if k not in ("orders", "ts", "rtol", "atol"))
        return f"{self.solver}[{opts}]" if opts else self.solver

    @property
    def key(self) -> str:
        base = f"{self.library}|{self.label}|{self.spacing}|{self.target_nfe}"
        return base if self.guidance is None else f"{base}|w={self.guidance:g}"


def _all_peers() -> tuple:
    from ..peers import PEERS

    return tuple(PEERS)


def check_names(solvers: Optional[Sequence[str]], spacings: Optional[Sequence[str]], peers) -> None:
    """One-line ValueError for an unknown solver, spacing or peer name, listing the valid ones."""
    from ..grids import SPACINGS
    from ..solvers import SOLVERS

    for name in solvers or ():
        if name not in SOLVERS:
            raise ValueError(f"unknown solver {name!r}; valid: {', '.join(SOLVERS)}")
    valid_sp = tuple(SPACINGS) + ("tuned",)
    for sp in spacings or ():
        if sp not in valid_sp:
            raise ValueError(f"unknown spacing {sp!r}; valid: {', '.join(valid_sp)}")
    if peers not in (True, False, None):
        names = [peers] if isinstance(peers, str) else list(peers)
        valid = _all_peers()
        for name in names:
            if name not in valid:
                raise ValueError(f"unknown diffusers peer {name!r}; valid: {', '.join(valid)} (or all / none)")


def _zero_predictor(model: NoisePredictor) -> NoisePredictor:
    return NoisePredictor(lambda x, t, **_: torch.zeros_like(x), model.sde, "epsilon",
                          sample_shape=model.sample_shape, timestep_dtype=torch.float64)


def _probe_nfe(zero: NoisePredictor, solver: str, steps: int, spacing: str, options: dict) -> int:
    from ..sampling import sample

    x = torch.zeros((1, *zero.sample_shape), dtype=torch.float64)
    return sample(zero, x, solver=solver, steps=steps, spacing=spacing, seed=0, **options).nfe


def steps_for_nfe(model: NoisePredictor, solver: str, nfe: int, spacing: str, options: dict) -> Optional[tuple]:
    """(steps, options) spending at most ``nfe`` evaluations with ``solver`` -- the most steps that
    fit, found from the measured NFE of steps = 2, 3 (NFE is affine in steps) on a zero network.
    ``dpm_solver`` gets DPM-Solver-fast's per-step orders for exactly ``nfe`` (Lu et al. 2022, Sec. 3.4).
    None when even one step costs more than ``nfe``."""
    if solver == "dpm_solver":
        from ..solvers.dpm import dpm_solver_fast_orders

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


def _has_tuned(pred: NoisePredictor, solver: str, steps: int, guidance) -> bool:
    """Whether the model ships a tuned configuration (grid + options, ``tuning.resolve_tuned``)."""
    try:
        from ..tuned_files import resolve_tuned

        resolve_tuned(pred, solver, steps, None, guidance)
        return True
    except (ImportError, FileNotFoundError, ValueError, KeyError):
        return False


def _peer_steps(name: str, nfe: int) -> int:
    """The most inference steps of peer ``name`` within ``nfe`` (inverting ``peers.peer_nfe``)."""
    from ..peers import peer_nfe

    k = nfe
    while k > 1 and peer_nfe(name, k) > nfe:
        k -= 1
    return k


def plan(model, solvers: Sequence[str], nfes: Sequence[int], quick: bool, peers=True,
         spacings: Optional[Sequence[str]] = None, guidance: Sequence[Optional[float]] = (None,),
         skipped: Optional[list] = None, ref_tol: float = REF_TOL) -> list:
    """All configurations of a run (a list of frozen ``Config``), references and floor first.
    ``model`` is a ``BenchModel``. ``skipped`` (a list) receives (solver, spacing, nfe, reason)
    for requested combinations that cannot be run."""
    from ..solvers import ADAPTIVE, DEFAULT_SPACING, SOLVERS, STOCHASTIC

    check_names(solvers, spacings, peers)
    skipped = skipped if skipped is not None else []
    pred = model.predictor
    discrete = pred.sde.num_train_steps is not None
    cfgs = [Config("data", "real", "-", 0, role="floor")] if getattr(model, "floor", None) is not None else []
    for w in guidance:
        cfgs.append(Config("sde_diffusion", "pf_reference", f"dopri5 tol={ref_tol:g}", 0,
                           options={"rtol": ref_tol, "atol": ref_tol}, role="reference", guidance=w))
        if discrete and w is None and not quick:  # the 1000-step chain costs more than a quick run
            N = pred.sde.num_train_steps
            cfgs.append(Config("sde_diffusion", "ancestral", "uniform", N, steps=N, role="reference"))
    ours = []
    for name in solvers:
        if name in ADAPTIVE:
            for tol in ADAPTIVE_TOLS[:1] if quick else ADAPTIVE_TOLS:
                ours.append(Config("sde_diffusion", name, f"adaptive rtol={tol:g}", 0, options={"rtol": tol, "atol": tol}))
            continue
        params = inspect.signature(SOLVERS[name]).parameters
        variants = [v for v in VARIANTS.get(name, [{}]) if all(k in params for k in v)] or [{}]
        if quick:
            variants = variants[:1]
        sp_list = [s for s in spacings if s != "tuned"] if spacings else list(OUR_SPACINGS)
        if (quick or name in STOCHASTIC) and not spacings:  # stochastic solvers: default spacing only
            sp_list = [DEFAULT_SPACING.get(name, "uniform")]
        if not discrete:
            sp_list = [s for s in sp_list if s not in ("trailing", "leading", "linspace")]
        if name == "bespoke":  # untuned, it is its base solver (rows of its own): only its tuned rows are new
            sp_list = []
        for opts in variants:
            for sp in sp_list:
                for nfe in nfes:
                    got = steps_for_nfe(pred, name, nfe, sp, opts)
                    if got is None:
                        skipped.append((name, sp, nfe, "one step costs more than this NFE"))
                    else:
                        ours.append(Config("sde_diffusion", name, sp, nfe, steps=got[0], options=got[1]))
    tuned = []  # model-tuned configurations shipped with the model (sample(spacing="tuned"))
    for name in solvers if not spacings or "tuned" in spacings else ():
        if name in ADAPTIVE:
            continue
        for nfe in nfes:
            got = steps_for_nfe(pred, name, nfe, "logsnr", {})
            for w in guidance:
                if got is not None and _has_tuned(pred, name, got[0], w):
                    tuned.append(Config("sde_diffusion", name, "tuned", nfe, steps=got[0], guidance=w))
    theirs = []
    if peers and discrete:
        from ..peers import peer_nfe, peer_spacings

        if peers is True:
            names = list(QUICK_PEERS) if quick else list(_all_peers())
        else:
            names = [peers] if isinstance(peers, str) else list(peers)
        for name in names:
            for sp in peer_spacings(name)[:1] if quick else peer_spacings(name):
                for nfe in nfes:
                    k = _peer_steps(name, nfe)
                    if peer_nfe(name, k) > nfe or k > pred.sde.num_train_steps:
                        skipped.append((f"diffusers {name}", sp, nfe, "does not fit this NFE / the training chain"))
                    else:
                        theirs.append(Config("diffusers", name, sp, nfe, steps=k))
    for w in guidance:
        from dataclasses import replace

        cfgs += [replace(c, guidance=w) for c in ours + theirs] + [c for c in tuned if c.guidance == w]
    seen, out = set(), []
    for c in cfgs:
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out
