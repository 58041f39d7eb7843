"""SDEDiffusionScheduler inside diffusers pipelines, on small randomly initialised components.

Two kinds of reference, both independent of the scheduler's code:
* ``sample()`` with the same solver, grid (built by ``sample`` from steps/spacing or the same
  timesteps list), guidance and noise: the same solver function run by its own loop. Equal to float
  rounding (the pipeline batches the guided call as [uncond, cond], ``sample`` as [cond, uncond]).
* diffusers' own scheduler for the same method (DDIM, DPM-Solver++ 2M, UniPC, Euler, DDPM) in the same
  pipeline: equal to 1e-4 relative (diffusers keeps alphas_cumprod in float32), as in
  tests/test_diffusers_equivalence.py.
"""

from __future__ import annotations

import gc
import json
import string
import threading

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from sde_diffusion import NoisePredictor, sample  # noqa: E402
from sde_diffusion.grids import time_grid  # noqa: E402
from sde_diffusion.interop.diffusers import predictor_from_diffusers  # noqa: E402
from sde_diffusion.interop.scheduler import SDEDiffusionScheduler  # noqa: E402
from sde_diffusion.model import NonFiniteOutput  # noqa: E402

PEER_TOL = 1e-4  # relative: diffusers' float32 schedule
SAME_TOL = 1e-5  # relative: the same solver function, float32 rounding of the batching only


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- components -----------------------------------------------------------------------------------

def _unet(**kw):
    torch.manual_seed(0)
    cfg = dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
               down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
               norm_num_groups=4, attention_head_dim=4)
    cfg.update(kw)
    unet = diffusers.UNet2DModel(**cfg).eval()
    with torch.no_grad():  # a random v-prediction net with outputs of order 0.3 keeps samples of order 1
        unet.conv_out.weight.mul_(0.3)
        unet.conv_out.bias.mul_(0.3)
    return unet


DDPM_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False,
                   variance_type="fixed_small", prediction_type="v_prediction")


