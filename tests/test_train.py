"""Training: loss definition, overfitting, exact resume after a kill, data loaders, the CLI."""

import csv
import math

import numpy as np
import pytest
import torch

from sde_diffusion import VPSDE, linear_betas
from sde_diffusion.checkpoints import load_model, load_safetensors
from sde_diffusion.cli import main
from sde_diffusion.data import load_array, load_data, load_digits, load_digits_with_labels, load_png_folder
from sde_diffusion.nets.unet import UNet
from sde_diffusion.train import train

TINY = dict(base_channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[4], dropout=0.1, head_channels=8)




@pytest.fixture(scope="module")
def tiny_data():
    return load_digits("train")[:32]


def _run(out, data, **kw):
    args = dict(steps=6, batch=8, lr=1e-3, warmup=2, ckpt_every=3, seed=3, net=TINY, progress=False)
    args.update(kw)
    return train(data, out, **args)


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# ---- exact resume -------------------------------------------------------------------------
@pytest.mark.parametrize("killed_after", [3, 4])
def test_resume_after_kill_equals_uninterrupted(tmp_path, tiny_data, killed_after):
    full = _run(tmp_path / "full", tiny_data)
    part = _run(tmp_path / "part", tiny_data, stop_after=killed_after)  # "killed" after this step
    assert [r[0] for r in part["losses"]] == list(range(1, killed_after + 1))
    # the state on disk is the last checkpoint (step 3) even when killed after step 4
    _, meta = load_safetensors(tmp_path / "part" / "train_state.safetensors")
    assert meta["step"] == "3"
    resumed = _run(tmp_path / "part", tiny_data, resume=True)
    assert [r[0] for r in resumed["losses"]] == [1, 2, 3, 4, 5, 6]
    assert [r[1] for r in resumed["losses"]] == [r[1] for r in full["losses"]]  # bit-exact
    assert _csv(tmp_path / "part" / "loss.csv") == _csv(tmp_path / "full" / "loss.csv")
    a, _ = load_safetensors(tmp_path / "full" / "train_state.safetensors")
    b, _ = load_safetensors(tmp_path / "part" / "train_state.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("opt.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_same_seed_same_run_other_seed_differs(tmp_path, tiny_data):
    a = _run(tmp_path / "a", tiny_data, steps=3)
    b = _run(tmp_path / "b", tiny_data, steps=3)
    c = _run(tmp_path / "c", tiny_data, steps=3, seed=4)
    assert a["losses"] == b["losses"]
    assert a["losses"] != c["losses"]


def test_resume_guards(tmp_path, tiny_data):
    _run(tmp_path / "r", tiny_data, steps=3)
    with pytest.raises(ValueError, match="resume"):
        _run(tmp_path / "r", tiny_data, steps=3)
    with pytest.raises(ValueError, match="batch"):
        _run(tmp_path / "r", tiny_data, steps=6, batch=4, resume=True)
    # extending a finished run is allowed and keeps the earlier losses
    more = _run(tmp_path / "r", tiny_data, steps=5, resume=True)
    assert [r[0] for r in more["losses"]] == [1, 2, 3, 4, 5]


# ---- the loss -----------------------------------------------------------------------------
def test_first_step_loss_matches_ddpm_objective(tmp_path, tiny_data):
    """Recompute step 1's loss independently from the documented draws (seed * 1_000_003 + step)."""
    seed = 5
    res = _run(tmp_path / "l", tiny_data, steps=1, seed=seed, net=dict(TINY, dropout=0.0))
    torch.manual_seed(seed)
    net = UNet(**dict(TINY, dropout=0.0, in_channels=1, out_channels=1, image_size=8))
    g = torch.Generator().manual_seed(seed * 1_000_003 + 1)
    idx = torch.randint(0, 32, (8,), generator=g)
    n = torch.randint(0, 1000, (8,), generator=g)
    eps = torch.randn((8, 1, 8, 8), generator=g)
    ac = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[n]
    xt = ac.sqrt().float().view(-1, 1, 1, 1) * tiny_data[idx] + (1 - ac).sqrt().float().view(-1, 1, 1, 1) * eps
    with torch.no_grad():
        expected = float(((net(xt, n.float()) - eps) ** 2).mean())
    assert math.isclose(res["losses"][0][1], expected, rel_tol=1e-5)
    # a fresh UNet outputs 0, so the first loss is just mean(eps^2) ~ 1
    assert 0.7 < expected < 1.3


def test_overfit_one_batch():
    """A small UNet drives the epsilon-MSE on one fixed (x_t, t, eps) batch down by a large factor."""
    torch.manual_seed(0)
    net = UNet(**dict(TINY, dropout=0.0, in_channels=1, image_size=8))
    x0 = load_digits("train")[:4]
    eps = torch.randn(4, 1, 8, 8)
    t = torch.tensor([10, 200, 500, 900])
    ac = VPSDE.from_betas(linear_betas(1000)).alphas_cumprod[t].float().view(-1, 1, 1, 1)
    xt = ac.sqrt() * x0 + (1 - ac).sqrt() * eps
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = ((net(xt, t.float()) - eps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] / 100


def test_training_reduces_loss_and_exports_model(tmp_path, tiny_data):
    res = _run(tmp_path / "t", tiny_data, steps=40, ckpt_every=40, batch=16, lr=3e-3, warmup=5)
    first = np.mean([r[1] for r in res["losses"][:10]])
    last = np.mean([r[1] for r in res["losses"][-10:]])
    assert last < 0.6 * first
    pred = load_model(tmp_path / "t" / "model")
    assert pred.sample_shape == (1, 8, 8) and pred.prediction == "epsilon"
    assert pred.config["training"]["steps"] == 40 and pred.config["training"]["ema"] is True
    rows = _csv(tmp_path / "t" / "loss.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 41))
    assert float(rows[0]["lr"]) == pytest.approx(3e-3 / 5) and float(rows[-1]["lr"]) == pytest.approx(3e-3)


# ---- data ---------------------------------------------------------------------------------
def test_digits_split_fixed_disjoint_scaled():
    from sklearn.datasets import load_digits as sk

    xtr, ytr = load_digits_with_labels("train")
    xte, yte = load_digits_with_labels("test")
    assert xtr.shape[1:] == (1, 8, 8) and xtr.dtype == torch.float32
    assert len(xtr) + len(xte) == 1797 and 0.75 < len(xtr) / 1797 < 0.85
    assert float(xtr.min()) == -1.0 and float(xtr.max()) == 1.0
    # every split image is an sklearn image scaled 0..16 -> -1..1, and train/test do not overlap
    images = sk().images
    raw = {tuple((images[i] / 8 - 1).ravel().round(6)): i for i in range(1797)}
    tr = {raw[tuple(x.ravel().numpy().astype(np.float64).round(6))] for x in xtr}
    te = {raw[tuple(x.ravel().numpy().astype(np.float64).round(6))] for x in xte}
    assert not tr & te
    assert torch.equal(load_digits("test"), xte)  # stable across calls


def test_user_arrays(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 6, 6), dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    x = load_array(tmp_path / "a.npy")
    assert x.shape == (5, 1, 6, 6)
    torch.testing.assert_close(x, torch.from_numpy(a[:, None] / 127.5 - 1).float())
    np.savez(tmp_path / "b.npz", images=np.full((2, 3, 4, 4), 0.5, np.float32))
    torch.testing.assert_close(load_data(tmp_path / "b.npz"), torch.zeros(2, 3, 4, 4))


def test_user_png_folder(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 255 * (i % 2), np.uint8)).save(tmp_path / f"{i}.png")
    x = load_data(tmp_path)
    assert x.shape == (3, 3, 8, 8)
    assert float(x[0].max()) == -1.0 and float(x[1].min()) == 1.0


@pytest.mark.parametrize("case", ["rank", "nan", "range", "empty_npz", "garbage"])
def test_bad_arrays(tmp_path, case):
    p = tmp_path / f"bad_{case}.npy"
    if case == "rank":
        np.save(p, np.zeros((4, 4), np.float32))
    elif case == "nan":
        np.save(p, np.full((2, 1, 4, 4), np.nan, np.float32))
    elif case == "range":
        np.save(p, np.full((2, 1, 4, 4), 7.0, np.float32))
    elif case == "empty_npz":
        p = tmp_path / "bad_empty.npz"
        np.savez(p)
    else:
        p.write_bytes(b"this is not numpy")
    with pytest.raises(ValueError, match=p.name):
        load_data(p)


def test_bad_png_folders(tmp_path):
    from PIL import Image

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .png"):
        load_png_folder(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(mixed / "b.png")
    with pytest.raises(ValueError, match="b.png"):
        load_png_folder(mixed)
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(broken / "a.png")
    (broken / "z.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="z.png"):
        load_png_folder(broken)
    with pytest.raises(FileNotFoundError):
        load_data(tmp_path / "nope.npy")


# ---- CLI ----------------------------------------------------------------------------------
def test_cli_train_and_resume(tmp_path, capsys):
    np.save(tmp_path / "d.npy", np.random.default_rng(1).integers(0, 256, (12, 8, 8), dtype=np.uint8))
    base = ["train", "--data", str(tmp_path / "d.npy"), "--out", str(tmp_path / "o"), "--batch", "4", "--ckpt-every", "2",
            "--base-channels", "8", "--channel-mults", "1,2", "--num-res-blocks", "1", "--attention-resolutions", "4",
            "--no-progress", "--seed", "1"]
    assert main(base + ["--steps", "2"]) == 0
    assert "step 2" in capsys.readouterr().out
    assert main(base + ["--steps", "2"]) == 2  # refuses to overwrite without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(base + ["--steps", "4", "--resume"]) == 0
    rows = _csv(tmp_path / "o" / "loss.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert load_model(tmp_path / "o" / "model").sample_shape == (1, 8, 8)
    assert main(["train", "--data", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "x"), "--steps", "1"]) == 2
    assert "missing.npy" in capsys.readouterr().err


# ---- class-conditional training (classifier-free guidance) --------------------------------
def test_conditional_resume_exact_and_condition_dropout(tmp_path):
    """A conditional run resumed after a kill equals the uninterrupted one bit for bit, and its labels
    reach the net: the exported model declares its classes and null class, and cond_drop = 0 vs 0.5
    gives different losses from the same seed (the dropped labels are drawn from the step's generator)."""
    x, y = load_digits_with_labels("train")
    data = (x[:32], y[:32])
    full = _run(tmp_path / "full", data, conditional=True)
    _run(tmp_path / "part", data, conditional=True, stop_after=4)
    resumed = _run(tmp_path / "part", data, conditional=True, resume=True)
    assert [r[1] for r in resumed["losses"]] == [r[1] for r in full["losses"]]
    m = load_model(tmp_path / "full" / "model")
    assert m.conditioning == {"class_labels": {"num_classes": int(y[:32].max()) + 1, "null_class": int(y[:32].max()) + 1}}
    other = _run(tmp_path / "drop", data, conditional=True, cond_drop=0.5)
    assert [r[1] for r in other["losses"]] != [r[1] for r in full["losses"]]
    with pytest.raises(ValueError, match="cond_drop"):
        _run(tmp_path / "bad", data, conditional=True, cond_drop=1.0)
