"""Install the guided digits-cond tunes as the model's shipped configurations, and check what
``sample(..., spacing="tuned")`` then picks (issue 15, deliverable 4).

    python benchmarks/tuning_cond/install.py            # writes sde_diffusion/assets/digits-cond/tuned.json, then checks
    python benchmarks/tuning_cond/install.py --check    # checks only

Install: every ``benchmarks/tuning_cond/dpmpp_2m-K.json`` (one tune each) must be for the shipped
weights, guidance 2 and class 'all'; they are written, ordered by NFE, as ``{"configs": [...]}``.
Check, for every installed K: ``sample(load_model("digits-cond"), solver="dpmpp_2m", steps=K,
spacing="tuned", cond=..., guidance=2, shape=(16, 1, 8, 8), seed=0)`` equals, bitwise, the same call
with the configuration's grid and options passed explicitly; a guidance it was not tuned for
(none, 1, 3) and an NFE without a configuration are refused with a ValueError.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ASSET = ROOT / "sde_diffusion" / "assets" / "digits-cond" / "tuned.json"


def install() -> list:
    from sde_diffusion.checkpoints import load_model
    from sde_diffusion.tuned_files import load_tuned, model_fingerprint

    fp = model_fingerprint(load_model("digits-cond"))
    configs = []
    for f in sorted(HERE.glob("dpmpp_2m-*.json"), key=lambda p: int(p.stem.split("-")[1])):
        (c,) = load_tuned(f)
        if c.get("model_sha256") != fp or c.get("guidance") != 2.0 or c.get("class") != "all":
            raise SystemExit(f"{f}: not a digits-cond / guidance 2 / class 'all' tune")
        if c["calibration"]["n"] < 256:
            raise SystemExit(f"{f}: calibration {c['calibration']['n']} < 256 x_T")
        configs.append(c)
    text = json.dumps({"configs": configs}, indent=1) + "\n"
    ASSET.write_text(text)
    print(f"wrote {ASSET.relative_to(ROOT)}: NFE {[c['nfe'] for c in configs]}")
    return configs


def check() -> None:
    from sde_diffusion.checkpoints import load_model
    from sde_diffusion.sampling import sample
    from sde_diffusion.tuned_files import load_tuned

    m = load_model("digits-cond")
    configs = load_tuned(ASSET)
    cond = {"class_labels": torch.arange(16) % 10}
    common = dict(solver="dpmpp_2m", cond=cond, shape=(16, 1, 8, 8), seed=0)
    for c in configs:
        K = int(c["steps"])
        a = sample(m, steps=K, spacing="tuned", guidance=2, **common).samples
        b = sample(m, ts=torch.tensor(c["ts"], dtype=torch.float64), guidance=2, **common, **c["options"]).samples
        assert torch.equal(a, b), K
        others = [o for o in configs if o is not c]
        for o in others:  # and not another K's configuration
            assert not torch.equal(a, sample(m, ts=torch.tensor(o["ts"], dtype=torch.float64), guidance=2,
                                              **common, **o["options"]).samples)
        for g in (None, 1, 3):
            try:
                sample(m, steps=K, spacing="tuned", guidance=g, **common)
            except ValueError as e:
                msg = str(e)
            else:
                raise AssertionError(f"guidance {g} at NFE {K} was not refused")
        print(f"NFE {K}: spacing='tuned' at guidance 2 is the NFE-{K} configuration; guidance None/1/3 refused ({msg})")
    ks = {int(c["steps"]) for c in configs}
    missing = next(k for k in range(2, 20) if k not in ks)
    try:
        sample(m, steps=missing, spacing="tuned", guidance=2, **common)
    except ValueError as e:
        print(f"NFE {missing}: refused ({e})")
    else:
        raise AssertionError(f"NFE {missing} was not refused")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check the installed file")
    a = ap.parse_args(argv)
    if not a.check:
        install()
    check()
    return 0


if __name__ == "__main__":
    sys.exit(main())
