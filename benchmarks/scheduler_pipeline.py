"""SDEDiffusionScheduler in the tiny Stable Diffusion pipeline of tests/test_scheduler.py (random weights,
8 x 8 x 4 latents, CLIP text encoder, guidance 4 with a negative prompt): how far each scheduler's latents
are from a converged probability-flow solve, and how far ours are from sample() and from diffusers'
scheduler for the same method.

    python benchmarks/scheduler_pipeline.py [--seeds 8]

Reference: ``sample(model, x_T, solver="ode", rtol=atol=1e-7)`` with the pipeline's guided UNet (the same
conditioning, negative prompt and guidance) from t = 1. Every scheduler starts at t = 1 (diffusers'
schedulers with ``timestep_spacing="trailing"``, whose first timestep is 999), so all solve the same
ODE from the same x_T. RMSE over latents, mean over ``--seeds`` prompts' noise. Random weights: this
measures solver error on a smooth, guided, text-conditioned network, not image quality.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
from pathlib import Path

import torch

import diffusers
from sde_diffusion import sample
from sde_diffusion.interop.scheduler import SDEDiffusionScheduler

_spec = importlib.util.spec_from_file_location("test_scheduler", Path(__file__).parents[1] / "tests" / "test_scheduler.py")
T = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(T)

OURS = [("unipc", "logsnr", {}), ("unipc", "uniform", {}), ("unipc", "logsnr", {"order": 3}), ("dpmpp_2m", "logsnr", {}),
        ("dpmpp_3m", "logsnr", {}), ("ddim", "uniform", {}), ("heun", "karras", {})]
THEIRS = ["PNDMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "EulerDiscreteScheduler"]


class _Parts:
    def __init__(self):
        import tempfile

        class _F:  # the pytest fixture's tmp_path_factory
            def mktemp(self, name):
                return Path(tempfile.mkdtemp(prefix=name))

        self.parts = T.sd_parts.__wrapped__(_F())


def _latents(pipe, steps, seed):
    with torch.no_grad():
        return pipe(T.PROMPT, negative_prompt=T.NEGATIVE, guidance_scale=T.W, num_inference_steps=steps,
                    generator=torch.Generator().manual_seed(seed), output_type="latent").images


def _rmse(a, b):
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", default="5,10,20")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    parts = _Parts().parts
    pipe = T._sd(parts)
    base = pipe.scheduler.config
    model, guided = T._guided_model(pipe)
    refs = []
    for s in range(a.seeds):
        x_T = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(s))
        with torch.no_grad():
            refs.append(sample(model, x_T, solver="ode", rtol=1e-7, atol=1e-7, **guided).samples)
    scale = statistics.mean(float(r.double().pow(2).mean().sqrt()) for r in refs)
    print(f"reference latents RMS {scale:.3f} (mean over {a.seeds} seeds); RMSE against the reference:")
    steps = [int(k) for k in a.steps.split(",")]
    print("| scheduler | " + " | ".join(f"{k} steps" for k in steps) + " |")
    print("|---|" + "---|" * len(steps))
    rows = [(f"ours `{n}`, {sp}" + (f", {o}" if o else ""), lambda n=n, sp=sp, o=o: SDEDiffusionScheduler.from_config(
        base, solver=n, spacing=sp, solver_options=o), n) for n, sp, o in OURS]
    rows += [(f"diffusers {c}, trailing", lambda c=c: getattr(diffusers, c).from_config(
        base, timestep_spacing="trailing", **({"set_alpha_to_one": True} if c == "DDIMScheduler" else {})), c) for c in THEIRS]
    for label, make, _ in rows:
        cells = []
        for k in steps:
            pipe.scheduler = make()
            err = statistics.mean(_rmse(_latents(pipe, k, s), refs[s]) for s in range(a.seeds))
            nfe = len(pipe.scheduler.timesteps)
            cells.append(f"{err:.4f}" + (f" ({nfe} NFE)" if nfe != k else ""))
        print(f"| {label} | " + " | ".join(cells) + " |")

    # equalities: ours vs sample() and vs diffusers' same method (max |difference| / max |latents|)
    print("\nmax |ours - other| / max |other| over the seeds, 10 steps:")
    for n, sp in (("dpmpp_2m", "logsnr"), ("unipc", "karras"), ("heun", "karras"), ("dpmpp_2m_sde", "logsnr")):
        pipe.scheduler = SDEDiffusionScheduler.from_config(base, solver=n, spacing=sp)
        worst = 0.0
        for s in range(a.seeds):
            g = torch.Generator().manual_seed(s)
            x_T = torch.randn((1, 4, 8, 8), generator=g)
            with torch.no_grad():
                ref = sample(model, x_T, solver=n, steps=10, spacing=sp, generator=g, **guided).samples
            worst = max(worst, T._rel(_latents(pipe, 10, s), ref))
        print(f"  ours `{n}` vs sample(): {worst:.1e}")
    for cls, n, extra in (("DPMSolverMultistepScheduler", "dpmpp_2m", {}), ("UniPCMultistepScheduler", "unipc", {}),
                          ("EulerDiscreteScheduler", "euler", {}), ("DDIMScheduler", "ddim", {"set_alpha_to_one": True})):
        worst = 0.0
        for s in range(a.seeds):
            pipe.scheduler = getattr(diffusers, cls).from_config(base, timestep_spacing="trailing", **extra)
            theirs = _latents(pipe, 10, s)
            pipe.scheduler.set_timesteps(10)
            ts = [int(t) for t in pipe.scheduler.timesteps]
            pipe.scheduler = SDEDiffusionScheduler.from_config(base, solver=n, timesteps=ts)
            worst = max(worst, T._rel(_latents(pipe, 10, s), theirs))
        print(f"  ours `{n}` vs diffusers {cls}: {worst:.1e}")


if __name__ == "__main__":
    main()