@pytest.fixture(scope="module")
def ddpm_pipe():
    pipe = diffusers.DDPMPipeline(unet=_unet(), scheduler=diffusers.DDPMScheduler(**DDPM_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(pipe, n=2, seed=0, steps=6, **kw):
    with torch.no_grad():
        return torch.as_tensor(pipe(batch_size=n, generator=kw.pop("generator", _gen(seed)), num_inference_steps=steps,
                                    output_type="np", **kw).images)


def _as_image(x):  # what DDPMPipeline/DDIMPipeline do to the final state
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


def _assert_informative(img):
    """The comparison must be able to fail: most pixels are not clamped to 0 or 1."""
    inside = ((img > 0) & (img < 1)).double().mean()
    assert inside > 0.3, f"only {float(inside):.0%} of the pixels are unclamped"


# ---- DDPMPipeline: every fixed-grid solver equals sample() ----------------------------------------

SOLVER_CASES = [
    ("ddim", None, {}), ("euler", "karras", {}), ("heun", "karras", {}), ("dpm_solver", "logsnr", {}),
    ("dpmpp_2m", "logsnr", {}), ("dpmpp_3m", "logsnr", {}), ("unipc", "logsnr", {}), ("unipc", "trailing", {"order": 3}),
    ("ancestral", "leading", {}), ("dpmpp_2m_sde", "logsnr", {}), ("euler_maruyama", "uniform", {}),
    ("pc", "uniform", {}), ("ddim", "linspace", {"eta": 1.0}), ("euler", "karras", {"S_churn": 2.0, "S_tmax": 10.0}),
]


@pytest.mark.parametrize("solver,spacing,options", SOLVER_CASES)
def test_ddpm_pipeline_equals_sample(ddpm_pipe, solver, spacing, options):
    pipe = ddpm_pipe
    pipe.scheduler = SDEDiffusionScheduler.from_config(pipe.scheduler.config, solver=solver, spacing=spacing,
                                                       solver_options=options)
    img = _images(pipe, steps=6, seed=3)
    g = _gen(3)
    x_T = torch.randn((2, 3, 8, 8), generator=g)  # the pipeline's first draw from its generator
    model = predictor_from_diffusers(pipe.unet, DDPM_CONFIG)
    with torch.no_grad():
        res = sample(model, x_T, solver=solver, steps=6, spacing=spacing, generator=g, **options)
    ref = _as_image(res.samples)
    _assert_informative(ref)
    assert _rel(img, ref) < SAME_TOL
    assert len(pipe.scheduler.timesteps) == res.nfe  # one step() per network evaluation


def test_stochastic_reproducible_and_per_sample_generators(ddpm_pipe):
    """Same generator seed: same images; per-sample generators: sample k does not depend on its batch-mates."""
    pipe = ddpm_pipe
    pipe.scheduler = SDEDiffusionScheduler.from_config(pipe.scheduler.config, solver="dpmpp_2m_sde")
    a, b = _images(pipe, seed=5), _images(pipe, seed=5)
    assert torch.equal(a, b)
    assert _rel(a, _images(pipe, seed=6)) > 1e-2
    both = _images(pipe, generator=[_gen(10), _gen(11)])
    second = _images(pipe, n=1, generator=[_gen(11)])
    assert _rel(both[1:], second) < SAME_TOL


# ---- diffusers' own schedulers in the same pipeline ------------------------------------------------

@pytest.mark.parametrize("spacing,steps", [("leading", 10), ("trailing", 5)])
def test_ddim_pipeline_equals_diffusers_ddim(spacing, steps):
    pipe = diffusers.DDIMPipeline(unet=_unet(), scheduler=diffusers.DDPMScheduler(**DDPM_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=True,
                                                         timestep_spacing=spacing)
    theirs = _images(pipe, steps=steps)
    pipe.scheduler = SDEDiffusionScheduler.from_config(pipe.scheduler.config, solver="ddim", spacing=spacing)
    ours = _images(pipe, steps=steps)
    _assert_informative(theirs)
    assert _rel(ours, theirs) < PEER_TOL


def test_ddim_pipeline_eta():
    """DDIMPipeline(eta=1) with solver ddim configured with eta = 1 equals diffusers' DDIM at eta = 1 with
    the same generator (same noise draws); a mismatched eta is refused."""
    pipe = diffusers.DDIMPipeline(unet=_unet(), scheduler=diffusers.DDPMScheduler(**DDPM_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=True)
    theirs = _images(pipe, steps=8, eta=1.0)
    pipe.scheduler = SDEDiffusionScheduler.from_config(pipe.scheduler.config, solver="ddim", spacing="leading",
                                                       solver_options={"eta": 1.0})
    assert _rel(_images(pipe, steps=8, eta=1.0), theirs) < PEER_TOL
    with pytest.raises(ValueError, match="eta=0.0 but this scheduler runs solver 'ddim' with eta=1.0"):
        _images(pipe, steps=8, eta=0.0)


@pytest.mark.parametrize("cls,solver,spacing", [
    ("DPMSolverMultistepScheduler", "dpmpp_2m", "linspace"), ("DDPMScheduler", "ancestral", "trailing")])
def test_ddpm_pipeline_equals_diffusers(ddpm_pipe, cls, solver, spacing):
    """On diffusers' timesteps (its DPM-Solver "linspace" differs from DDPM's), passed as a list."""
    pipe = ddpm_pipe
    pipe.scheduler = getattr(diffusers, cls).from_config(DDPM_CONFIG, timestep_spacing=spacing)
    theirs = _images(pipe, steps=10, seed=1)
    pipe.scheduler.set_timesteps(10)
    timesteps = [int(t) for t in pipe.scheduler.timesteps]
    pipe.scheduler = SDEDiffusionScheduler.from_config(pipe.scheduler.config, solver=solver, timesteps=timesteps)
    ours = _images(pipe, steps=10, seed=1)
    _assert_informative(theirs)
    assert _rel(ours, theirs) < PEER_TOL


# ---- a class-conditional UNet2DModel in a hand-written guided loop ----------------------------------

def test_class_conditional_loop_with_guidance():
    unet = _unet(num_class_embeds=11)  # classes 0..9, 10 = the null class of classifier-free guidance
    sched = SDEDiffusionScheduler.from_config(diffusers.DDPMScheduler(**DDPM_CONFIG).config, solver="unipc")
    sched.set_timesteps(8)
    y, null, w = torch.tensor([3, 7]), torch.tensor([10, 10]), 2.5
    x_T = torch.randn((2, 3, 8, 8), generator=_gen(4))
    x = x_T
    with torch.no_grad():
        for t in sched.timesteps:  # the loop a diffusers user writes
            out = unet(torch.cat([x, x]), t, class_labels=torch.cat([null, y])).sample
            uncond, cond = out.chunk(2)
            x = sched.step(uncond + w * (cond - uncond), t, x).prev_sample
        model = NoisePredictor(unet, sched.sde, "v", conditioning={"class_labels": {"num_classes": 10, "null_class": 10}})
        ref = sample(model, x_T, solver="unipc", steps=8, cond={"class_labels": y}, guidance=w).samples
    assert _rel(x, ref) < SAME_TOL
    plain = sample(model, x_T, solver="unipc", steps=8, cond={"class_labels": y}).samples
    assert _rel(plain, ref) > 1e-3  # guidance really changed the result


# ---- Stable Diffusion from tiny configs: guidance > 1, negative prompts ---------------------------

SD_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


@pytest.fixture(scope="module")
def sd_parts(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("tok")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=16)
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  norm_num_groups=4, sample_size=16).eval()
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=2, vocab_size=len(vocab), max_position_embeddings=16)).eval()
    return dict(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)


def _sd(parts, cls="StableDiffusionPipeline"):
    pipe = getattr(diffusers, cls)(**parts, scheduler=diffusers.DDIMScheduler(**SD_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    return pipe


PROMPT, NEGATIVE, W = "a red cat", "a blurry dog", 4.0


def _sd_latents(pipe, steps, seed=0, **kw):
    with torch.no_grad():
        return pipe(PROMPT, negative_prompt=NEGATIVE, guidance_scale=W, num_inference_steps=steps,
                    generator=_gen(seed), output_type="latent", **kw).images


def _guided_model(pipe):
    """The pipeline's UNet under the pipeline's own prompt embeddings, guided by sample()."""
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    model = NoisePredictor(pipe.unet, predictor_from_diffusers(pipe.unet, SD_CONFIG).sde,
                           conditioning={"encoder_hidden_states": {}})
    return model, dict(cond={"encoder_hidden_states": cond}, null_cond={"encoder_hidden_states": uncond}, guidance=W)


@pytest.mark.parametrize("solver,spacing,options", [
    ("dpmpp_2m", None, {}), ("unipc", "karras", {}), ("heun", "karras", {}), ("ddim", "trailing", {}),
    ("dpmpp_2m_sde", "logsnr", {}), ("ancestral", "uniform", {})])
def test_stable_diffusion_equals_sample(sd_parts, solver, spacing, options):
    pipe = _sd(sd_parts)
    pipe.scheduler = SDEDiffusionScheduler.from_config(pipe.scheduler.config, solver=solver, spacing=spacing,
                                                       solver_options=options)
    ours = _sd_latents(pipe, 6, seed=2)
    g = _gen(2)
    x_T = torch.randn((1, 4, 8, 8), generator=g)
    model, guided = _guided_model(pipe)
    with torch.no_grad():
        ref = sample(model, x_T, solver=solver, steps=6, spacing=spacing, generator=g, **guided, **options).samples
    assert ref.abs().max() > 0.1
    assert _rel(ours, ref) < SAME_TOL


@pytest.mark.parametrize("cls,solver,extra", [
    ("DPMSolverMultistepScheduler", "dpmpp_2m", {}), ("UniPCMultistepScheduler", "unipc", {}),
    ("EulerDiscreteScheduler", "euler", {"timestep_spacing": "leading"}),  # integer timesteps (its default is linspace)
    ("DDIMScheduler", "ddim", {"set_alpha_to_one": True})])
def test_stable_diffusion_equals_diffusers(sd_parts, cls, solver, extra):
    """diffusers' scheduler from the pipeline's config (leading spacing, steps_offset 1); ours on the same
    integer timesteps, passed as a timesteps list."""
    pipe = _sd(sd_parts)
    pipe.scheduler = getattr(diffusers, cls).from_config(pipe.scheduler.config, **extra)
    theirs = _sd_latents(pipe, 8)
    pipe.scheduler.set_timesteps(8)
    timesteps = [int(t) for t in pipe.scheduler.timesteps]
    pipe.scheduler = SDEDiffusionScheduler.from_config(pipe.scheduler.config, solver=solver, timesteps=timesteps)
    ours = _sd_latents(pipe, 8)
    assert theirs.abs().max() > 0.1
    assert _rel(ours, theirs) < PEER_TOL


def test_stable_diffusion_timesteps_and_sigmas_arguments(sd_parts):
    """The pipeline's own timesteps=/sigmas= arguments reach set_timesteps; the VE sigmas of a grid give
    the same solve as its timesteps."""
    pipe = _sd(sd_parts)
    pipe.scheduler = SDEDiffusionScheduler.from_config(pipe.scheduler.config, solver="dpmpp_2m")
    custom = [961, 801, 601, 401, 201, 41]
    by_t = _sd_latents(pipe, None, timesteps=custom)
    sde = pipe.scheduler.sde
    sigmas = [sde.sigma_ve((n + 1) / 1000) for n in custom] + [0.0]
    by_sigma = _sd_latents(pipe, None, sigmas=sigmas)
    assert _rel(by_sigma, by_t) < SAME_TOL
    model, guided = _guided_model(pipe)
    g = _gen(0)
    with torch.no_grad():
        ref = sample(model, torch.randn((1, 4, 8, 8), generator=g), solver="dpmpp_2m", timesteps=custom, **guided).samples
    assert _rel(by_t, ref) < SAME_TOL


@pytest.mark.parametrize("solver,strength", [("dpmpp_2m", 0.6), ("heun", 0.5), ("pc", 0.75)])
def test_img2img_starts_at_the_right_time(sd_parts, solver, strength):
    """strength s: diffusers starts at grid step k = K - int(K s); the result equals sample() on the grid from
    step k, started from alpha(t_k) x0 + sigma(t_k) noise."""
    pipe = _sd(sd_parts, "StableDiffusionImg2ImgPipeline")
    pipe.scheduler = SDEDiffusionScheduler.from_config(pipe.scheduler.config, solver=solver, spacing="logsnr")
    x0 = torch.randn((1, 4, 8, 8), generator=_gen(9))  # 4 channels: the pipeline takes it as latents
    K = 8
    with torch.no_grad():
        ours = pipe(PROMPT, image=x0, strength=strength, negative_prompt=NEGATIVE, guidance_scale=W, num_inference_steps=K,
                    generator=_gen(1), output_type="latent").images
    k = K - int(K * strength)
    sde = pipe.scheduler.sde
    grid = time_grid(sde, K, "logsnr")[k:]
    g = _gen(1)
    noise = torch.randn((1, 4, 8, 8), generator=g)
    t0 = float(grid[0])
    x_start = sde.alpha(t0) * x0 + sde.sigma(t0) * noise
    model, guided = _guided_model(pipe)
    with torch.no_grad():
        ref = sample(model, x_start, solver=solver, ts=grid, generator=g, **guided).samples
    assert _rel(ours, ref) < SAME_TOL


# ---- scheduler API: round trip, add_noise, state -----------------------------------------------------

def test_save_and_load_round_trip(tmp_path):
    s = SDEDiffusionScheduler.from_config(diffusers.DDIMScheduler(**SD_CONFIG).config, solver="dpm_solver",
                                          spacing="karras", solver_options={"order": 2})
    s.save_pretrained(tmp_path)
    t = SDEDiffusionScheduler.from_pretrained(tmp_path)
    assert (t.config.solver, t.config.spacing, t.config.solver_options) == ("dpm_solver", "karras", {"order": 2})
    s.set_timesteps(7)
    t.set_timesteps(7)
    assert torch.equal(s.timesteps, t.timesteps) and len(s.timesteps) == 7 * 2 - 1  # order 2, first order to t = 0
    f = SDEDiffusionScheduler.from_config(s.config, timesteps=[900, 500, 100])  # a list survives the JSON file
    f.save_pretrained(tmp_path / "f")
    assert SDEDiffusionScheduler.from_pretrained(tmp_path / "f").config.timesteps == [900.0, 500.0, 100.0]


def test_add_noise_equals_diffusers():
    cfg = diffusers.DDPMScheduler(**DDPM_CONFIG)
    s = SDEDiffusionScheduler.from_config(cfg.config)
    x0, noise = torch.randn(3, 2, 4, 4, generator=_gen(0)), torch.randn(3, 2, 4, 4, generator=_gen(1))
    n = torch.tensor([0, 499, 999])
    assert _rel(s.add_noise(x0, noise, n), cfg.add_noise(x0, noise, n)) < 1e-6
    assert _rel(s.get_velocity(x0, noise, n), cfg.get_velocity(x0, noise, n)) < 1e-6


def test_timesteps_are_what_sample_feeds_the_net():
    """The net sees the same timesteps (n = t N - 1) in a pipeline as in sample(), one per evaluation."""
    s = SDEDiffusionScheduler.from_config(diffusers.DDPMScheduler(**DDPM_CONFIG).config, solver="heun", spacing="karras")
    s.set_timesteps(5)
    seen = []
    model = NoisePredictor(lambda x, t: (seen.append(float(t[0])), 0.1 * x)[1], s.sde)
    sample(model, torch.zeros(1, 1), solver="heun", steps=5, spacing="karras")
    assert s.timesteps.tolist() == pytest.approx(seen, abs=0) and len(seen) == 9
    assert s.order == 2 and s.num_inference_steps == 5 and s.init_noise_sigma == 1.0


def _solver_threads():
    return [t for t in threading.enumerate() if t.name == "sde-diffusion-solver"]


def _toy_steps(s, n, x=None):
    x = torch.randn(1, 1, 4, 4, generator=_gen(0)) if x is None else x
    for t in s.timesteps[:n]:
        x = s.step(0.5 * x, t, x).prev_sample
    return x


def test_threads_end_on_reuse_early_stop_error_and_garbage_collection():
    gc.collect()
    before = set(_solver_threads())  # (threads of other tests' schedulers may end meanwhile: count only ours)

    def ours():
        return [t for t in _solver_threads() if t not in before and t.is_alive()]

    s = SDEDiffusionScheduler.from_config(diffusers.DDPMScheduler(**DDPM_CONFIG).config, solver="dpmpp_3m")
    s.set_timesteps(6)
    full = _toy_steps(s, 6)
    assert ours() == []  # finished solve: thread gone
    s.set_timesteps(6)
    _toy_steps(s, 3)  # a pipeline that stops early ...
    assert len(ours()) == 1
    s.set_timesteps(6)  # ... and is reused: the old solve is cancelled, the new one is clean
    assert ours() == []
    assert torch.equal(_toy_steps(s, 6), full)
    # an exception inside the solver reaches the pipeline; the scheduler recovers after set_timesteps
    s.set_timesteps(6)
    x = _toy_steps(s, 2)
    with pytest.raises(NonFiniteOutput):
        s.step(torch.full_like(x, float("nan")), s.timesteps[2], x)
    with pytest.raises(RuntimeError, match="failed earlier"):
        s.step(x, s.timesteps[3], x)
    assert ours() == []
    s.set_timesteps(6)
    assert torch.equal(_toy_steps(s, 6), full)
    # a scheduler dropped mid-solve takes its thread with it
    s.set_timesteps(6)
    _toy_steps(s, 2)
    left = ours()
    assert len(left) == 1
    del s
    gc.collect()
    left[0].join(timeout=5)
    assert ours() == []


# ---- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,key", [("EDMEulerScheduler", "sigma_max"), ("FlowMatchEulerDiscreteScheduler", "shift"),
                                     ("ScoreSdeVeScheduler", "sigma_max")])
def test_unrepresentable_configs_refused_naming_the_key(cls, key):
    with pytest.raises(ValueError, match=key):
        SDEDiffusionScheduler.from_config(getattr(diffusers, cls)().config)


def test_bad_solver_spacing_and_options_listed():
    cfg = diffusers.DDPMScheduler(**DDPM_CONFIG).config
    with pytest.raises(ValueError, match=r"unknown solver 'dpmpp_9m'; valid: .*unipc"):
        SDEDiffusionScheduler.from_config(cfg, solver="dpmpp_9m")
    with pytest.raises(ValueError, match=r"'ode' is adaptive.*fixed-grid solver: .*dpmpp_2m"):
        SDEDiffusionScheduler.from_config(cfg, solver="ode")
    with pytest.raises(ValueError, match=r"unknown spacing 'cosine'; valid: uniform.*karras.*tuned"):
        SDEDiffusionScheduler.from_config(cfg, spacing="cosine")
    with pytest.raises(ValueError, match=r"does not take etaa; it takes: eta"):
        SDEDiffusionScheduler.from_config(cfg, solver="ddim", solver_options={"etaa": 1})
    with pytest.raises(ValueError, match="eta must be a finite number >= 0"):
        SDEDiffusionScheduler.from_config(cfg, solver="ddim", solver_options={"eta": -1})
    with pytest.raises(ValueError, match="draws noise before its first network evaluation"):
        # (a grid from t = 1 cannot be churned: sigma is capped at t = 1; from t_n < 1 it is)
        SDEDiffusionScheduler.from_config(cfg, solver="euler", solver_options={"S_churn": 5.0}, timesteps=[500, 100])
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        SDEDiffusionScheduler.from_config(cfg, rescale_betas_zero_snr=True, prediction_type="epsilon")
    with pytest.raises(ValueError, match="spacing='tuned' needs tuned=FILE"):
        SDEDiffusionScheduler.from_config(cfg, spacing="tuned")
    with pytest.raises(ValueError, match="at most one of timesteps, sigmas"):
        SDEDiffusionScheduler.from_config(cfg, timesteps=[500, 100], sigmas=[3.0, 1.0])


def test_step_out_of_order_refused_naming_the_expected_timestep():
    s = SDEDiffusionScheduler.from_config(diffusers.DDPMScheduler(**DDPM_CONFIG).config, solver="ddim", spacing="leading")
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match="before step"):
        s.step(x, 999, x)
    s.set_timesteps(4)  # leading: 750, 500, 250, 0
    with pytest.raises(ValueError, match=r"got timestep 500.0, expected 750 = timesteps\[0\]"):
        s.step(x, 500, x)
    x1 = s.step(0.1 * x, 750, x).prev_sample
    with pytest.raises(ValueError, match=r"got timestep 250.0, expected 500 = timesteps\[1\]"):
        s.step(x1, 250, x1)
    with pytest.raises(ValueError, match="differs from the prev_sample"):
        s.step(x1, 500, x1 + 1)
    with pytest.raises(ValueError, match="num_inference_steps=5 but the timesteps/sigmas given has 2 steps"):
        s.set_timesteps(5, timesteps=[500, 100])
    f = SDEDiffusionScheduler.from_config(s.config, timesteps=[700, 300])
    with pytest.raises(ValueError, match="fixed grid has 2 steps; pass num_inference_steps=2"):
        f.set_timesteps(50)
    with pytest.raises(ValueError, match="begin_index 1 is not the first evaluation of a grid step"):
        h = SDEDiffusionScheduler.from_config(s.config, solver="heun")
        h.set_timesteps(4)
        h.set_begin_index(1)


