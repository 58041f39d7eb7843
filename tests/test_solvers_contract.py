"""The solver contract, checked for EVERY entry of SOLVERS at test time (solvers added later are
covered automatically): declared facts complete, dtype/shape/device kept, determinism, declared NFE
(``SolverSpec.nfe``, checked against an independent call counter), batch invariance, option and name
errors, NaN -> SolverError. Adaptive solvers get no steps."""

import pytest
import torch

from sde_diffusion.analytic import GaussianMixture
from sde_diffusion.sampling import SolverError, sample
from sde_diffusion.schedules import linear_betas
from sde_diffusion.sde import VPSDE
from sde_diffusion.solvers import ADAPTIVE, SOLVERS, SPECS, STOCHASTIC
from sde_diffusion.solvers.spec import check_spec

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SDE = VPSDE.from_betas(linear_betas(1000))
MIX = GaussianMixture([[0.5, -1.0, 0.2], [-0.8, 0.3, 1.0]], [0.3, 0.6])


class Counting:
    """The mixture's exact eps as a net, counting its calls independently of NoisePredictor.nfe;
    ``nan_after`` makes call number nan_after+1 onwards return NaN."""

    def __init__(self, nan_after=None):
        self.calls, self.nan_after = 0, nan_after

    def __call__(self, x, t):
        self.calls += 1
        out = MIX.eps(x, t, SDE).to(x.dtype)
        if self.nan_after is not None and self.calls > self.nan_after:
            out = torch.full_like(out, float("nan"))
        return out


def model_of(net, check_finite=True):
    from sde_diffusion.model import NoisePredictor

    return NoisePredictor(net, SDE, "epsilon", time_input=lambda t: t, timestep_dtype=torch.float64,
                          check_finite=check_finite, sample_shape=(3,))


def grid_kwargs(name, ts=None):
    if name in ADAPTIVE:
        return {} if ts is None else {"ts": ts}
    return {"steps": 4} if ts is None else {"ts": ts}


def extra(name):
    """Options that make a solver batch-invariant (adaptive ones step per sample)."""
    return {"per_sample": True} if name in ADAPTIVE else {}


ALL = sorted(SOLVERS)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_shape_dtype_device_kept(name, dtype, device):
    x_T = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
    r = sample(model_of(Counting()), x_T, solver=name, generator=torch.Generator().manual_seed(1), **grid_kwargs(name))
    assert r.samples.shape == x_T.shape and r.samples.dtype == dtype and r.samples.device == x_T.device
    assert torch.isfinite(r.samples).all()


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_output(name):
    m = model_of(Counting())
    a = sample(m, shape=(3, 3), seed=5, solver=name, **grid_kwargs(name)).samples
    b = sample(m, shape=(3, 3), seed=5, solver=name, **grid_kwargs(name)).samples
    assert torch.equal(a, b)
    if name in STOCHASTIC:  # and the seed matters
        c = sample(m, shape=(3, 3), seed=6, solver=name, **grid_kwargs(name)).samples
        assert not torch.equal(a, c)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("ts", [None, [1.0, 0.7, 0.4, 0.1]], ids=["steps4-to-0", "ts-to-0.1"])
def test_nfe_as_documented(name, ts):
    net = Counting()
    x_T = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r = sample(model_of(net), x_T, solver=name, seed=0, **grid_kwargs(name, ts))
    assert r.nfe == net.calls, "SampleResult.nfe must count every network call"
    to_zero = ts is None
    K = len(r.ts) - 1
    if name in ADAPTIVE:
        assert r.info["nfe"] == r.nfe
    assert r.nfe == SPECS[name].expected_nfe(K, to_zero, r.info), f"{name}: declared nfe = {SPECS[name].nfe!r}"


