"""One script for whoever has a GPU: the CUDA tests plus the GPU measurements of issue 13, in under
five minutes, written to a JSON record that says where and when it ran.

    python benchmarks/gpu_check.py                      # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --quick  # smoke test of the script itself (no GPU)

Parts (each timed and recorded; one failing part does not stop the others):
  tests      ``pytest -q -k cuda tests`` (every CUDA parametrisation; they skip without CUDA);
  seeding    benchmarks/seeding.py on the device: seed= (counter-based) vs one torch.Generator for
             ancestral, dpmpp_2m_sde, euler_maruyama (20 steps, batch 4096, trivial net), Brownian vs
             Gaussian noise, and the noise draw alone;
  precision  the shipped digits U-Net, dpmpp_2m 20 steps at batch 2048 from the same x_T: float32 with
             TF32 off (reference), float32 with TF32 on, bfloat16 and float16 network evaluation
             (``NoisePredictor(net_dtype=...)``): median time and max/RMS difference to the reference,
             and the device's float32 (TF32 off / on) against the CPU's float32.
Writes ``--out`` (default benchmarks/gpu_check_last.json); commit it with the numbers quoted in
docs/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


from sde_diffusion.backends import set_tf32  # noqa: E402 (one definition, shared with the CLI's --no-tf32)


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _median_s(fn, device, repeats=3):
    fn()
    _sync(device)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def where_when(device) -> dict:
    rec = dict(when_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), host=socket.gethostname(),
               platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
               cuda_runtime=torch.version.cuda, device=str(device))
    if str(device).startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.device(device))
        rec.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                   cudnn=torch.backends.cudnn.version())
    try:
        rec["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                           timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - a record without a commit is still useful
        rec["git_commit"] = None
    return rec


def part_tests(timeout: int) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "tests"]
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        failed = [ln for ln in lines if ln.startswith("FAILED") or ln.startswith("ERROR")]
        return dict(command=" ".join(cmd[2:]), returncode=r.returncode, summary=lines[-1] if lines else "",
                    failed=failed[:50], seconds=round(time.perf_counter() - t, 1))
    except subprocess.TimeoutExpired:
        return dict(command=" ".join(cmd[2:]), returncode=None, summary=f"timed out after {timeout} s",
                    seconds=round(time.perf_counter() - t, 1))


def part_seeding(device, quick: bool) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from seeding import run

    return run(batch=4096 if not quick else 256, shape=(1, 8, 8), steps=20, repeats=5 if not quick else 1,
               device=device)


def part_precision(device, quick: bool) -> dict:
    from sde_diffusion import load_model
    from sde_diffusion.model import NoisePredictor
    from sde_diffusion.randomness import draw_x_T
    from sde_diffusion.sampling import sample

    batch, steps = (2048, 20) if not quick else (64, 5)
    m = load_model("digits", device=str(device))
    x_T = draw_x_T((batch, *m.sample_shape), 0, device=device)

    def run(model):
        return sample(model, x_T, solver="dpmpp_2m", steps=steps).samples

    out = dict(batch=batch, steps=steps, solver="dpmpp_2m", model="digits")
    rows = {}
    set_tf32(False)
    ref = run(m)
    rows["float32 (TF32 off)"] = dict(seconds=_median_s(lambda: run(m), device))
    if str(device).startswith("cuda"):
        out["tf32_flags_on"] = set_tf32(True)
        tf = run(m)
        rows["float32 (TF32 on)"] = dict(seconds=_median_s(lambda: run(m), device),
                                         max_abs=float((tf - ref).abs().max()),
                                         rms=float((tf - ref).pow(2).mean().sqrt()))
        set_tf32(False)
        m_cpu = load_model("digits", device="cpu")
        cpu = sample(m_cpu, x_T.cpu(), solver="dpmpp_2m", steps=steps).samples
        out["device_ieee_vs_cpu_max_abs"] = float((ref.cpu() - cpu).abs().max())
        out["device_tf32_vs_cpu_max_abs"] = float((tf.cpu() - cpu).abs().max())
    for name, dt in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        mh = NoisePredictor(m.net, m.sde, m.prediction, net_dtype=dt, sample_shape=m.sample_shape)
        try:
            y = run(mh)
            rows[f"net {name}"] = dict(seconds=_median_s(lambda: run(mh), device),
                                       max_abs=float((y - ref).abs().max()),
                                       rms=float((y - ref).pow(2).mean().sqrt()))
        except Exception as e:  # noqa: BLE001 - e.g. float16 autocast unsupported on this device
            rows[f"net {name}"] = dict(error=f"{type(e).__name__}: {e}")
    for r in rows.values():
        if "seconds" in r:
            r["speed_vs_float32"] = rows["float32 (TF32 off)"]["seconds"] / r["seconds"]
    out["rows"] = rows
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu_check_last.json"))
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke test of the script)")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--tests-timeout", type=int, default=150)
    a = p.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a machine with a GPU (or --device cpu --quick to "
              "smoke-test the script)", file=sys.stderr)
        return 2
    os.environ.setdefault("PYTHONHASHSEED", "0")
    t0 = time.perf_counter()
    record = dict(where_when=where_when(a.device), quick=a.quick)
    parts = [("seeding", lambda: part_seeding(a.device, a.quick)), ("precision", lambda: part_precision(a.device, a.quick))]
    if not a.skip_tests:
        parts.insert(0, ("tests", lambda: part_tests(a.tests_timeout)))
    for name, fn in parts:
        t = time.perf_counter()
        try:
            record[name] = fn()
        except Exception:  # noqa: BLE001 - record the failure, go on with the other parts
            record[name] = dict(error=traceback.format_exc(limit=3))
        print(f"[{name}] {time.perf_counter() - t:.1f} s", file=sys.stderr)
    record["total_seconds"] = round(time.perf_counter() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(a.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    tmp.replace(a.out)
    print(json.dumps(record, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
