"""Which label do two independent timing passes agree on best? (the session-13/14 passes)

    python scripts/label_estimators.py [--json]

Per network and pass: a statistic of its timed runs (the fastest run, or a low percentile of them),
divided by the host's speed, the reference network's time (``ref_before_ms``/``ref_after_ms``):
at that moment (what ``latency combine`` does: ``refnorm_ms``), or a rolling median of it over
the W networks timed before and after (the reference's own 0.25 s timings are noisy). Passes
are put on one scale by the median reference over all passes. Two agreements are printed: pass A
against pass C (all 2,000 networks, one pass each), and the two-pass label A+C against B+D
(the 200 re-test networks; the floor of record is 3.96% for the moment correction). A statistic
and a correction are measurement choices: this compares measurements with measurements, no
predictor is involved.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from narformer_core.latency.dataset import rolling_reference_speed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1] / "assets" / "latency"
PASSES = {"A": "session13/zoo2000_s13_passA.jsonl.gz", "B": "session13/zoo2000_s13_passB.jsonl.gz",
          "C": "session14/zoo2000_s14_passC.jsonl.gz", "D": "session14/zoo2000_s14_passD.jsonl.gz"}


def _load(name: str) -> list[dict]:
    with gzip.open(ROOT / PASSES[name], "rt") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return sorted(records, key=lambda r: r["measured_at"])     # the order they were timed in


def _statistic(r: dict, stat) -> float:
    if stat == "min":
        return float(r["min_ms"])
    samples = r["samples_ms"]
    return float(np.percentile(json.loads(samples) if isinstance(samples, str) else samples, stat))


def per_pass(records: list[dict], stat, window: int) -> tuple[dict, float]:
    """{spec_id: statistic / host speed}, and the pass's median host speed."""
    speed = rolling_reference_speed(records, window)      # window 0: the moment's reference time
    return ({r["spec_id"]: _statistic(r, stat) / speed[r["spec_id"]] for r in records},
            float(np.median(list(speed.values()))))


def _mape(truth, pred) -> float:
    return float(np.mean(np.abs(pred - truth) / truth) * 100)


def agreement(passes: dict, stat, window: int) -> dict:
    done = {k: per_pass(v, stat, window) for k, v in passes.items()}
    level = float(np.median([s for _, s in done.values()]))
    val = {k: {i: x * level for i, x in d.items()} for k, (d, _) in done.items()}
    both = sorted(set(val["A"]) & set(val["C"]))
    a, c = np.array([val["A"][i] for i in both]), np.array([val["C"][i] for i in both])
    re = sorted(set(val["B"]) & set(val["D"]) & set(both))

    def two(p, q, i):
        return float(np.sqrt(val[p][i] * val[q][i]))

    ac = np.array([two("A", "C", i) for i in re])
    bd = np.array([two("B", "D", i) for i in re])
    return {"stat": stat, "window": window, "a_vs_c_mape": round(_mape(a, c), 2), "n_a_vs_c": len(both),
            "ac_vs_bd_mape": round(_mape(ac, bd), 2),
            "ac_vs_bd_acc10": round(float(np.mean(np.abs(bd - ac) / ac <= 0.10) * 100), 1), "n_retest": len(re)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    passes = {k: _load(k) for k in PASSES}
    rows = [agreement(passes, stat, w) for stat in ("min", 5, 10, 25) for w in (0, 1, 2, 5)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("statistic  reference window  A vs C (one pass, 2,000)  A+C vs B+D (two passes, 200): MAPE / Acc(10%)")
    for r in rows:
        stat = "fastest" if r["stat"] == "min" else f"p{r['stat']}"
        window = "at the moment" if r["window"] == 0 else f"median of +-{r['window']}"
        print(f"{stat:<10} {window:<17} {r['a_vs_c_mape']:>6.2f}%{'':<19} {r['ac_vs_bd_mape']:>6.2f}% / "
              f"{r['ac_vs_bd_acc10']:.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