@pytest.mark.parametrize("name", ALL)
def test_facts_declared(name):
    """Every registry entry declares its facts (spec.py) and the registry is derived from them."""
    spec = getattr(SOLVERS[name], "spec", None)
    assert spec is not None, f"solver {name!r} has no SolverSpec: decorate it with @solver(...)"
    assert spec is SPECS[name] and spec.name == name and spec.fn is SOLVERS[name]
    check_spec(spec)
    assert (name in ADAPTIVE) == spec.adaptive and (name in STOCHASTIC) == spec.stochastic
    if not spec.adaptive and not spec.stochastic:
        assert spec.order is not None, f"{name}: deterministic solvers must declare an order"


def test_solvers_doc_table_is_rendered_from_specs():
    """docs/solvers.md's table between the markers equals ``solver_table()`` (regenerate with
    ``python -c "from sde_diffusion.solvers import update_doc; update_doc('docs/solvers.md')"``)."""
    from pathlib import Path

    from sde_diffusion.solvers import solver_table, table_in_doc

    doc = (Path(__file__).parents[1] / "docs" / "solvers.md").read_text()
    assert table_in_doc(doc) == solver_table(), "docs/solvers.md's solver table is stale: regenerate it"


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("noise", ["gaussian", "brownian"])
def test_batch_invariance(name, noise):
    """Sample k of a batch drawn with seed s equals that sample drawn alone with seed s + k."""
    if noise == "brownian" and name not in STOCHASTIC:
        pytest.skip("brownian noise only matters for stochastic solvers")
    m, seed = model_of(Counting()), 21
    batch = sample(m, shape=(3, 3), seed=seed, solver=name, noise=noise, **grid_kwargs(name), **extra(name))
    for k in range(3):
        alone = sample(m, shape=(1, 3), seed=seed + k, solver=name, noise=noise, **grid_kwargs(name), **extra(name))
        torch.testing.assert_close(batch.samples[k:k + 1], alone.samples, rtol=1e-6, atol=1e-6)
        if name in ADAPTIVE:
            assert batch.info["nfe_per_sample"][k] == alone.nfe


@pytest.mark.parametrize("name", ALL)
def test_unknown_option_is_type_error(name):
    with pytest.raises(TypeError, match="no_such_option"):
        sample(model_of(Counting()), shape=(2, 3), seed=0, solver=name, no_such_option=1, **grid_kwargs(name))


def test_unknown_solver_lists_names():
    with pytest.raises(ValueError) as e:
        sample(model_of(Counting()), shape=(2, 3), seed=0, solver="no_such_solver", steps=3)
    for name in SOLVERS:
        assert name in str(e.value)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("check_finite", [True, False])
def test_nan_from_net_is_solver_error(name, check_finite):
    m = model_of(Counting(nan_after=2), check_finite=check_finite)
    with pytest.raises(SolverError):
        sample(m, shape=(2, 3), seed=0, solver=name, **grid_kwargs(name))


def test_missing_or_inconsistent_facts_are_refused():
    """The fact checker itself can fail: each bad declaration below is a one-line ValueError (and a
    missing keyword is a TypeError at import), so no solver lands without its facts."""
    from sde_diffusion.solvers.spec import solver

    def fn(model, x, ts, *, noise, callback=None, eta: float = 0.0):
        return x

    good = dict(order=1, nfe="K", default_spacing="uniform", stochastic=False, adaptive=False, peers=())
    solver(**good)(fn)  # accepted
    assert fn.spec.options == ("eta",) and fn.spec.expected_nfe(7, True) == 7
    for change, msg in [(dict(order=None), "must declare its order"), (dict(order=0), "order"),
                        (dict(nfe="K +"), "nfe formula"), (dict(nfe="steps"), "nfe formula"),
                        (dict(default_spacing="sideways"), "default_spacing"),
                        (dict(adaptive=True), "default_spacing must be None"),
                        (dict(order_options={"no_such": 1}), "unknown option"),
                        (dict(variants=(("x", {"eta": 1.0}, 0),)), "order of variant"),
                        (dict(peers=("",)), "peers")]:
        with pytest.raises(ValueError, match=msg) as e:
            solver(**{**good, **change})(fn)
        assert "\n" not in str(e.value)
    with pytest.raises(TypeError):
        solver(order=1, nfe="K", default_spacing="uniform", stochastic=False, adaptive=False)(fn)  # no peers=
