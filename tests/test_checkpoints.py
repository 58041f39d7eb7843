"""Checkpoints: bit-exact round trip, corrupt/missing/mismatched files, shipped assets, diffusers hook."""

import json

import pytest
import torch

from sde_diffusion import VPSDE, cosine_betas, linear_betas
from sde_diffusion.checkpoints import load_model, save_checkpoint, shipped_models
from sde_diffusion.nets.unet import UNet

CFG = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,), image_size=8,
           dropout=0.1, head_channels=8)




def _net(seed=0, **kw):
    torch.manual_seed(seed)
    net = UNet(**dict(CFG, **kw))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


@pytest.fixture
def saved(tmp_path):
    net = _net()
    save_checkpoint(tmp_path / "m", net, data={"shape": [1, 8, 8], "dataset": "test"}, training={"steps": 7, "ema": True})
    return net, tmp_path / "m"


def test_round_trip_bit_exact(saved):
    net, folder = saved
    for where in (folder, folder / "model.safetensors", folder / "config.json", str(folder)):
        pred = load_model(where)
        sd = pred.net.state_dict()
        assert sd.keys() == net.state_dict().keys()
        for k, v in net.state_dict().items():
            assert torch.equal(sd[k], v), k
    assert pred.sample_shape == (1, 8, 8) and pred.prediction == "epsilon"
    assert not pred.net.training  # eval mode: dropout off
    ref = VPSDE.from_betas(linear_betas(1000))
    assert torch.equal(pred.sde.alphas_cumprod, ref.alphas_cumprod)
    assert pred.config["training"] == {"steps": 7, "ema": True}
    x = torch.randn(3, 1, 8, 8)
    net.eval()
    with torch.no_grad():
        assert torch.equal(pred.net(x, torch.tensor([1.0, 2.0, 3.0])), net(x, torch.tensor([1.0, 2.0, 3.0])))


def test_round_trip_other_schedule_and_channels(tmp_path):
    net = _net(in_channels=3, image_size=16)
    save_checkpoint(tmp_path, net, schedule={"kind": "cosine", "num_train_steps": 200}, prediction="v",
                    data={"shape": [3, 16, 16]})
    pred = load_model(tmp_path)
    assert pred.sample_shape == (3, 16, 16) and pred.prediction == "v"
    assert torch.equal(pred.sde.betas, cosine_betas(200))


def test_truncated_weights(saved):
    _, folder = saved
    w = folder / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_model(folder)
    # even without the recorded checksum, the truncated file is rejected
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["weights"]["sha256"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="truncated"):
        load_model(folder)


def test_corrupted_bytes_detected(saved):
    _, folder = saved
    w = folder / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF  # same size, valid header, one weight changed
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_model(folder)


def test_garbage_header(saved):
    _, folder = saved
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["weights"].pop("sha256")
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError):
        load_model(folder)


def test_missing_files(saved):
    _, folder = saved
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(folder)
    with pytest.raises(FileNotFoundError):
        load_model(folder / "nowhere")


def test_mismatched_architecture(saved, tmp_path):
    net, folder = saved
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architecture"]["config"]["base_channels"] = 16  # weights are for 8
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match"):
        load_model(folder)
    # weights of another model under a valid checksum-free config
    other = tmp_path / "other"
    save_checkpoint(other, _net(num_res_blocks=2), data={"shape": [1, 8, 8]})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architecture"]["config"]["base_channels"] = 8
    cfg["weights"].pop("sha256")
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="do not match"):
        load_model(folder)


@pytest.mark.parametrize("edit", ["json", "format", "schedule", "prediction", "shape"])
def test_bad_config(saved, edit):
    _, folder = saved
    c = folder / "config.json"
    cfg = json.loads(c.read_text())
    if edit == "json":
        c.write_text("{not json")
    else:
        if edit == "format":
            cfg["format"] = "something-else"
        elif edit == "schedule":
            cfg["schedule"]["kind"] = "quadratic"
        elif edit == "prediction":
            cfg["prediction"] = "noise-ish"
        else:
            cfg["data"]["shape"] = [8, 8]
        c.write_text(json.dumps(cfg))
    with pytest.raises(ValueError):
        load_model(folder)


def test_unknown_name_lists_shipped():
    with pytest.raises(ValueError) as e:
        load_model("no-such-model")
    assert "shipped" in str(e.value)
    for name in shipped_models():
        assert name in str(e.value)
    assert "digits_classifier" not in shipped_models()


def test_diffusers_folder_hook(tmp_path, monkeypatch):
    import sde_diffusion.interop.diffusers as interop_diffusers

    calls = []
    monkeypatch.setattr(interop_diffusers, "load_diffusers_folder", lambda p, device="cpu": calls.append(p) or "sentinel")
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    assert load_model(tmp_path / "pipe") == "sentinel"
    (tmp_path / "unetonly" / "unet").mkdir(parents=True)
    (tmp_path / "unetonly" / "unet" / "config.json").write_text("{}")
    assert load_model(tmp_path / "unetonly") == "sentinel"
    assert calls == [tmp_path / "pipe", tmp_path / "unetonly"]


def test_corrupt_train_state_refuses_resume(tmp_path):
    from sde_diffusion.data import load_digits
    from sde_diffusion.train import train

    kw = dict(steps=2, batch=4, ckpt_every=2, net=dict(base_channels=8, channel_mults=[1, 2], head_channels=8), progress=False)
    train(load_digits()[:8], tmp_path, **kw)
    st = tmp_path / "train_state.safetensors"
    st.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(ValueError, match="train_state"):
        train(load_digits()[:8], tmp_path, resume=True, **dict(kw, steps=4))


# ---- shipped assets -----------------------------------------------------------------------
def test_shipped_digits_model():
    pred = load_model("digits")
    assert "digits" in shipped_models()
    assert pred.sample_shape == (1, 8, 8) and pred.prediction == "epsilon"
    assert pred.sde.num_train_steps == 1000
    assert pred.config["training"]["ema"] is True and pred.config["training"]["steps"] > 0
    from sde_diffusion.checkpoints import ASSETS_DIR

    assert (ASSETS_DIR / "digits" / "model.safetensors").stat().st_size <= 10 * 2**20
    with torch.no_grad():
        eps = pred.eps(torch.randn(4, 1, 8, 8), 0.5)
    assert eps.shape == (4, 1, 8, 8) and torch.isfinite(eps).all()


def test_shipped_classifier_accuracy():
    from sde_diffusion.classifier import load_classifier
    from sde_diffusion.data import load_digits_with_labels

    clf = load_classifier()
    x, y = load_digits_with_labels("test")
    with torch.no_grad():
        logits, feats = clf.logits(x), clf.features(x)
    assert logits.shape == (len(y), 10) and feats.shape == (len(y), 128)
    assert float((logits.argmax(1) == y).float().mean()) >= 0.97
    with pytest.raises(ValueError):
        clf.logits(torch.zeros(2, 1, 16, 16))


def test_shipped_name_wins_over_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_checkpoint(tmp_path / "digits", _net(), data={"shape": [1, 8, 8]}, training={"steps": 1})
    assert load_model("digits").config["training"]["steps"] > 1  # the shipped model, not ./digits
    assert load_model("./digits").config["training"]["steps"] == 1