def test_tuned_configuration_equals_sample_with_tuned(ddpm_pipe):
    """spacing="tuned" + tuned=<configuration>: the grid and per-step options of the tuned file, as
    sample(..., tuned=...) uses them; the configuration for another step count is refused by name."""
    from sde_diffusion import tuning

    grid = [1.0, 0.7, 0.35, 0.12, 0.0]
    cfg = {"format": tuning.FORMAT, "solver": "unipc", "steps": 4, "ts": grid, "options": {"variant": "bh1"}}
    pipe = ddpm_pipe
    pipe.scheduler = SDEDiffusionScheduler.from_config(DDPM_CONFIG, solver="unipc", spacing="tuned", tuned=cfg)
    img = _images(pipe, steps=4, seed=2)
    g = _gen(2)
    x_T = torch.randn((2, 3, 8, 8), generator=g)
    model = predictor_from_diffusers(pipe.unet, DDPM_CONFIG)
    with torch.no_grad():
        ref = sample(model, x_T, solver="unipc", steps=4, tuned=cfg).samples
        plain = sample(model, x_T, solver="unipc", ts=grid).samples  # bh2: the tuned options matter
    assert _rel(img, _as_image(ref)) < SAME_TOL
    assert _rel(_as_image(plain), _as_image(ref)) > 1e-4
    with pytest.raises(ValueError, match="no tuned configuration unipc/6"):
        pipe.scheduler.set_timesteps(6)


