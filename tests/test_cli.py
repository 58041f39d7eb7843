"""The command line as a user meets it: every bad input is one line on stderr with exit code 2 and
leaves nothing behind; output folders are owned by one job; FID-ready outputs round-trip; progress
bars count steps / network evaluations.

The CLI runs in-process (``sde_diffusion.cli.main``) in a temporary working directory.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from sde_diffusion.cli import main
from sde_diffusion.commands.common import OutputLock

# A tiny model file: eps = 0.1 x (cheap, deterministic), 1x4x4 samples; a NaN net; a class-conditional net.
MODELS = textwrap.dedent('''
    import torch
    from sde_diffusion import NoisePredictor, VPSDE, linear_betas

    def _sde():
        return VPSDE.from_betas(linear_betas(1000))

    def tiny():
        return NoisePredictor(lambda x, t: 0.1 * x, _sde(), sample_shape=(1, 4, 4))

    def digits_shaped():
        return NoisePredictor(lambda x, t: 0.1 * x, _sde(), sample_shape=(1, 8, 8))

    def nan():
        return NoisePredictor(lambda x, t: torch.full_like(x, float("nan")), _sde(), sample_shape=(1, 4, 4))

    def cond_net(x, t, class_labels=None):
        if class_labels is None:
            return 0.1 * x
        return 0.1 * x + 0.05 * class_labels.to(x.dtype).view(-1, 1, 1, 1)

    def cond():
        return NoisePredictor(cond_net, _sde(), sample_shape=(1, 4, 4),
                              conditioning={"class_labels": {"num_classes": 3, "null_class": 3}})
''')


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A scratch working directory holding models.py, a file and a folder to trip over."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SDE_DIFFUSION_LOG_DIR", str(tmp_path / "_logs"))
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "adir.png").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "000000.png").write_bytes(b"old run")
    return tmp_path


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _run(argv, capsys):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


TINY = ["--model", "models.py:tiny"]

# (argv, a fragment the one-line message must contain)
BAD = [
    # sample: arguments
    (["sample", *TINY, "--steps", "0", "--out", "x.png"], "--steps must be >= 1"),
    (["sample", *TINY, "--steps", "-5", "--out", "x.png"], "--steps must be >= 1"),
    (["sample", *TINY, "--steps", "2.5", "--out", "x.png"], "invalid int value"),
    (["sample", *TINY, "--steps", "2", "--spacing", "foo", "--out", "x.png"], "invalid choice 'foo'; valid: uniform"),
    (["sample", *TINY, "--solver", "foo", "--steps", "2", "--out", "x.png"], "unknown solver 'foo'; valid:"),
    (["sample", *TINY, "--solver", "ode", "--steps", "2", "--out", "x.png"], "does not apply to the adaptive solver"),
    (["sample", *TINY, "--steps", "2", "--eta", "0.5", "--out", "x.png"], "does not take --eta"),
    (["sample", *TINY, "--solver", "ddim", "--steps", "2", "--eta", "5", "--out", "x.png"], "--eta must be"),
    (["sample", *TINY, "--steps", "2", "--option", "nosuch=1", "--out", "x.png"], "does not take --option nosuch"),
    (["sample", *TINY, "--steps", "2", "--option", "order", "--out", "x.png"], "KEY=VALUE"),
    (["sample", *TINY, "--steps", "2", "-n", "0", "--out", "x.png"], "-n must be >= 1, got 0"),
    (["sample", *TINY, "--steps", "2", "--n", "-3", "--out", "x.png"], "--n must be >= 1, got -3"),
    (["sample", *TINY, "--steps", "2", "--batch-size", "0", "--out", "x.png"], "--batch-size must be >= 1"),
    (["sample", *TINY, "--steps", "2", "--seed", "-1", "--out", "x.png"], "--seed must be an integer in [0,"),
    (["sample", *TINY, "--steps", "2", "--seed", str(2**63), "--out", "x.png"], "--seed must be an integer in [0,"),
    (["sample", *TINY, "--steps", "2", "--seed", str(2**64), "--out", "x.png"], "--seed must be an integer in [0,"),
    (["sample", *TINY, "--steps", "2", "--seed", str(2**63 - 2), "-n", "4", "--out", "x.png"], "seed + k < 2^63"),
    (["sample", *TINY, "--steps", "2", "--threads", "0", "--out", "x.png"], "--threads must be an integer >= 1"),
    (["sample", *TINY, "--steps", "2", "--device", "foo", "--out", "x.png"], "--device 'foo' is not a device"),
    (["sample", *TINY, "--steps", "2", "--device", "cuda:99", "--out", "x.png"], "--device cuda:99"),
    (["sample", *TINY, "--steps", "2", "--out", "x.jpg"], "--out must end in .png"),
    (["sample", *TINY, "--steps", "2", "--out", "noext"], "--out must end in .png"),
    (["sample", *TINY, "--steps", "2", "--out", "afile/x.png"], "afile is a file, not a folder"),
    (["sample", *TINY, "--steps", "2", "--out", "adir.png"], "is an existing folder"),
    (["sample", *TINY, "--steps", "2", "--out", "full/"], "already holds 1 PNG files"),
    (["sample", *TINY, "--steps", "2", "--out", "afile/"], "exists and is a file"),
    (["sample", *TINY, "--steps", "2", "--class", "x", "--out", "x.png"], "--class must be a class label"),
    (["sample", *TINY, "--steps", "2", "--class", "-1", "--out", "x.png"], "--class labels must be integers >= 0"),
    (["sample", *TINY, "--steps", "2", "--guidance", "2", "--out", "x.png"], "--guidance needs --class"),
    (["sample", *TINY, "--steps", "2", "--class", "1", "--guidance", "nan", "--out", "x.png"], "--guidance must be"),
    (["sample", *TINY, "--steps", "2", "--class", "1", "--guidance", "-1", "--out", "x.png"], "--guidance must be"),
    (["sample", *TINY, "--steps", "2", "--class", "1", "--guidance-rescale", "2", "--out", "x.png"],
     "--guidance-rescale must be"),
    (["sample", *TINY, "--steps", "2", "--class", "1", "--guidance-interval", "0.5,0.2", "--out", "x.png"],
     "--guidance-interval must be LO,HI"),
    (["sample", *TINY, "--steps", "2", "--class", "1", "--guidance-interval", "0,2", "--out", "x.png"],
     "--guidance-interval must be LO,HI"),
    # sample: what needs the model (checked after loading, before any network call)
    (["sample", "--model", "./nope", "--steps", "2", "--out", "x.png"], "not found"),
    (["sample", *TINY, "--steps", "5000", "--spacing", "trailing", "--out", "x.png"], "cannot exceed"),
    (["sample", *TINY, "--steps", "2", "--class", "3", "--out", "x.png"], "has no classes"),
    (["sample", "--model", "models.py:cond", "--steps", "2", "--class", "0,3", "--out", "x.png"],
     "--class 3 is outside the model's classes 0..2"),
    # sample: faults during the work
    (["sample", "--model", "models.py:nan", "--steps", "2", "--out", "sub/x.png", "--no-progress"], "NaN"),
    # nll
    (["nll", "--model", "models.py:digits_shaped", "--n", "0"], "--n must be >= 1"),
    (["nll", "--model", "models.py:digits_shaped", "-n", "2", "--rtol", "10"], "--rtol 10 is too loose"),
    (["nll", "--model", "models.py:digits_shaped", "-n", "2", "--rtol", "0"], "--rtol must be"),
    (["nll", "--model", "models.py:digits_shaped", "-n", "2", "--atol", "nan"], "--atol must be"),
    (["nll", "--model", "models.py:digits_shaped", "-n", "2", "--num-bins", "0"], "--num-bins must be >= 2"),
    (["nll", "--model", "models.py:digits_shaped", "-n", "2", "--num-bins", "1"], "--num-bins must be >= 2"),
    (["nll", "--model", "models.py:digits_shaped", "-n", "2", "--t-end", "2"], "--t-end must be"),
    (["nll", "--model", "models.py:digits_shaped", "-n", "2", "--probes", "0"], "--probes must be >= 1"),
    (["nll", "--model", "models.py:digits_shaped", "-n", "2", "--trace", "foo"], "valid: exact, hutchinson"),
    (["nll", "--model", "models.py:digits_shaped", "-n", "2", "--method", "foo"], "unknown method 'foo'"),
    (["nll", "--model", "models.py:digits_shaped", "--data", "afile", "--split", "train"], "--split applies to --data digits"),
    (["nll", "--model", "models.py:digits_shaped", "-n", "2", "--elbo-steps", "5000"], "--elbo-steps 5000 exceeds"),
    (["nll", "--model", "models.py:digits_shaped", "-n", "2", "--seed", "-1"], "--seed must be"),
    (["nll", "--model", "models.py:digits_shaped", "-n", "2", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["nll", "--model", "models.py:digits_shaped", "-n", "100000"], "exceeds the"),
    # train
    (["train", "--out", "r", "--threads", "0"], "--threads must be an integer >= 1"),
    (["train", "--out", "r", "--resume"], "holds no checkpoint"),
    (["train", "--out", "afile"], "exists and is a file"),
    (["train", "--out", "afile/r"], "afile is a file, not a folder"),
    (["train", "--out", "r", "--steps", "0"], "--steps must be >= 1"),
    (["train", "--out", "r", "--batch", "0"], "--batch must be >= 1"),
    (["train", "--out", "r", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["train", "--out", "r", "--lr", "-1"], "--lr must be"),
    (["train", "--out", "r", "--ema", "1.5"], "--ema must be"),
    (["train", "--out", "r", "--dropout", "2"], "--dropout must be"),
    (["train", "--out", "r", "--cond-drop", "1"], "--cond-drop must be"),
    (["train", "--out", "r", "--channel-mults", "1,x"], "expected comma-separated integers"),
    (["train", "--out", "r", "--channel-mults", ""], "expected at least one channel multiplier"),
    (["train", "--out", "r", "--attention-resolutions", "0"], "expected comma-separated integers >= 1"),
    (["train", "--out", "r", "--seed", "-1"], "--seed must be"),
    (["train", "--out", "r", "--ckpt-minutes", "-1"], "--ckpt-minutes must be"),
    (["train", "--out", "r", "--device", "foo"], "not a device"),
    (["train", "--out", "r", "--data", "missing.npy"], "not found"),
    (["train", "--out", "r", "--data", "afile"], ""),
    # the top level
    ([], "give a command"),
    (["nosuch"], "invalid choice"),
    (["solvers", "--width", "3"], "--width must be >= 40"),
]


@pytest.mark.parametrize("argv,fragment", BAD, ids=[" ".join(a)[:80] for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(work, capsys, argv, fragment):
    before = _tree(work)
    rc, out, err = _run(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("sde-diffusion"), err
    assert "Traceback" not in err
    assert fragment in lines[0], lines[0]
    assert _tree(work) == before, "partial output left behind"


def test_internal_error_is_one_line_with_a_traceback_file(work, capsys, monkeypatch):
    """A programming error (here a TypeError inside the library) is not dressed up as a user error:
    exit 1, one line, the full traceback in a file."""
    import sde_diffusion.sampling as sampling

    def broken(*a, **k):
        raise TypeError("boom inside the library")

    monkeypatch.setattr(sampling, "sample", broken)
    rc, out, err = _run(["sample", *TINY, "--steps", "2", "--out", "x.png", "--no-progress"], capsys)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "internal error: TypeError: boom inside the library" in lines[0]
    logs = list((work / "_logs").glob("sde-diffusion-sample-*.log"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text() and str(logs[0]) in lines[0]
    assert not (work / "x.png").exists()


def test_version_and_help(capsys):
    from sde_diffusion import __version__

    rc, out, _ = _run(["--version"], capsys)
    assert rc == 0 and out.strip() == f"sde-diffusion {__version__}"
    rc, out, _ = _run(["sample", "--help"], capsys)
    assert rc == 0
    for flag in ("-n N, --num-samples N", "--batch-size B", "--seed SEED", "--device DEVICE", "--out PATH",
                 "--class LABELS", "--guidance W", "--guidance-rescale PHI", "--guidance-interval LO,HI"):
        assert flag in out, flag
    assert "(default: 64)" in out and "(default: 256)" in out
    assert "--n " not in out  # the old spelling is a hidden alias


@pytest.mark.parametrize("cmd", ["sample", "nll", "train", "solvers"])
def test_every_flag_has_help(cmd):
    from sde_diffusion.cli import build_parser

    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    p = sub.choices[cmd]
    for a in p._actions:
        if a.option_strings and a.help is not __import__("argparse").SUPPRESS:
            assert a.help, f"{cmd} {a.option_strings} has no help"


def test_shared_flags_are_spelled_the_same():
    from sde_diffusion.cli import build_parser

    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    opts = {c: {o for a in sub.choices[c]._actions for o in a.option_strings} for c in ("sample", "nll", "train")}
    for c in ("sample", "nll", "train"):
        assert {"--seed", "--device", "--batch-size", "--threads"} <= opts[c], c
    for c in ("sample", "nll"):
        assert {"-n", "--num-samples"} <= opts[c]
    assert "--out" in opts["sample"] and "--out" in opts["train"]


def test_solvers_listing_wraps_and_does_not_cut(capsys):
    rc, out, _ = _run(["solvers", "--width", "60"], capsys)
    assert rc == 0
    assert all(len(line) <= 60 for line in out.splitlines())
    text = " ".join(line.strip() for line in out.splitlines())
    assert "score_sde's get_ode_sampler (RK45, rtol = atol = 1e-5, then a denoising step)" in text
    assert "``" not in out


# ---- outputs --------------------------------------------------------------------------------
def test_fid_formats_round_trip(work, capsys):
    """.npz arr_0 = uint8 NHWC pixels of 'samples' (round((x + 1) / 2 * 255), clipped); the PNG
    folder holds the same pixels, one file per sample; .PNG suffix accepted; no temp files left."""
    from PIL import Image

    base = [*TINY, "--steps", "2", "-n", "5", "--batch-size", "2", "--seed", "3", "--no-progress"]
    assert _run(["sample", *base, "--out", "s.NPZ"], capsys)[0] == 0
    assert _run(["sample", *base, "--out", "pngs/"], capsys)[0] == 0
    assert _run(["sample", *base, "--out", "grid.PNG"], capsys)[0] == 0
    z = np.load(work / "s.NPZ")
    x, u = z["samples"], z["arr_0"]
    assert x.shape == (5, 1, 4, 4) and x.dtype == np.float32
    assert u.shape == (5, 4, 4, 1) and u.dtype == np.uint8
    want = np.clip(np.floor((x.astype(np.float64) + 1.0) / 2.0 * 255.0 + 0.5), 0, 255).astype(np.uint8)
    assert np.array_equal(u, want.transpose(0, 2, 3, 1))
    files = sorted((work / "pngs").iterdir())
    assert [f.name for f in files] == [f"{k:06d}.png" for k in range(5)]
    for k, f in enumerate(files):
        img = Image.open(f)
        assert img.mode == "L" and img.size == (4, 4)
        assert np.array_equal(np.asarray(img), u[k, :, :, 0])
    assert Image.open(work / "grid.PNG").format == "PNG"
    leftovers = [p for p in work.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == []


def test_to_uint8_exact_values():
    from sde_diffusion.images import to_uint8

    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 1.0 / 255, 1.0, 3.0]).view(1, 1, 1, 7)
    assert to_uint8(x).reshape(-1).tolist() == [0, 0, 64, 128, 128, 255, 255]
    assert to_uint8(torch.zeros(1, 1, 1, 1) + 8, value_range=(0, 16)).item() == 128
    with pytest.raises(ValueError, match="lo < hi"):
        to_uint8(x, value_range=(1, 1))


def test_sample_batch_size_does_not_change_results(work, capsys):
    base = [*TINY, "--steps", "3", "-n", "5", "--seed", "7", "--no-progress"]
    assert _run(["sample", *base, "--batch-size", "5", "--out", "a.npz"], capsys)[0] == 0
    assert _run(["sample", *base, "--batch-size", "2", "--out", "b.npz"], capsys)[0] == 0
    assert np.array_equal(np.load("a.npz")["samples"], np.load("b.npz")["samples"])


# ---- output folders are owned -----------------------------------------------------------------
def test_second_job_on_a_locked_output_is_refused(work, capsys):
    (work / "r").mkdir()
    with OutputLock(work / "r", folder=True, command="the first job"):
        rc, _, err = _run(["train", "--out", "r", "--steps", "1"], capsys)
        assert rc == 2 and len(err.strip().splitlines()) == 1
        assert "is in use by another job" in err and f"pid {os.getpid()}" in err and "the first job" in err
        rc, _, err = _run(["sample", *TINY, "--steps", "2", "--out", "r/", "--no-progress"], capsys)
        assert rc == 2 and "is in use" in err
    with OutputLock(work / "s.png", folder=False):
        rc, _, err = _run(["sample", *TINY, "--steps", "2", "--out", "s.png", "--no-progress"], capsys)
        assert rc == 2 and "is in use" in err
    assert not (work / "s.png").exists() and list((work / "r").iterdir()) == []
    # once released, the same jobs run, and leave no lock behind
    assert _run(["sample", *TINY, "--steps", "2", "--out", "s.png", "--no-progress"], capsys)[0] == 0
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []


def test_lock_held_by_another_process_and_stale_lock(work, capsys):
    code = ("import sys, time; from pathlib import Path; from sde_diffusion.commands.common import OutputLock; "
            "l = OutputLock(Path(sys.argv[1]), folder=True, command='holder').acquire(); print('held', flush=True); "
            "time.sleep(60)")
    (work / "o").mkdir()
    proc = subprocess.Popen([sys.executable, "-c", code, str(work / "o")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        rc, _, err = _run(["sample", *TINY, "--steps", "2", "--out", "o/", "--no-progress"], capsys)
        assert rc == 2 and f"pid {proc.pid}" in err and "holder" in err
    finally:
        proc.kill()
        proc.wait()
    # the holder died without cleaning up: its lock file stays, but the lock is free and taken over
    lock = work / "o" / ".sde-diffusion.lock"
    assert json.loads(lock.read_text())["pid"] == proc.pid
    rc, _, err = _run(["sample", *TINY, "--steps", "2", "-n", "2", "--out", "o/", "--no-progress"], capsys)
    assert rc == 0, err
    assert "taking over" in err
    assert sorted(p.name for p in (work / "o").iterdir()) == ["000000.png", "000001.png"]


def test_concurrent_grid_writes_never_collide(tmp_path):
    """Unique temp names: many writers of one path never fail and leave one complete PNG."""
    import threading

    from PIL import Image

    from sde_diffusion.images import save_grid

    errors = []

    def writer(v):
        try:
            for _ in range(20):
                save_grid(torch.full((4, 1, 4, 4), v), tmp_path / "g.png")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=writer, args=(v,)) for v in (-1.0, 0.0, 1.0)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert errors == []
    Image.open(tmp_path / "g.png").load()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]


# ---- progress ---------------------------------------------------------------------------------
def test_sample_progress_counts_steps(work, capsys):
    rc, _, err = _run(["sample", *TINY, "--steps", "3", "-n", "5", "--batch-size", "2", "--out", "p.npz"], capsys)
    assert rc == 0
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "9/9" in final and "step" in final and "5/5 img" in final  # 3 batches x 3 steps


def test_sample_progress_counts_nfe_for_adaptive_solvers(work, capsys):
    rc, out, err = _run(["sample", *TINY, "--solver", "ode", "--option", "rtol=1e-3", "--option", "atol=1e-3",
                         "-n", "2", "--out", "p.npz"], capsys)
    assert rc == 0
    nfe = int(np.load("p.npz")["nfe"])
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert f"{nfe}NFE" in final.replace(" ", "")


def test_nll_progress_counts_network_evaluations(work, capsys):
    rc, out, err = _run(["nll", "--model", "models.py:digits_shaped", "-n", "4", "--batch-size", "2", "--rtol", "1e-2",
                         "--atol", "1e-2", "--elbo-steps", "0"], capsys)
    assert rc == 0, err
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "NFE" in final and "batch" not in final and "4/4 img" in final


def test_huge_jobs_warn_first(work, capsys):
    rc, _, err = _run(["nll", "--model", "models.py:digits_shaped", "-n", "1", "--rtol", "1e-9", "--atol", "1e-2",
                       "--elbo-steps", "0", "--no-progress", "--method", "euler"], capsys)
    # euler ignores the tolerances, so this is fast; the warning comes before the work
    assert "warning: --rtol/--atol below 1e-08" in err


def test_steps_far_above_training_steps_warn(work, capsys, monkeypatch):
    import sde_diffusion.commands.sample as S

    monkeypatch.setattr(S, "_HUGE_STEPS_FACTOR", 0.001)  # 1000 training steps -> warn above 1 step
    rc, _, err = _run(["sample", *TINY, "--steps", "2", "-n", "1", "--out", "w.npz", "--no-progress"], capsys)
    assert rc == 0 and "warning: --steps 2 is more than" in err


# ---- training ---------------------------------------------------------------------------------
def test_train_resume_checkpoint_minutes_and_divergence(work, capsys):
    arch = ["--base-channels", "8", "--channel-mults", "1", "--attention-resolutions", "8", "--no-progress",
            "--batch-size", "4"]
    rc, _, err = _run(["train", "--out", "r", "--steps", "2", "--ckpt-every", "100", *arch], capsys)
    assert rc == 0, err
    rc, _, err = _run(["train", "--out", "r", "--steps", "3", "--ckpt-every", "100", *arch], capsys)
    assert rc == 2 and "add --resume" in err
    # a checkpoint every 1e-6 minutes: every step is saved although --ckpt-every is 100
    rc, _, err = _run(["train", "--out", "r", "--steps", "4", "--ckpt-every", "100", "--ckpt-minutes", "1e-6",
                       "--resume", *arch], capsys)
    assert rc == 0, err
    from safetensors import safe_open

    with safe_open(str(work / "r" / "train_state.safetensors"), "pt") as f:
        assert f.metadata()["step"] == "4"
    assert not (work / "r" / ".sde-diffusion.lock").exists()
    rc, _, err = _run(["train", "--out", "d", "--steps", "5", "--lr", "1e6", "--warmup", "0", *arch], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and lines[-1].startswith("sde-diffusion train: error: training diverged")
    assert "Traceback" not in err


# ---- conditioning -----------------------------------------------------------------------------
def _has_cond():
    from sde_diffusion.sampling import sample

    return "cond" in inspect.signature(sample).parameters


@pytest.mark.skipif(not _has_cond(), reason="sample() has no cond= yet")
def test_class_and_guidance_reach_sample(work, capsys):
    """--class 0,2 is assigned round-robin; the CLI's samples equal the API's with the same labels."""
    from sde_diffusion.interop.callables import load_callable
    from sde_diffusion.sampling import sample

    rc, _, err = _run(["sample", "--model", "models.py:cond", "--steps", "3", "-n", "5", "--batch-size", "2",
                       "--class", "0,2", "--guidance", "3", "--guidance-interval", "0.2,0.9", "--seed", "1",
                       "--out", "c.npz", "--no-progress"], capsys)
    assert rc == 0, err
    z = np.load("c.npz")
    assert z["labels"].tolist() == [0, 2, 0, 2, 0]
    model = load_callable("models.py:cond")
    y = torch.tensor([0, 2, 0, 2, 0])
    res = sample(model, shape=(5, 1, 4, 4), steps=3, seed=1, cond={"class_labels": y}, guidance=3.0,
                 guidance_interval=(0.2, 0.9))
    np.testing.assert_allclose(z["samples"], res.samples.numpy(), rtol=0, atol=1e-6)
    # without --class: unconditional through the null class; differs from the guided run
    assert _run(["sample", "--model", "models.py:cond", "--steps", "3", "-n", "5", "--seed", "1", "--out", "u.npz",
                 "--no-progress"], capsys)[0] == 0
    assert "labels" not in np.load("u.npz").files
    assert not np.allclose(np.load("u.npz")["samples"], z["samples"])


def test_no_command_and_unknown_flag_exit_2(capsys):
    assert main([]) == 2
    assert main(["sample", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err


def test_keyboard_interrupt_is_130(work, capsys, monkeypatch):
    import sde_diffusion.sampling as sampling

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sampling, "sample", interrupted)
    rc, _, err = _run(["sample", *TINY, "--steps", "2", "--out", "k/x.png", "--no-progress"], capsys)
    assert rc == 130 and "interrupted" in err
    assert not (work / "k").exists()


def test_train_conditional_then_sample_a_class(work, capsys):
    """train --conditional on an (x, y) .npz writes a model that declares its classes; sample --class
    checks labels against them (one line, before any network call) and runs guided."""
    from sde_diffusion.checkpoints import load_model

    rng = np.random.default_rng(0)
    np.savez(work / "lab.npz", x=rng.integers(0, 256, (12, 8, 8), dtype=np.uint8), y=np.arange(12) % 3)
    arch = ["--base-channels", "8", "--channel-mults", "1", "--attention-resolutions", "8", "--no-progress",
            "--batch-size", "4"]
    rc, _, err = _run(["train", "--data", "lab.npz", "--conditional", "--cond-drop", "0.2", "--out", "c",
                       "--steps", "2", *arch], capsys)
    assert rc == 0, err
    m = load_model(work / "c" / "model")
    assert m.conditioning == {"class_labels": {"num_classes": 3, "null_class": 3}}
    rc, _, err = _run(["sample", "--model", "c/model", "--steps", "2", "--class", "5", "--out", "s.png"], capsys)
    assert rc == 2 and "--class 5 is outside the model's classes 0..2" in err and not (work / "s.png").exists()
    if _has_cond():
        rc, _, err = _run(["sample", "--model", "c/model", "--steps", "2", "-n", "3", "--class", "2", "--guidance", "2",
                           "--out", "s.npz", "--no-progress"], capsys)
        assert rc == 0, err
        assert np.load("s.npz")["labels"].tolist() == [2, 2, 2]
    # unlabelled data for --conditional: one line, nothing written
    np.save(work / "plain.npy", rng.integers(0, 256, (4, 8, 8), dtype=np.uint8))
    rc, _, err = _run(["train", "--data", "plain.npy", "--conditional", "--out", "c2", "--steps", "1", *arch], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and not (work / "c2").exists()


def test_grid_draws_nan_black_but_fid_outputs_refuse_it():
    from sde_diffusion.images import make_grid, to_uint8

    x = torch.tensor([[[[float("nan"), 1.0]]]])
    assert make_grid(x, pad=0).tolist() == [[0, 255]]
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(x)
