"""The step-count harness: files, columns, resume, NFE accounting, the reference solve, peers."""

import csv
import json
import struct

import pytest
import torch

from sde_diffusion.analytic import GaussianMixture
from sde_diffusion.bench import CSV_COLUMNS, BenchModel, reference_pf, run_bench, steps_for_nfe
from sde_diffusion.sampling import sample
from sde_diffusion.schedules import linear_betas
from sde_diffusion.sde import VPSDE


def _tiny(K=2):
    """A 2-D mixture on a short (100-step) DDPM chain: cheap references, same code paths."""
    sde = VPSDE.from_betas(linear_betas(100, 1e-3, 0.2))
    means = [[-0.6, 0.0], [0.6, 0.0]][:K]
    gm = GaussianMixture(means, 0.15)
    g = torch.Generator().manual_seed(1)
    return BenchModel("tiny", gm.predictor(sde), f"tiny{K}", torch.float64, mixture=gm,
                      real=gm.sample(2000, generator=g), floor=gm.sample(2000, generator=g))


def _png_size(path):
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # ~50-100 s end to end: `pytest -m slow`; report/resume/reproduction have fast tests below
def test_tiny_bench_writes_files_and_resumes(tmp_path):
    out = tmp_path / "b"
    kw = dict(solvers=["ddim", "dpmpp_2m"], nfes=[5, 10], n=48, seed=3, out_dir=out, quick=False, spacings=["uniform"],
              peers=["ddim"], n_boot=5, log=lambda *a: None)  # full mode: with the N-step ancestral reference
    rows = run_bench(_tiny(), **kw)
    for f in ["results.csv", "results.json", "results.md", "summary.md", "rows.jsonl", "run.json",
              "plots/rmse_ref_best.png", "plots/rmse_ref_all.png", "plots/samples.png",
              "grids/nfe5/sde_diffusion_ddim_uniform.png", "grids/nfe10/diffusers_ddim_leading.png"]:
        assert (out / f).is_file(), f
    for png in out.rglob("*.png"):  # every figure opens in an ordinary viewer
        w, h = _png_size(png)
        assert 50 <= w <= 2000 and 50 <= h <= 2000, (png, w, h)
    table = _csv(out / "results.csv")
    assert set(CSV_COLUMNS) <= set(table[0]) and len(table) == len(rows)
    assert {r["library"] for r in table} == {"sde_diffusion", "diffusers", "data"}
    metrics = {r["metric"] for r in table}
    assert {"rmse_ref", "logp", "coverage", "fd", "sw"} <= metrics
    keyed = {(r["library"], r["solver"], r["target_nfe"], r["metric"]): r for r in table}
    assert keyed[("sde_diffusion", "ddim", "5", "rmse_ref")]["nfe"] == "5"
    assert keyed[("diffusers", "ddim", "10", "rmse_ref")]["nfe"] == "10"
    assert keyed[("sde_diffusion", "ancestral", "100", "rmse_ref")]["nfe"] == "100"  # the reference row
    pf = keyed[("sde_diffusion", "pf_reference", "0", "rmse_ref")]
    assert float(pf["value"]) == 0.0 and int(pf["nfe"]) > 20
    # more steps -> closer to the reference flow (an error that can rank solvers)
    assert float(keyed[("sde_diffusion", "dpmpp_2m", "10", "rmse_ref")]["value"]) < float(
        keyed[("sde_diffusion", "dpmpp_2m", "5", "rmse_ref")]["value"])
    for r in table:
        if r["ci_low"]:
            assert float(r["ci_low"]) <= float(r["ci_high"])
    assert len(json.loads((out / "results.json").read_text())["rows"]) == len(rows)

    # same arguments again: nothing is recomputed, nothing is added
    log = (out / "rows.jsonl").read_text()
    rows2 = run_bench(_tiny(), **kw)
    assert (out / "rows.jsonl").read_text() == log and len(rows2) == len(rows)

    # a run killed mid-write: drop the last record and tear the one before it
    lines = log.splitlines(keepends=True)
    (out / "rows.jsonl").write_text("".join(lines[:-2]) + lines[-2][: len(lines[-2]) // 2])
    rows3 = run_bench(_tiny(), **kw)
    assert len(rows3) == len(rows)
    assert [json.loads(x)["key"] for x in (out / "rows.jsonl").read_text().splitlines()] == \
        [json.loads(x)["key"] for x in lines]

    # another n in the same folder is refused rather than mixed in
    with pytest.raises(ValueError, match="another run"):
        run_bench(_tiny(), **{**kw, "n": 40})


def test_bad_arguments_raise_value_error(tmp_path):
    with pytest.raises(ValueError):
        run_bench(_tiny(), n=1, out_dir=tmp_path / "a", peers=False)
    with pytest.raises(ValueError, match="unknown solver"):
        run_bench(_tiny(), solvers=["nope"], n=8, out_dir=tmp_path / "b", peers=False, log=lambda *a: None)
    with pytest.raises(ValueError):
        run_bench(_tiny(), nfes=[0], n=8, out_dir=tmp_path / "c", peers=False)


def test_steps_for_nfe_matches_each_solvers_cost():
    m = _tiny().predictor
    assert steps_for_nfe(m, "ddim", 5, "uniform", {})[0] == 5
    assert steps_for_nfe(m, "heun", 10, "karras", {})[0] == 5  # 2K - 1 = 9 <= 10 < 11
    assert steps_for_nfe(m, "heun", 5, "karras", {})[0] == 3
    k, opts = steps_for_nfe(m, "dpm_solver", 10, "logsnr", {"order": 3})
    assert sum(opts["orders"]) == 10 and len(opts["orders"]) == k
    for solver, sp in [("pc", "uniform"), ("heun", "logsnr"), ("unipc", "logsnr")]:
        k, opts = steps_for_nfe(m, solver, 10, sp, {})
        x = torch.zeros(1, 2, dtype=torch.float64)
        assert sample(m, x, solver=solver, steps=k, spacing=sp, seed=0, **opts).nfe <= 10
        assert sample(m, x, solver=solver, steps=k + 1, spacing=sp, seed=0, **opts).nfe > 10


def test_reference_pf_matches_the_exact_gaussian_flow():
    bm = _tiny(K=1)
    gm, m = bm.mixture, bm.predictor
    x_T = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x0, nfe = reference_pf(m, x_T)
    t_end = 1.0 / m.sde.num_train_steps
    exact = m.x0(gm.flow_map(x_T, 1.0, t_end, m.sde), t_end)
    assert (x0 - exact).abs().max() < 1e-4 and nfe > 10  # ~2e-5 at rtol = atol = 1e-6
    x0_tight, _ = reference_pf(m, x_T, 1e-8, 1e-8)
    assert (x0_tight - exact).abs().max() < 0.1 * (x0 - exact).abs().max()  # and it converges


def test_peer_ddim_equals_our_ddim_on_its_timesteps():
    pytest.importorskip("diffusers")
    from sde_diffusion.peers import make_scheduler, run_peer

    m = _tiny().predictor
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # "leading" ends at timestep 0 and then steps to alpha = 1, like our grid; (diffusers' DDIM with
    # "trailing"/"linspace" steps to t - N//S instead of the next listed timestep, so it differs there)
    x, nfe = run_peer(m, "ddim", 6, x_T, spacing="leading")
    sched = make_scheduler("ddim", m, "leading")
    sched.set_timesteps(6)
    ours = sample(m, x_T, solver="ddim", timesteps=sched.timesteps)
    assert nfe == 6 and ours.nfe == 6
    torch.testing.assert_close(x, ours.samples, rtol=1e-5, atol=1e-5)
    _, nfe = run_peer(m, "heun", 4, x_T)
    assert nfe == 7


def _small(tmp_path, name="s", **kw):
    args = dict(solvers=["ddim"], nfes=[5], n=16, seed=1, out_dir=tmp_path / name, quick=True, peers=False,
                n_boot=0, log=lambda *a: None)
    args.update(kw)
    return run_bench(_tiny(), **args)


def test_report_rebuilds_every_file_from_rows_alone(tmp_path):
    from sde_diffusion.bench import report
    from sde_diffusion.cli import main

    rows = _small(tmp_path, n_boot=20)
    out = tmp_path / "s"
    before = (out / "results.csv").read_text()
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] or r["ci_low"] != r["ci_low"] for r in rows if r["role"] == "solver")
    for f in ["results.csv", "results.json", "results.md", "summary.md"]:
        (out / f).unlink()
    for p in (out / "plots").glob("*.png"):
        p.unlink()
    assert main(["bench", "report", str(out)]) == 0
    assert (out / "results.csv").read_text() == before
    assert (out / "plots" / "rmse_ref_best.png").is_file() and (out / "summary.md").is_file()
    # the docs page's generated section is replaced, the rest of the page kept
    doc = tmp_path / "page.md"
    from sde_diffusion.bench.report import docs_markers

    begin, end = docs_markers("s")
    doc.write_text(f"intro\n{begin}\nold\n{end}\noutro\n")
    report(out, plots=False, docs=doc)
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text and "rmse_ref" in text
    with pytest.raises(FileNotFoundError, match="rows.jsonl"):
        report(tmp_path / "empty")


