"""The solver registry: a plain dict name -> function. See ``sampling.py`` for the contract.

Adding a solver = one function in a family file + one entry here (+ its default spacing) + its
expected order in ``tests/test_solver_orders.py``.
"""

from .ancestral import ancestral, ddim

SOLVERS = {
    "ancestral": ancestral,
    "ddim": ddim,
}

# the spacing ``sample(steps=K)`` uses when none is given
DEFAULT_SPACING = {
    "ancestral": "uniform",
    "ddim": "uniform",
}

# solvers that choose their own steps (take rtol/atol, refuse steps=)
ADAPTIVE = set()

# network evaluations for K grid intervals (adaptive solvers: not known in advance)
STOCHASTIC = {"ancestral"}

__all__ = ["SOLVERS", "DEFAULT_SPACING", "ADAPTIVE", "STOCHASTIC"]