def _every_fixed_grid_solver():
    from sde_diffusion.solvers import ADAPTIVE, SOLVERS

    return sorted(n for n in SOLVERS if n not in ADAPTIVE)


@pytest.mark.parametrize("solver", _every_fixed_grid_solver())
def test_every_registered_solver_runs_step_by_step(solver):
    """Registry-wide: the step() loop of any fixed-grid solver in SOLVERS (new ones included) equals
    sample() with the same generator, on a smooth toy net (float64), with one step() per NFE."""
    s = SDEDiffusionScheduler.from_config(diffusers.DDPMScheduler(**DDPM_CONFIG).config, solver=solver)
    s.set_timesteps(7)

    def net(x, t):
        return 0.4 * torch.tanh(x) + 1e-4 * t.to(x.dtype).reshape(-1, 1, 1, 1) * x

    x_T = torch.randn(2, 1, 4, 4, generator=_gen(5), dtype=torch.float64)
    x, g = x_T, _gen(6)
    for t in s.timesteps:
        x = s.step(net(x, t.expand(2)), t, x, generator=g).prev_sample
    res = sample(NoisePredictor(net, s.sde, "v"), x_T, solver=solver, steps=7, generator=_gen(6))
    assert float((x - res.samples).abs().max()) < 1e-12
    assert len(s.timesteps) == res.nfe and s.step_index == res.nfe