def test_bad_input_is_one_line_naming_the_valid_choices(tmp_path):
    with pytest.raises(ValueError, match="unknown spacing 'foo'; valid: uniform"):
        _small(tmp_path, "a", spacings=["foo"])
    with pytest.raises(ValueError, match="unknown diffusers peer 'nope'; valid: .*ddim"):
        _small(tmp_path, "b", peers=["nope"])
    with pytest.raises(ValueError, match="n_boot must be an integer >= 0"):
        _small(tmp_path, "c", n_boot=-1)
    with pytest.raises(ValueError, match="above the benchmark's limit 1000"):
        _small(tmp_path, "d", nfes=[1001])
    with pytest.raises(ValueError, match="class-conditional"):
        _small(tmp_path, "e", guidance=[2.0])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            _small(tmp_path, "f", device="cuda")
    assert not any((tmp_path / k / "rows.jsonl").exists() for k in "abcdef")  # refused before any work


def test_plan_is_frozen_and_resume_store_never_doubles_rows(tmp_path):
    import dataclasses

    from sde_diffusion.bench import plan
    from sde_diffusion.bench.store import append_record, folder_lock, read_records

    cfgs = plan(_tiny(), ["ddim", "ode"], [5], quick=True, peers=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfgs[-1].steps = 3
    adaptive = [c for c in cfgs if c.solver == "ode"]
    assert adaptive and adaptive[0].steps is None
    out = tmp_path / "r"
    _small(tmp_path, "r", solvers=["ode"])
    assert adaptive[0].steps is None  # running it did not write onto the plan
    recs = read_records(out)
    append_record(out, recs[-1])  # a second writer's copy of a finished row
    assert len(read_records(out)) == len(recs)
    with folder_lock(out):
        with pytest.raises(ValueError, match="another bench .*is writing"):
            _small(tmp_path, "r", solvers=["ode"])


def test_kid_blocked_equals_the_full_matrix_kid_and_intervals_cover():
    import math

    import numpy as np

    from sde_diffusion.bench import bootstrap_interval, kid_blocked
    from sde_diffusion.metrics import kid

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((300, 5)), rng.standard_normal((200, 5)) + 0.2
    assert abs(kid_blocked(a, b, block=64) - kid(a, b)) < 1e-10
    assert all(math.isnan(v) for v in bootstrap_interval(lambda i: 0.0, 10, 0))
    # seeded coverage of the mean of N(0.5, 1) samples (n = 40): near the nominal 95%
    hits = 0
    for r in range(40):
        x = rng.standard_normal(40) + 0.5
        lo, hi = bootstrap_interval(lambda i: x[i].mean(), 40, 200, seed=r)
        hits += lo <= 0.5 <= hi
    assert hits >= 34  # P(Binomial(40, 0.95) < 34) ~ 1e-3


def test_each_row_reproduces_from_its_sample_command(tmp_path):
    """The command stored in a row, run through the CLI, gives the bench's samples bitwise
    (a stochastic solver: x_T and the noise come from the same per-sample generators)."""
    import shlex

    import numpy as np

    from sde_diffusion.bench import load_bench_model
    from sde_diffusion.checkpoints import save_checkpoint
    from sde_diffusion.cli import main
    from sde_diffusion.files import load_safetensors
    from sde_diffusion.bench.run import slug
    from sde_diffusion.nets.unet import UNet

    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=4, base_channels=8, channel_mults=[1], num_res_blocks=1, attention_resolutions=[])
    folder = save_checkpoint(tmp_path / "m", net, schedule={"kind": "linear", "num_train_steps": 20, "beta_start": 1e-3,
                                                            "beta_end": 0.2})
    bm = load_bench_model(str(folder))
    out = tmp_path / "b"
    rows = run_bench(bm, solvers=["ancestral", "ddim"], nfes=[5], n=6, seed=4, out_dir=out, quick=True, peers=["ddpm"],
                     n_boot=0, plots=False, log=lambda *a: None)
    for solver in ("ancestral", "ddim"):
        row = next(r for r in rows if r["solver"] == solver and r["role"] == "solver")
        args = shlex.split(row["command"])
        assert args[:2] == ["sde-diffusion", "sample"] and "--seed" in args
        args[args.index("--out") + 1] = str(tmp_path / f"{solver}.npz")
        assert main(args[1:] + ["--no-progress"]) == 0
        got = np.load(tmp_path / f"{solver}.npz")["samples"]
        kept = load_safetensors(out / "samples" / f"{slug(row['key'])}.safetensors")[0]["x"].numpy()
        np.testing.assert_array_equal(got[: len(kept)], kept)
    # a diffusers row (the stochastic DDPM scheduler) through the call its command names
    from sde_diffusion.bench import reproduce_peer

    row = next(r for r in rows if r["library"] == "diffusers")
    assert "reproduce_peer(" in row["command"]
    x = reproduce_peer(str(folder), "ddpm", row["spacing"], row["steps"], n=6, seed=4)
    kept = load_safetensors(out / "samples" / f"{slug(row['key'])}.safetensors")[0]["x"]
    assert torch.equal(x[: len(kept)], kept)


