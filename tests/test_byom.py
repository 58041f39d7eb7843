"""Bring your own model: diffusers configs and folders, plain callables (sde_diffusion.interop; old name byom).

References are diffusers' own schedulers (DDIMScheduler, DPMSolverMultistepScheduler) run on the
same random UNet, noise and timesteps, and diffusers' own schedule code evaluated in float64.
"""

import json
import sys
import types

import pytest
import torch

try:  # a dev dependency: peer-equivalence tests fail (never skip) without it
    import diffusers
except ImportError as e:  # pragma: no cover
    raise ImportError("diffusers is missing: it is a dev dependency (pip install -e '.[dev]'), needed by the peer-equivalence tests") from e
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    ScoreSdeVeScheduler,
    UNet2DModel,
)
from diffusers.schedulers import scheduling_ddim  # noqa: E402

from sde_diffusion import NoisePredictor, VPSDE, linear_betas  # noqa: E402
from sde_diffusion.analytic import GaussianMixture  # noqa: E402
from sde_diffusion.byom import (  # noqa: E402
    INSTALL_HINT,
    load_callable,
    load_diffusers_folder,
    prediction_from_diffusers_config,
    sde_from_diffusers_config,
)
from sde_diffusion.sampling import sample  # noqa: E402
from sde_diffusion.solvers import ADAPTIVE, SOLVERS  # noqa: E402

torch.set_num_threads(1)


def tiny_unet(out_channels=3, seed=0):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=out_channels, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()


def save_pipeline(root, **sched_cfg):
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(**sched_cfg)).save_pretrained(root)
    return root


FOLDERS = {  # name -> scheduler config of the saved pipeline
    "epsilon": dict(beta_schedule="linear", prediction_type="epsilon"),
    "v": dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
    "zsnr_v": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                   rescale_betas_zero_snr=True, prediction_type="v_prediction"),
    "zsnr_eps": dict(beta_schedule="linear", rescale_betas_zero_snr=True, prediction_type="epsilon"),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {k: save_pipeline(tmp_path_factory.mktemp(k), **cfg) for k, cfg in FOLDERS.items()}


def x_T(batch=2, seed=1):
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def assert_float32_close(got, want):
    """Agreement to float32 rounding: diffusers steps in float32, we in float64 schedule scalars.
    A random epsilon net inflates x0 = (x - sigma eps)/alpha to |x| ~ 100, hence relative;
    an off-by-one timestep gives ~5e-3 here."""
    err = (got - want).abs().max()
    assert err <= 2e-6 * max(1.0, float(want.abs().max())), float(err)


def diffusers_loop(unet, scheduler, x):
    """The reference: diffusers' own stateful scheduler loop."""
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return x


# ---- config -> VPSDE ----------------------------------------------------------------------

class _Float64Torch(types.ModuleType):
    """``torch`` with ``float32`` meaning ``float64``: runs diffusers' schedule code in float64."""

    def __getattr__(self, name):
        return torch.float64 if name == "float32" else getattr(torch, name)


CONFIGS = [
    dict(beta_schedule="linear"),
    dict(beta_schedule="linear", beta_start=0.0002, beta_end=0.03, num_train_timesteps=500),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=37),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True),
    dict(beta_schedule="linear", rescale_betas_zero_snr=True),
    dict(trained_betas=[0.01 * (k + 1) for k in range(20)], num_train_timesteps=20),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items())[:60])
def test_config_matches_diffusers_alphas_cumprod(cfg, monkeypatch):
    sde = sde_from_diffusers_config(DDIMScheduler(**cfg).config)
    # diffusers stores its schedule in float32: agree to float32 rounding ...
    ref32 = DDIMScheduler(**cfg).alphas_cumprod.double()
    assert torch.allclose(sde.alphas_cumprod, ref32, rtol=0, atol=2e-6)
    # ... and to 1e-12 with diffusers' own schedule code run in float64
    monkeypatch.setattr(scheduling_ddim, "torch", _Float64Torch("torch"))
    ref64 = DDIMScheduler(**cfg).alphas_cumprod
    assert ref64.dtype == torch.float64
    assert (sde.alphas_cumprod - ref64).abs().max() < 1e-12
    assert sde.zero_terminal_snr == bool(cfg.get("rescale_betas_zero_snr", False))
    assert VPSDE.from_diffusers(DDIMScheduler(**cfg)).num_train_steps == sde.num_train_steps


