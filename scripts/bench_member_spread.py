"""Does an ensemble's disagreement say where its latency prediction is wrong?

    python scripts/bench_member_spread.py --checkpoint CKPT --dataset DATA.jsonl.gz [--test-only] \
        [--column refnorm_ms] [--json]

For a NAR-Former latency checkpoint with several members (``--members K``), every network of
``--dataset`` gets the members' own predictions, their spread (largest / smallest member - 1, in
%) and the ensemble's absolute percentage error against the measured ``--column``. Prints the
Spearman correlation of spread with error, and MAPE / Acc(10%) of the networks whose spread is
below and above the median spread. ``--test-only`` keeps the networks the checkpoint's meta
names as its test networks (an in-domain fit saved by ``bench latency --save-in-domain``), so no
network it trained or selected on is scored.

A spread that tracks the error is what lets the app say "the members disagree here: trust this
estimate less" instead of one bare number.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def member_spread_pct(members_ms: np.ndarray) -> np.ndarray:
    """Per network (column): the largest member prediction over the smallest, minus one, in %."""
    m = np.asarray(members_ms, dtype=np.float64)
    return 100.0 * (m.max(axis=0) / m.min(axis=0) - 1.0)


def spread_report(members_ms: np.ndarray, truth_ms: np.ndarray, families=None) -> dict:
    from scipy.stats import spearmanr

    from narformer_core.metrics import acc_within, mape

    members_ms = np.asarray(members_ms, dtype=np.float64)
    truth = np.asarray(truth_ms, dtype=np.float64)
    pred = np.exp(np.log(members_ms).mean(axis=0))          # the ensemble: mean in log space
    ape = 100.0 * np.abs(pred - truth) / truth
    sp = member_spread_pct(members_ms)
    low = sp <= np.median(sp)
    part = lambda m: {"n": int(m.sum()), "mape": round(mape(pred[m], truth[m]), 3),  # noqa: E731
                      "acc10": round(acc_within(pred[m], truth[m]), 1),
                      "median_spread_pct": round(float(np.median(sp[m])), 2)}
    out = {"n": int(len(truth)), "members": int(members_ms.shape[0]),
           "spearman_spread_vs_ape": round(float(spearmanr(sp, ape).statistic), 3),
           "median_spread_pct": round(float(np.median(sp)), 2),
           "p90_spread_pct": round(float(np.percentile(sp, 90)), 2),
           "low_spread_half": part(low), "high_spread_half": part(~low)}
    if families is not None:
        fams = np.asarray(families)
        out["per_family_median_spread_pct"] = {str(f): round(float(np.median(sp[fams == f])), 2)
                                               for f in sorted(set(fams.tolist()))}
    return out


def main(argv=None) -> int:
    from narformer_core.latency.dataset import load_dataset
    from narformer_core.latency.predictors import load_predictor

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--column", default=None, help="default: the column the checkpoint was trained on")
    ap.add_argument("--test-only", action="store_true", help="only the checkpoint's own test networks")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    pred = load_predictor(args.checkpoint)
    if getattr(pred, "members", 1) < 2:
        print(f"{args.checkpoint} holds one network: no spread to measure", file=sys.stderr)
        return 2
    column = args.column or pred.meta.get("column", "median_ms")
    records, graphs, y = load_dataset(Path(args.dataset), column=column)
    idx = np.arange(len(graphs))
    if args.test_only:
        idx = np.asarray(pred.meta.get("test_indices") or [], dtype=np.int64)
        if not len(idx):
            print(f"{args.checkpoint} names no test networks (not saved by bench --save-in-domain)", file=sys.stderr)
            return 2
    members = pred.member_predictions([graphs[i] for i in idx])
    rep = spread_report(members, y[idx], [records[i]["family"] for i in idx])
    rep.update({"checkpoint": str(args.checkpoint), "dataset": str(args.dataset), "column": column,
                "test_only": bool(args.test_only)})
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        lo, hi = rep["low_spread_half"], rep["high_spread_half"]
        print(f"{rep['n']} networks, {rep['members']} members; spread median {rep['median_spread_pct']}%, "
              f"90th percentile {rep['p90_spread_pct']}%")
        print(f"Spearman(spread, |error|) = {rep['spearman_spread_vs_ape']}")
        print(f"low-spread half:  MAPE {lo['mape']}%  Acc(10%) {lo['acc10']}%")
        print(f"high-spread half: MAPE {hi['mape']}%  Acc(10%) {hi['acc10']}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
