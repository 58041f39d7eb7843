"""``resolve_model`` (one resolver for every command) and the ``validation`` helpers."""

from __future__ import annotations

import math

import pytest
import torch

from sde_diffusion import NoisePredictor
from sde_diffusion.resolve import gmm_ring, resolve_model
from sde_diffusion.validation import choice, finite_float, positive_int, probability


def test_gmm_is_the_exact_ring_mixture():
    m = resolve_model("gmm")
    gm, _ = gmm_ring()
    assert isinstance(m, NoisePredictor) and m.sample_shape == (2,)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m.eps(x, 0.3), gm.eps(x, 0.3, m.sde))
    assert torch.allclose(gm.means.norm(dim=1), torch.full((8,), 0.8, dtype=torch.float64))


def test_module_attr_and_passthrough(tmp_path, monkeypatch):
    (tmp_path / "my_net_mod.py").write_text(
        "import torch\nclass Net(torch.nn.Module):\n    sample_shape = (3,)\n"
        "    def forward(self, x, t):\n        return torch.zeros_like(x)\nnet = Net()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    m = resolve_model("my_net_mod:net")
    assert isinstance(m, NoisePredictor) and m.sample_shape == (3,) and m.config is None
    assert resolve_model(m) is m
    m2 = resolve_model(f"{tmp_path / 'my_net_mod.py'}:net")
    assert m2.sample_shape == (3,)


def test_shipped_name_and_folder_carry_their_config():
    m = resolve_model("digits")
    assert m.config is not None and m.config["weights"]["sha256"]
    assert m.sample_shape == (1, 8, 8)


def test_bad_specs_are_one_line_errors(tmp_path):
    for spec, err in ((3, ValueError), ("no-such-model", ValueError), (str(tmp_path / "missing" / "x"), FileNotFoundError),
                      ("no_such_module_xyz:net", ModuleNotFoundError)):
        with pytest.raises(err) as e:
            resolve_model(spec)
        assert "\n" not in str(e.value)


def test_validation_helpers():
    assert positive_int("k", 3) == 3 and positive_int("k", 0, low=0) == 0
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match=r"k must be an integer >= 1, got"):
            positive_int("k", bad)
    assert probability("p", 0) == 0.0 and probability("p", 1) == 1.0
    for bad in (-0.1, 1.5, math.nan, True, "0.5"):
        with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\]"):
            probability("p", bad)
    assert finite_float("eta", 0, 0) == 0.0 and finite_float("x", -3.5) == -3.5
    for bad, kw in ((math.inf, {}), (math.nan, {}), (True, {}), (-1e-9, dict(low=0)), (0, dict(low=0, strict=True)),
                    (2.0, dict(high=1.0))):
        with pytest.raises(ValueError, match="must be a finite number"):
            finite_float("eta", bad, **kw)
    assert choice("v", "bh2", ("bh1", "bh2")) == "bh2"
    with pytest.raises(ValueError, match="v must be one of bh1, bh2, got 'bh3'"):
        choice("v", "bh3", ("bh1", "bh2"))
    with pytest.raises(ValueError):
        choice("order", True, (1, 2, 3))  # True == 1, but not an order
