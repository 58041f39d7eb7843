"""docs/tuning.md's "Guided (digits-cond)" table from the files in benchmarks/tuning_cond/:
dpmpp_2m-K.json (tunes), heldout.json (heldout_breakdown.py --out), accuracy.json (cond_accuracy.py --out).

    python benchmarks/tuning_cond/make_table.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    tunes = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in HERE.glob("dpmpp_2m-*.json")}
    held = {r["nfe"]: r for r in json.loads((HERE / "heldout.json").read_text())["rows"]} if (HERE / "heldout.json").is_file() else {}
    acc = {r["nfe"]: r for r in json.loads((HERE / "accuracy.json").read_text())["rows"]} if (HERE / "accuracy.json").is_file() else {}
    print("| NFE | parameters | calibration (256) start -> tuned | validation (64) start -> tuned | held-out (128) start -> tuned "
          "| held-out without the worst x_T: default spacing / start / tuned | held-out median per-x_T RMSE: default / tuned "
          "| stopped | tune wall s (solves) | class hit rate default -> tuned (worst class) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for K in sorted(tunes):
        c = tunes[K]
        v = c["validation"]
        hist = v["history"]
        budget = hist[-1]["iteration"] - v["best_iteration"] < 3
        stop = f"it. {v['best_iteration']} of {hist[-1]['iteration']} ({'budget' if budget else 'early stop'})"
        h = held.get(K, {})
        key = next((k for k in h if k.endswith(f"dpmpp_2m-{K}.json")), None)
        hs = (f"{h['default']['rmse_without_worst']:.4f} / {h['start']['rmse_without_worst']:.4f} / {h[key]['rmse_without_worst']:.4f}"
              if key and "start" in h else "-")
        med = f"{h['default']['median_rmse']:.4f} / {h[key]['median_rmse']:.4f}" if key else "-"
        a = acc.get(K)
        ac = (f"{a['default']['hit_rate']:.3f} ({a['default']['worst_class_hit_rate']:.2f}) -> "
              f"{a['tuned']['hit_rate']:.3f} ({a['tuned']['worst_class_hit_rate']:.2f})") if a else "-"
        print(f"| {K} | {c['parameters']} | {c['calibration']['start_rmse']:.4f} -> {c['calibration']['rmse']:.4f} "
              f"| {v['start_rmse']:.4f} -> {v['rmse']:.4f} | {c['holdout']['start_rmse']:.4f} -> {c['holdout']['rmse']:.4f} "
              f"| {hs} | {med} | {stop} | {c['wall_s']:.0f} ({c['evaluations']}) | {ac} |")


if __name__ == "__main__":
    main()
