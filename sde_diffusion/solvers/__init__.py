"""The solver registry, derived from the facts each solver declares next to its definition.

Adding a solver = one function decorated with ``@solver(...)`` (see ``spec.py`` for the facts) in a
family file + its name in ``_ALL`` below. ``SOLVERS``, ``DEFAULT_SPACING``, ``ADAPTIVE``,
``STOCHASTIC``, docs/solvers.md's table and the registry-wide tests are all read from ``SPECS``.
"""

from .adams import deis, ipndm, lms
from .ancestral import ancestral, ddim
from .ancestral_steps import dpmpp_2s_ancestral, euler_ancestral
from .bespoke import bespoke
from .dpm import dpm_solver, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m
from .karras import euler, heun
from .ode import ode, scipy
from .restart import restart
from .reverse_sde import euler_maruyama, pc
from .sde_dpm import dpmpp_3m_sde, dpmpp_sde
from .spec import REGISTRY, SolverSpec, render_table, solver
from .unipc import unipc

_ALL = (ancestral, ddim, euler, heun, dpm_solver, dpmpp_2m, dpmpp_3m, dpmpp_2m_sde, unipc, euler_maruyama, pc, ode, scipy,
        euler_ancestral, dpmpp_2s_ancestral, dpmpp_sde, dpmpp_3m_sde, lms, deis, ipndm, restart, bespoke)

# name -> SolverSpec (order, NFE formula, default spacing, stochastic/adaptive, peers, options)
SPECS = {f.spec.name: f.spec for f in _ALL}
REGISTRY.update(SPECS)

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


_BEGIN, _END = "<!-- solver-table: begin -->\n", "<!-- solver-table: end -->"


def table_in_doc(text: str) -> str:
    """The solver table between the markers of a markdown text (ValueError without markers)."""
    if _BEGIN not in text or _END not in text:
        raise ValueError(f"no solver-table markers ({_BEGIN.strip()} ... {_END}) in the text")
    return text.split(_BEGIN, 1)[1].split(_END, 1)[0]


def update_doc(path) -> bool:
    """Rewrite the solver table between the markers of the markdown file ``path``; True if it changed
    (``python -c "from sde_diffusion.solvers import update_doc; update_doc('docs/solvers.md')"``)."""
    from pathlib import Path

    p = Path(path)
    doc = p.read_text()
    old = table_in_doc(doc)
    new = doc.replace(_BEGIN + old + _END, _BEGIN + solver_table() + _END, 1)
    if new != doc:
        p.write_text(new)
    return new != doc


__all__ = ["SOLVERS", "SPECS", "DEFAULT_SPACING", "ADAPTIVE", "STOCHASTIC", "SolverSpec", "solver", "solver_table", "update_doc",
           "table_in_doc"]
