"""The solver registry: a plain dict name -> function. See ``sampling.py`` for the contract.

Adding a solver = one function in a family file + one entry here (+ its default spacing) + its
expected order in ``tests/test_solver_orders.py``.
"""

from .ancestral import ancestral, ddim
from .dpm import dpm_solver, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m
from .karras import euler, heun
from .unipc import unipc
from .reverse_sde import euler_maruyama, pc
from .ode import ode, scipy

SOLVERS = {
    "ancestral": ancestral,
    "ddim": ddim,
    "euler": euler,
    "heun": heun,
    "dpm_solver": dpm_solver,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_3m": dpmpp_3m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "unipc": unipc,
    "euler_maruyama": euler_maruyama,
    "pc": pc,
    "ode": ode,
    "scipy": scipy,
}

# the spacing ``sample(steps=K)`` uses when none is given
DEFAULT_SPACING = {
    "ancestral": "uniform",
    "ddim": "uniform",
    "euler": "karras",
    "heun": "karras",
    "dpm_solver": "logsnr",
    "dpmpp_2m": "logsnr",
    "dpmpp_3m": "logsnr",
    "dpmpp_2m_sde": "logsnr",
    "unipc": "logsnr",
    "euler_maruyama": "uniform",
    "pc": "uniform",
}

# solvers that choose their own steps (take rtol/atol, refuse steps=)
ADAPTIVE = {"ode", "scipy"}

# network evaluations for K grid intervals (adaptive solvers: not known in advance)
STOCHASTIC = {"dpmpp_2m_sde", "ancestral", "euler_maruyama", "pc"}

__all__ = ["SOLVERS", "DEFAULT_SPACING", "ADAPTIVE", "STOCHASTIC"]