def test_learned_variance_unet_uses_the_mean_half():
    """variance_type "learned_range" (twice the output channels, as in improved-DDPM checkpoints): step()
    keeps the mean half, as predictor_from_diffusers does for sample()."""
    cfg = dict(DDPM_CONFIG, variance_type="learned_range")
    pipe = diffusers.DDPMPipeline(unet=_unet(out_channels=6), scheduler=diffusers.DDPMScheduler(**cfg))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = SDEDiffusionScheduler.from_config(pipe.scheduler.config, solver="unipc")
    img = _images(pipe, steps=5, seed=8)
    g = _gen(8)
    x_T = torch.randn((2, 3, 8, 8), generator=g)
    with torch.no_grad():
        ref = sample(predictor_from_diffusers(pipe.unet, cfg), x_T, solver="unipc", steps=5).samples
    assert _rel(img, _as_image(ref)) < SAME_TOL
    pipe.scheduler = SDEDiffusionScheduler.from_config(pipe.scheduler.config, variance_type="fixed_small")
    with pytest.raises(ValueError, match=r"model_output shape \(2, 6, 8, 8\) does not match sample shape"):
        _images(pipe, steps=5)


def test_sigmas_list_gets_a_final_zero():
    s = SDEDiffusionScheduler.from_config(diffusers.DDPMScheduler(**DDPM_CONFIG).config, solver="dpmpp_2m")
    sig = [80.0, 10.0, 2.0, 0.3]
    s.set_timesteps(sigmas=sig)
    a = s.grid.clone()
    s.set_timesteps(sigmas=sig + [0.0])
    assert torch.equal(a, s.grid) and float(a[-1]) == 0.0 and len(a) == 5
    assert s.sde.sigma_ve(float(a[1])) == pytest.approx(10.0, rel=1e-9)  # sigma = sigma/alpha at each step start