def test_prediction_mapping():
    assert prediction_from_diffusers_config({}) == "epsilon"
    for given, want in (("epsilon", "epsilon"), ("v_prediction", "v"), ("sample", "x0")):
        assert prediction_from_diffusers_config(DDIMScheduler(prediction_type=given)) == want


@pytest.mark.parametrize("cfg, match", [
    (ScoreSdeVeScheduler(), "_class_name='ScoreSdeVeScheduler'"),
    (ScoreSdeVeScheduler().config, "sigma_max=1348.0"),
    (FlowMatchEulerDiscreteScheduler(), "_class_name='FlowMatchEulerDiscreteScheduler'"),
    (dict(FlowMatchEulerDiscreteScheduler().config), "shift=1.0"),
    ({"_class_name": "KarrasVeScheduler", "sigma_min": 0.02, "sigma_max": 100}, "_class_name='KarrasVeScheduler'"),
    ({"sigma_max": 80.0, "sigma_min": 0.002}, "sigma_max=80.0"),
    ({"beta_schedule": "sigmoid"}, "beta_schedule='sigmoid'"),
    ({"beta_schedule": "linear", "beta_start": -0.1}, "beta_start=-0.1"),
    ({"beta_schedule": "linear", "beta_end": 1.5}, "beta_end=1.5"),
    ({"num_train_timesteps": 0}, "num_train_timesteps.*0"),
    ({"trained_betas": [0.1, 0.2]}, "trained_betas.*num_train_timesteps=1000"),
    ({"trained_betas": [0.1, 1.2], "num_train_timesteps": 2}, "trained_betas.*1.2"),
    ({"rescale_betas_zero_snr": "yes"}, "rescale_betas_zero_snr='yes'"),
    ("linear", "got str"),
])
def test_bad_configs_name_key_and_value(cfg, match):
    with pytest.raises(ValueError, match=match):
        sde_from_diffusers_config(cfg)


def test_bad_prediction_type():
    with pytest.raises(ValueError, match="prediction_type='flow_prediction'"):
        prediction_from_diffusers_config({"prediction_type": "flow_prediction"})


# ---- diffusers folders vs diffusers' schedulers ---------------------------------------------

