"""Solver facts, declared once next to each solver function (the way diffrax's solvers declare ``order()``).

A solver file writes::

    @solver(order=2, nfe="K", default_spacing="logsnr", stochastic=False, adaptive=False,
            peers=("diffusers.DPMSolverMultistepScheduler",))
    def dpmpp_2m(model, x, ts, *, noise, callback=None, lower_order_final=True): ...

and ``solvers/__init__.py`` lists the function once in ``_ALL``. The registry (``SOLVERS``,
``DEFAULT_SPACING``, ``ADAPTIVE``, ``STOCHASTIC``), the table of docs/solvers.md
(``render_table``) and the registry-wide tests (tests/test_solvers_contract.py,
tests/test_solver_orders.py) are all read from these specs; a solver that lacks a fact does not
import (missing keyword) or fails ``check_spec``.

Facts (all keyword arguments are required except ``order_options``, ``variants`` and ``name``):

``order``           convergence order of the deterministic probability-flow solve with ``order_options``
                    (slope of log error against log K on the exact Gaussian flow); ``None`` for adaptive
                    solvers (accuracy set by rtol/atol) and for SDE solvers without a deterministic limit.
``nfe``             a formula for the network evaluations, a Python expression in ``K`` (grid intervals),
                    ``z`` (1 if the grid ends at t = 0, else 0) and, for adaptive solvers, the keys of the
                    solver's ``info`` (e.g. ``"2 + 6*(accepted + rejected) + z"``).
``default_spacing`` the spacing ``sample(steps=K)`` uses; ``None`` for adaptive solvers.
``stochastic``      draws noise with its default options.
``adaptive``        chooses its own steps (takes rtol/atol, refuses ``steps=``).
``peers``           peer implementations it is tested equal to (e.g. ``"diffusers.DDIMScheduler"``).
``order_options``   options under which ``order`` holds (e.g. ``{"eta": 0.0}`` for an SDE solver's ODE limit).
``variants``        further (label, options, order) order facts, e.g. ``("order=2", {"order": 2}, 2)``.
``weak_order``      (optional, stochastic solvers) the order of the error in the output's mean and variance
                    with the default options on the default spacing, computed exactly on 1-D Gaussian data
                    (tests/test_solver_orders.py::test_weak_order); None: not declared.
``options``         (derived, not declared) the keyword-only options of the function's signature.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Tuple

from ..validation import positive_int

__all__ = ["SolverSpec", "solver", "check_spec", "render_table", "SPACINGS", "REGISTRY"]

# name -> SolverSpec of every registered solver; filled by solvers/__init__.py (read by ``pc`` for its
# predictor, so that no family file imports the registry module above it)
REGISTRY: dict = {}

SPACINGS = ("uniform", "logsnr", "karras", "quadratic", "leading", "trailing", "linspace")


@dataclass(frozen=True)
class SolverSpec:
    name: str
    fn: Callable
    order: Optional[int]
    nfe: str
    default_spacing: Optional[str]
    stochastic: bool
    adaptive: bool
    peers: Tuple[str, ...]
    order_options: Mapping = field(default_factory=dict)
    variants: Tuple[Tuple[str, Mapping, int], ...] = ()
    weak_order: Optional[int] = None

    @property
    def options(self) -> Tuple[str, ...]:
        """The keyword-only options of the solver function (``noise``/``callback`` excluded)."""
        params = inspect.signature(self.fn).parameters
        return tuple(k for k, p in params.items() if p.kind is p.KEYWORD_ONLY and k not in ("noise", "callback"))

    def expected_nfe(self, K: int, to_zero: bool, info: Optional[Mapping] = None) -> int:
        """Evaluate the declared NFE formula for K grid intervals (and the solver's ``info``)."""
        env = {"K": int(K), "z": int(bool(to_zero))}
        env.update({k: v for k, v in (info or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        return int(eval(compile(self.nfe, f"<nfe of {self.name}>", "eval"), {"__builtins__": {}}, env))  # noqa: S307


def solver(*, order, nfe, default_spacing, stochastic, adaptive, peers, order_options=None, variants=(), name=None,
           weak_order=None):
    """Decorator attaching a ``SolverSpec`` as ``fn.spec`` (see the module docstring); returns ``fn``."""

    def wrap(fn):
        fn.spec = SolverSpec(name=name or fn.__name__, fn=fn, order=order, nfe=nfe, default_spacing=default_spacing,
                             stochastic=stochastic, adaptive=adaptive, peers=tuple(peers),
                             order_options=dict(order_options or {}), variants=tuple(variants),
                             weak_order=weak_order)
        check_spec(fn.spec)
        return fn

    return wrap


def check_spec(spec: SolverSpec) -> None:
    """Raise ValueError naming the first missing or inconsistent fact of ``spec``."""
    where = f"solver {spec.name!r}"
    if not isinstance(spec.stochastic, bool) or not isinstance(spec.adaptive, bool):
        raise ValueError(f"{where}: stochastic and adaptive must be True or False")
    if spec.order is not None:
        positive_int(f"{where}: order", spec.order)
    if spec.order is None and not (spec.adaptive or spec.stochastic):
        raise ValueError(f"{where}: a deterministic fixed-step solver must declare its order")
    if not isinstance(spec.nfe, str) or not spec.nfe.strip():
        raise ValueError(f"{where}: nfe must be a formula string in K and z, got {spec.nfe!r}")
    if spec.weak_order is not None:
        if not spec.stochastic:
            raise ValueError(f"{where}: weak_order is a fact of stochastic solvers only")
        positive_int(f"{where}: weak_order", spec.weak_order)
    if not spec.adaptive:
        try:
            spec.expected_nfe(4, True), spec.expected_nfe(4, False)
        except Exception as e:  # noqa: BLE001 - any failure means the formula is not usable
            raise ValueError(f"{where}: nfe formula {spec.nfe!r} does not evaluate for K, z: {e}") from None
    if spec.adaptive != (spec.default_spacing is None):
        raise ValueError(f"{where}: default_spacing must be None exactly for adaptive solvers, got {spec.default_spacing!r}")
    if spec.default_spacing is not None and spec.default_spacing not in SPACINGS:
        raise ValueError(f"{where}: default_spacing must be one of {', '.join(SPACINGS)}, got {spec.default_spacing!r}")
    if not all(isinstance(p, str) and p for p in spec.peers):
        raise ValueError(f"{where}: peers must be non-empty strings, got {spec.peers!r}")
    opts = set(spec.options)
    for label, options, order in [("default", spec.order_options, spec.order), *spec.variants]:
        bad = set(options) - opts
        if bad:
            raise ValueError(f"{where}: order facts ({label}) use unknown option(s) {sorted(bad)}; it takes {sorted(opts)}")
        if label != "default":
            positive_int(f"{where}: order of variant {label!r}", order)


def _nfe_text(spec: SolverSpec) -> str:
    if spec.adaptive:
        return f"`{spec.nfe}` (counted)"
    to0, not0 = spec.expected_nfe(10, True), spec.expected_nfe(10, False)
    return f"`{spec.nfe}` ({to0} at K = 10)" if to0 == not0 else f"`{spec.nfe}` ({to0} / {not0} at K = 10)"


def render_table(specs) -> str:
    """The solver table of docs/solvers.md, rendered from the specs (tests compare it with the docs)."""
    rows = ["| name | order | NFE (K intervals; z = 1 if the grid ends at t = 0) | stochastic | default spacing | options | tested equal to |",
            "|---|---|---|---|---|---|---|"]
    for s in specs:
        order = "--" if s.order is None else str(s.order)
        if s.order is not None and s.order_options:
            order += " (" + ", ".join(f"{k}={v!r}" for k, v in s.order_options.items()) + ")"
        if s.variants:
            order += "; " + "; ".join(f"{o} ({label})" for label, _, o in s.variants)
        if s.weak_order is not None:
            order += f"; weak {s.weak_order}"
        rows.append(f"| `{s.name}` | {order} | {_nfe_text(s)} | {'yes' if s.stochastic else 'no'} | "
                    f"{'adaptive' if s.adaptive else s.default_spacing} | {', '.join(s.options) or '--'} | "
                    f"{', '.join(s.peers) or '--'} |")
    return "\n".join(rows) + "\n"