def test_guided_bench_drives_diffusers_with_the_same_guided_eps(tmp_path):
    """--guidance on a (tiny, random) class-conditional U-Net: per scale, our DDIM on diffusers'
    `leading` grid equals diffusers' DDIMScheduler driving the same guided eps in its own loop."""
    pytest.importorskip("diffusers")
    from sde_diffusion.model import NoisePredictor
    from sde_diffusion.nets.unet import UNet

    torch.manual_seed(0)
    net = UNet(num_classes=10, base_channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[]).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the output layer starts at zero: make eps depend on x, t and y
    pred = NoisePredictor(net, VPSDE.from_betas(linear_betas(100, 1e-3, 0.2)), sample_shape=(1, 8, 8),
                          conditioning={"class_labels": {"num_classes": 10, "null_class": 10}})
    bm = BenchModel("tinycond", pred, "tinycond", num_classes=10)
    rows = run_bench(bm, solvers=["ddim"], spacings=["leading"], peers=["ddim"], nfes=[5], n=10, seed=2,
                     out_dir=tmp_path / "g", quick=True, n_boot=0, guidance=[1, 3], plots=False, log=lambda *a: None,
                     ref_tol=1e-3)
    err = {(r["library"], r["guidance"]): r["value"] for r in rows if r["metric"] == "rmse_ref" and r["role"] == "solver"}
    assert set(err) == {(lib, w) for lib in ("sde_diffusion", "diffusers") for w in (1.0, 3.0)}
    for w in (1.0, 3.0):
        assert abs(err[("sde_diffusion", w)] - err[("diffusers", w)]) < 1e-5 * max(1.0, err[("diffusers", w)])
    assert err[("sde_diffusion", 1.0)] != err[("sde_diffusion", 3.0)]
    refs = [r for r in rows if r["solver"] == "pf_reference" and r["metric"] == "rmse_ref"]
    assert sorted(r["guidance"] for r in refs) == [1.0, 3.0] and all(r["value"] == 0 for r in refs)
    assert "--guidance 3" in next(r["command"] for r in rows if r["guidance"] == 3.0 and r["library"] == "sde_diffusion")