@pytest.mark.parametrize("name", ["epsilon", "v"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_equals_diffusers(folders, name, spacing):
    model = load_diffusers_folder(folders[name])
    assert model.sample_shape == (3, 8, 8)
    assert model.prediction == {"epsilon": "epsilon", "v": "v"}[name]
    ref = DDIMScheduler.from_pretrained(folders[name] / "scheduler", set_alpha_to_one=True, clip_sample=False,
                                        timestep_spacing=spacing)
    ref.set_timesteps(10)
    x = x_T()
    want = diffusers_loop(model.net, ref, x)
    got = sample(model, x, solver="ddim", timesteps=ref.timesteps)
    assert got.nfe == 10
    assert_float32_close(got.samples, want)


@pytest.mark.parametrize("name", ["epsilon", "v"])
@pytest.mark.parametrize("steps", [7, 20])
def test_dpmpp_2m_equals_diffusers(folders, name, steps):
    assert "dpmpp_2m" in SOLVERS, "dpmpp_2m must be registered in sde_diffusion.solvers (solvers/dpm.py)"
    model = load_diffusers_folder(folders[name])
    ref = DPMSolverMultistepScheduler.from_pretrained(folders[name] / "scheduler", algorithm_type="dpmsolver++",
                                                      solver_order=2, final_sigmas_type="zero")
    ref.set_timesteps(steps)
    x = x_T()
    want = diffusers_loop(model.net, ref, x)
    got = sample(model, x, solver="dpmpp_2m", timesteps=ref.timesteps)
    assert got.nfe == steps
    assert_float32_close(got.samples, want)


def test_zero_snr_v_prediction_ddim_equals_diffusers(folders):
    model = load_diffusers_folder(folders["zsnr_v"])
    assert model.sde.zero_terminal_snr and model.prediction == "v"
    ref = DDIMScheduler.from_pretrained(folders["zsnr_v"] / "scheduler", set_alpha_to_one=True, clip_sample=False,
                                        timestep_spacing="trailing")
    assert ref.config.rescale_betas_zero_snr and ref.alphas_cumprod[-1] == 0
    ref.set_timesteps(8)
    assert ref.timesteps[0] == 999  # the first step starts at pure noise, alpha = 0
    x = x_T()
    want = diffusers_loop(model.net, ref, x)
    got = sample(model, x, solver="ddim", timesteps=ref.timesteps)
    assert_float32_close(got.samples, want)


def test_zero_snr_epsilon_refused(folders):
    with pytest.raises(ValueError, match="zero-terminal-SNR.*epsilon"):
        load_diffusers_folder(folders["zsnr_eps"])


def test_missing_diffusers_message(folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` raise ImportError
    with pytest.raises(ImportError, match=INSTALL_HINT.replace("[", r"\[").replace("]", r"\]")):
        load_diffusers_folder(folders["epsilon"])


def test_folder_errors(tmp_path, folders):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_diffusers_folder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        load_diffusers_folder(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"],
                                                           "vae": ["diffusers", "AutoencoderKL"]}))
    with pytest.raises(ValueError, match="vae="):
        load_diffusers_folder(tmp_path)


def test_flat_hub_layout_and_bin_weights(tmp_path):
    """Early hub repos (google/ddpm-cifar10-32) keep config.json, weights and scheduler_config.json
    at the top level; older ones ship only .bin weights."""
    unet = tiny_unet(seed=3)
    unet.save_pretrained(tmp_path, safe_serialization=False)
    DDIMScheduler(prediction_type="v_prediction", beta_schedule="scaled_linear").save_pretrained(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline",
                                                           "scheduler": ["diffusers", "DDPMScheduler"],
                                                           "unet": ["diffusers", "UNet2DModel"]}))
    assert not list(tmp_path.glob("*.safetensors"))
    model = load_diffusers_folder(tmp_path)
    assert model.prediction == "v" and model.sde.num_train_steps == 1000
    x = x_T()
    with torch.no_grad():
        assert torch.equal(model.raw(x, 0.25), unet(x, 249).sample)


def test_from_diffusers_classmethod_and_learned_variance():
    unet = tiny_unet(out_channels=6)
    sched = DDPMScheduler(variance_type="learned_range", prediction_type="sample")
    model = NoisePredictor.from_diffusers(unet, sched)
    assert model.prediction == "x0" and model.sample_shape == (3, 8, 8)
    x = x_T()
    with torch.no_grad():
        assert torch.equal(model.raw(x, 0.5), unet(x, 499).sample[:, :3])
    with pytest.raises(ValueError, match="out_channels=6"):
        NoisePredictor.from_diffusers(unet, DDPMScheduler())
    with pytest.raises(ValueError, match="_class_name='ScoreSdeVeScheduler'"):
        NoisePredictor.from_diffusers(tiny_unet(), ScoreSdeVeScheduler())


def grid_for(name, steps, tol):
    """A few fixed steps, or a loose tolerance for adaptive solvers (which choose their steps)."""
    return dict(ts=[1.0, 0.0], rtol=tol, atol=tol) if name in ADAPTIVE else dict(steps=steps)


def test_every_solver_runs_on_a_diffusers_folder(folders):
    model = load_diffusers_folder(folders["v"])
    x = x_T(batch=1)
    for name in SOLVERS:
        grid = grid_for(name, 3, 1e-2)
        out = sample(model, x, solver=name, seed=0, **grid)
        assert out.samples.shape == x.shape and torch.isfinite(out.samples).all(), name
        assert out.nfe >= 1 and not torch.equal(out.samples, x), name


# ---- every prediction type, every solver: exact analytic model ------------------------------

def analytic_predictors(sde):
    """The exact Gaussian-mixture eps, re-expressed as epsilon, v, x0 and score networks."""
    gm = GaussianMixture([[1.0, -0.5], [-1.0, 0.5]], [0.3, 0.5])
    to_output = {  # (x, alpha, sigma, eps) -> what a net of that prediction type returns
        "epsilon": lambda x, a, s, e: e,
        "x0": lambda x, a, s, e: (x - s * e) / a,
        "v": lambda x, a, s, e: a * e - s * (x - s * e) / a,
        "score": lambda x, a, s, e: -e / s,
    }

    def make(conv):
        def net(x, t):
            a = torch.as_tensor(sde.alpha(t)).reshape(-1, 1)
            s = torch.as_tensor(sde.sigma(t)).reshape(-1, 1)
            return conv(x, a, s, gm.eps(x, t, sde))
        return net

    return {p: NoisePredictor(make(conv), sde, p, time_input=lambda t: t, timestep_dtype=torch.float64)
            for p, conv in to_output.items()}


def test_every_prediction_type_with_every_solver_is_exact():
    sde = VPSDE.from_betas(linear_betas(1000))
    models = analytic_predictors(sde)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for name in SOLVERS:
        grid = grid_for(name, 6, 1e-3)
        ref = sample(models["epsilon"], x, solver=name, seed=5, **grid)
        assert ref.samples.abs().max() < 10, name
        for p in ("v", "x0", "score"):
            got = sample(models[p], x, solver=name, seed=5, **grid)
            tol = 1e-6 if name in ADAPTIVE else 1e-9
            assert torch.allclose(got.samples, ref.samples, rtol=0, atol=tol), (name, p)
            assert got.nfe == ref.nfe, (name, p)


# ---- plain callables --------------------------------------------------------------------------

MODULE_SRC = '''
import torch
from sde_diffusion import NoisePredictor, VPSDE, cosine_betas

SEEN = []

def net(x, timesteps):
    SEEN.append(timesteps.clone())
    return 0.1 * x

class Net(torch.nn.Module):
    sample_shape = (1, 4, 4)

    def forward(self, x, timesteps):
        return 0.1 * x

module_net = Net()

def make_predictor():
    return NoisePredictor(net, VPSDE.from_betas(cosine_betas(100)), "v", sample_shape=(2,))

not_a_net = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_user_model.py").write_text(MODULE_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path / "my_user_model.py"
    sys.modules.pop("my_user_model", None)


def test_load_callable_bare_net_gets_default_schedule(user_module):
    model = load_callable("my_user_model:net", sample_shape=(2,))
    ref = DDPMScheduler()  # diffusers' default: linear 1e-4..0.02, 1000 steps
    assert torch.allclose(model.sde.alphas_cumprod, ref.alphas_cumprod.double(), rtol=0, atol=2e-6)
    assert model.prediction == "epsilon" and model.sample_shape == (2,)
    seen = sys.modules["my_user_model"].SEEN
    sample(model, torch.ones(3, 2), solver="ddim", timesteps=[999, 499, 0])
    assert [s.tolist() for s in seen] == [[999.0] * 3, [499.0] * 3, [0.0] * 3]  # net(x, n), n = t N - 1
    for spec in ("my_user_model:module_net", "my_user_model:Net"):  # an instance, a no-argument factory
        m = load_callable(spec, prediction="x0")
        assert isinstance(m.net, torch.nn.Module) and m.sample_shape == (1, 4, 4) and m.prediction == "x0", spec
    assert load_callable(f"{user_module}:net").net.__name__ == "net"  # file.py:attribute


def test_load_callable_factory_returning_predictor(user_module):
    model = load_callable("my_user_model:make_predictor")
    assert model.prediction == "v" and model.sde.num_train_steps == 100
    with pytest.raises(ValueError, match="drop sde"):
        load_callable("my_user_model:make_predictor", sde=VPSDE.from_betas(linear_betas(10)))


@pytest.mark.parametrize("spec, err, match", [
    ("my_user_model", ValueError, "module:attribute"),
    ("my_user_model:nothing_here", ValueError, "no attribute 'nothing_here'"),
    ("my_user_model:not_a_net", ValueError, "is a int"),
    ("no_such_file.py:net", FileNotFoundError, "no_such_file.py"),
])
def test_load_callable_errors(user_module, spec, err, match):
    with pytest.raises(err, match=match):
        load_callable(spec)


def test_from_diffusers_constructors_equal_the_interop_functions(folders):
    """VPSDE.from_diffusers / NoisePredictor.from_diffusers (core classes, reaching only
    interop.diffusers_config) build the same process and predictor as interop.diffusers, and the
    old byom/peers names still import."""
    import sde_diffusion.byom as byom
    import sde_diffusion.peers as peers
    from sde_diffusion.interop import diffusers as idiff
    from sde_diffusion.interop import peers as ipeers

    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    a, b = VPSDE.from_diffusers(sched), idiff.sde_from_diffusers_config(sched)
    assert torch.equal(a.betas, b.betas) and a.num_train_steps == 1000
    unet = tiny_unet()
    m1, m2 = NoisePredictor.from_diffusers(unet, sched), idiff.predictor_from_diffusers(unet, sched)
    assert m1.prediction == m2.prediction == "v" and m1.sample_shape == m2.sample_shape == (3, 8, 8)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(m1.eps(x, 0.4), m2.eps(x, 0.4))
    assert byom.load_diffusers_folder is idiff.load_diffusers_folder and peers.run_peer is ipeers.run_peer
    m = idiff.load_diffusers_folder(folders["epsilon"])
    assert m.config["format"] == "diffusers" and m.config["scheduler"]["prediction_type"] == "epsilon"
