"""The shipped class-conditional digits model (issue 12): loads with its classes, the README's one-line
CLI (no --steps: the default 20) gives exactly the Python call's guided samples, and guidance works
on the real net (the classifier's bar itself is a benchmark: benchmarks/cond_quality.py, docs/model.md)."""

import numpy as np
import torch

from sde_diffusion.checkpoints import load_model
from sde_diffusion.classifier import load_classifier
from sde_diffusion.cli import main
from sde_diffusion.sampling import sample


def test_digits_cond_loads_with_classes():
    m = load_model("digits-cond")
    assert m.conditioning == {"class_labels": {"num_classes": 10, "null_class": 10}}
    assert m.sample_shape == (1, 8, 8)


def test_cli_one_liner_equals_python_call(tmp_path):
    out = tmp_path / "sevens.npz"
    rc = main(["sample", "--model", "digits-cond", "--class", "7", "--guidance", "2", "-n", "6", "--out", str(out),
               "--no-progress"])
    assert rc in (0, None)
    with np.load(out) as z:
        cli = torch.from_numpy(z["samples"])
        assert (z["labels"] == 7).all()
    m = load_model("digits-cond")
    py = sample(m, shape=(6, 1, 8, 8), solver="dpmpp_2m", steps=20, seed=0,
                cond={"class_labels": torch.full((6,), 7)}, guidance=2.0).samples
    torch.testing.assert_close(cli, py.to(cli.dtype), rtol=0, atol=1e-6)
    # the samples are sevens to the shipped classifier
    pred = load_classifier().eval().logits(py).argmax(1)
    assert (pred == 7).float().mean() >= 5 / 6
