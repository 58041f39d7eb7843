"""The solver registry, derived from the facts each solver declares next to its definition.

Adding a solver = one function decorated with ``@solver(...)`` (see ``spec.py`` for the facts) in a
family file + its name in ``_ALL`` below. ``SOLVERS``, ``DEFAULT_SPACING``, ``ADAPTIVE``,
``STOCHASTIC``, docs/solvers.md's table and the registry-wide tests are all read from ``SPECS``.
"""

from .ancestral import ancestral, ddim
from .dpm import dpm_solver, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m
from .karras import euler, heun
from .ode import ode, scipy
from .reverse_sde import euler_maruyama, pc
from .spec import SolverSpec, render_table, solver
from .unipc import unipc

_ALL = (ancestral, ddim, euler, heun, dpm_solver, dpmpp_2m, dpmpp_3m, dpmpp_2m_sde, unipc, euler_maruyama, pc, ode, scipy)

# name -> SolverSpec (order, NFE formula, default spacing, stochastic/adaptive, peers, options)
SPECS = {f.spec.name: f.spec for f in _ALL}

SOLVERS = {name: s.fn for name, s in SPECS.items()}
# the spacing ``sample(steps=K)`` uses when none is given (adaptive solvers have none)
DEFAULT_SPACING = {name: s.default_spacing for name, s in SPECS.items() if not s.adaptive}
# solvers that choose their own steps (take rtol/atol, refuse steps=)
ADAPTIVE = {name for name, s in SPECS.items() if s.adaptive}
# solvers that draw noise with their default options
STOCHASTIC = {name for name, s in SPECS.items() if s.stochastic}


def solver_table() -> str:
    """docs/solvers.md's solver table, rendered from ``SPECS``."""
    return render_table(SPECS.values())


__all__ = ["SOLVERS", "SPECS", "DEFAULT_SPACING", "ADAPTIVE", "STOCHASTIC", "SolverSpec", "solver", "solver_table"]
