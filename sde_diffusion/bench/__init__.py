"""The step-count benchmark: every solver x spacing x NFE against sample quality, with diffusers'
schedulers on the same network and the same x_T.

Modules (each imports only those listed before it; nothing imports ``harness``):
  ``models``  what is sampled (``BenchModel``, ``load_bench_model``, the analytic mixture);
  ``plan``    the frozen plan (``Config``, ``plan``, ``steps_for_nfe``; no I/O, no timing);
  ``score``   pure scoring of one sample set (metrics + bootstrap intervals);
  ``store``   the resume store (``rows.jsonl``, ``run.json``, the folder lock);
  ``report``  rows in, tables out;  ``plots``  rows in, figures out;
  ``run``     running one configuration (the only caller of solvers, peers and ``distributed``);
  ``harness`` orchestration: ``run_bench`` and ``report``.

Solver error (``rmse_ref``) is measured against a tight probability-flow solve from the same x_T:
the ``ode`` solver (dopri5 on the PF-ODE in log-SNR) at rtol = atol = 1e-6 from t = 1 to the last
training time t = 1/N, then the x0 prediction there -- the same final denoising step every
discrete-time solver and diffusers scheduler ends with.
"""

from .harness import report, reproduce_peer, run_bench
from .models import BenchModel, gmm_benchmark, load_bench_model, mixture_moments
from .plan import (ADAPTIVE_TOLS, FULL_NFES, GRID_NFES, MAX_NFE, OUR_SPACINGS, QUICK_NFES, QUICK_PEERS, REF_TOL,
                   VARIANTS, Config, plan, steps_for_nfe)
from .report import CSV_COLUMNS, markdown, summary
from .run import reference_pf, start_streams
from .score import HIGHER_IS_BETTER, bootstrap_interval, kid_blocked, score

__all__ = ["run_bench", "report", "reproduce_peer", "load_bench_model", "gmm_benchmark", "mixture_moments",
           "reference_pf", "start_streams", "plan", "steps_for_nfe", "Config", "BenchModel", "score",
           "bootstrap_interval", "kid_blocked", "summary", "markdown", "CSV_COLUMNS", "HIGHER_IS_BETTER",
           "QUICK_NFES", "FULL_NFES", "QUICK_PEERS", "GRID_NFES", "OUR_SPACINGS", "ADAPTIVE_TOLS", "REF_TOL",
           "VARIANTS", "MAX_NFE"]