def test_class_accuracy_of_real_digits_with_their_labels():
    from sde_diffusion.bench import score
    from sde_diffusion.data import load_digits, load_digits_with_labels

    x, y = load_digits_with_labels("test")
    bm = BenchModel("digits", None, "d", real=load_digits("test"), digits=True, num_classes=10)
    got = {m: v for m, v, _, _ in score(bm, x[:200], None, 0, 0, labels=y[:200])}
    assert got["class_acc"] > 0.9 and got["class_acc_confident"] <= got["class_acc"]
    shuffled = {m: v for m, v, _, _ in score(bm, x[:200], None, 0, 0, labels=(y[:200] + 1) % 10)}
    assert shuffled["class_acc"] < 0.2


def test_docs_page_shows_what_the_committed_rows_say():
    """docs/benchmarks.md's generated section is exactly what `bench report` makes of the committed
    rows.jsonl: the page cannot drift from the data."""
    from pathlib import Path

    from sde_diffusion.bench.harness import load_folder
    from sde_diffusion.bench.report import docs_markdown, docs_markers, relative_link

    root = Path(__file__).resolve().parents[1]
    out, doc = root / "benchmarks" / "results", root / "docs" / "benchmarks.md"
    if not (out / "rows.jsonl").is_file():
        pytest.skip("no committed benchmark folder")
    _, meta, rows = load_folder(out)
    figures = sorted(p.relative_to(out) for p in (out / "plots").glob("*.png"))
    link = relative_link(doc, out)
    begin, end = docs_markers(link)
    section = doc.read_text().split(begin, 1)[1].split(end, 1)[0]
    assert section == "\n" + docs_markdown(rows, meta, figures, link)
