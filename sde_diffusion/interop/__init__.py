"""Interoperability with other libraries' models and samplers (diffusers folders and configs, plain
Python callables, diffusers schedulers as benchmark peers).

Kept import-free: ``import sde_diffusion.interop.X`` loads only X and what it needs.

    diffusers_config  diffusers scheduler/UNet configs -> betas, prediction type, net wrapper (no model layer)
    diffusers         diffusers models and pipeline folders -> NoisePredictor
    callables         ``module:attr`` / ``file.py:attr`` -> NoisePredictor
    peers             diffusers schedulers running their own loop on our NoisePredictor (benchmarks, tests)
    scheduler         our solvers as a diffusers scheduler (for diffusers pipelines)
    families          diffusers configs of VE / EDM / flow-matching schedulers -> Gaussian path families
"""
