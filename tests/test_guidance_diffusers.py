"""Bring-your-own conditional diffusers models (issue 12, item 6): a class-conditional ``UNet2DModel``
(``num_class_embeds``) and a ``UNet2DConditionModel`` (``encoder_hidden_states``), small and randomly
initialised, load through ``NoisePredictor.from_diffusers`` and take ``cond``; guided ``ddim`` and
``dpmpp_2m`` equal diffusers' DDIM / DPM-Solver++ schedulers driven by the same guided loop
(one doubled batch, out = out_u + w (out_c - out_u), as diffusers' pipelines do)."""

import pytest
import torch

import diffusers  # a dev dependency: these peer tests fail (never skip) without it

from sde_diffusion import NoisePredictor
from sde_diffusion.sampling import sample

W = 3.0
STEPS = 8


def _class_unet():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=4)  # classes 0..2, index 3 used as the null class
    return unet.eval().requires_grad_(False)


def _text_unet():
    torch.manual_seed(1)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=2, out_channels=2, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=4, cross_attention_dim=6, attention_head_dim=4)
    return unet.eval().requires_grad_(False)


def _guided_diffusers_loop(sched, unet, x, cond, null, steps=STEPS):
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        both = {k: torch.cat([cond[k], null[k]]) for k in cond}
        out = unet(torch.cat([x, x]), t, **both).sample
        o_c, o_u = out.chunk(2)
        x = sched.step(o_u + W * (o_c - o_u), t, x).prev_sample
    return x


SCHED = {
    "ddim": lambda: diffusers.DDIMScheduler(beta_schedule="linear", timestep_spacing="leading", set_alpha_to_one=True,
                                          clip_sample=False),
    "dpmpp_2m": lambda: diffusers.DPMSolverMultistepScheduler(beta_schedule="linear", algorithm_type="dpmsolver++",
                                                              solver_order=2, timestep_spacing="linspace",
                                                              lower_order_final=True, final_sigmas_type="zero"),
}


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m"])
def test_class_conditional_unet2d_guided_equals_diffusers(solver):
    unet = _class_unet()
    sched = SCHED[solver]()
    model = NoisePredictor.from_diffusers(unet, sched.config)
    assert model.conditioning == {"class_labels": {"num_classes": 4}}
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y, null = torch.tensor([0, 2, 1]), torch.full((3,), 3)
    theirs = _guided_diffusers_loop(sched, unet, x_T.clone(), {"class_labels": y}, {"class_labels": null})
    ours = sample(model, x_T, solver=solver, timesteps=sched.timesteps, cond={"class_labels": y},
                  guidance=W, null_cond={"class_labels": torch.tensor(3)})
    assert ours.nfe == STEPS
    err = float((ours.samples - theirs).abs().max() / max(1.0, float(theirs.abs().max())))
    assert err < 1e-4, err
    # and the labels matter: another label gives another sample
    other = sample(model, x_T, solver=solver, timesteps=sched.timesteps, cond={"class_labels": torch.tensor([1, 0, 2])},
                   guidance=W, null_cond={"class_labels": torch.tensor(3)})
    assert float((other.samples - ours.samples).abs().max()) > 1e-3


@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m"])
def test_text_conditional_unet_guided_equals_diffusers(solver):
    unet = _text_unet()
    sched = SCHED[solver]()
    model = NoisePredictor.from_diffusers(unet, sched.config)
    assert "encoder_hidden_states" in model.conditioning
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(2, 2, 8, 8, generator=g)
    emb = torch.randn(2, 5, 6, generator=g)
    empty = torch.randn(1, 5, 6, generator=g)  # the "empty prompt" embedding
    theirs = _guided_diffusers_loop(sched, unet, x_T.clone(), {"encoder_hidden_states": emb},
                                    {"encoder_hidden_states": empty.expand(2, 5, 6)})
    ours = sample(model, x_T, solver=solver, timesteps=sched.timesteps, cond={"encoder_hidden_states": emb},
                  guidance=W, null_cond={"encoder_hidden_states": empty[0]})
    err = float((ours.samples - theirs).abs().max() / max(1.0, float(theirs.abs().max())))
    assert err < 1e-4, err


def test_unconditional_unet_refuses_cond_and_class_unet_needs_null():
    unet = _class_unet()
    model = NoisePredictor.from_diffusers(unet, SCHED["ddim"]().config)
    x_T = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="declares no null condition"):
        sample(model, x_T, solver="ddim", steps=3, cond={"class_labels": torch.tensor([0, 1])}, guidance=2.0)
    with pytest.raises(ValueError, match="outside the model's classes 0..3"):
        sample(model, x_T, solver="ddim", steps=3, cond={"class_labels": torch.tensor([0, 4])})
