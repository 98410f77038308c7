"""Why an outside-zoo ranking falls short: which family, and which operators, by how much.

    python scripts/outside_zoo_diagnosis.py SCORED.json [--opcost OPCOST.pt] [--json]

``SCORED.json``: what ``scripts/bench_outside_zoo.py --json`` printed for one checkpoint (its
``networks`` rows carry ``measured_ms``, ``checkpoint_ms`` and ``macs``). Prints

1. Kendall tau over all networks, and again without each family in turn: a family whose removal
   lifts tau the most is the one the predictor misplaces against the others (its own internal
   ranking, the per-family tau, can still be fine);
2. per family, the predicted / measured ratio (median, range): a family predicted uniformly too
   slow or too fast is misplaced as a block;
3. with ``--opcost`` (an operator-cost-sum checkpoint, e.g. the ``opcost_in_domain.pt`` that
   ``bench latency --save-in-domain`` writes), the cost sum's own ratio per family and its
   top operator kinds by share of predicted time, marking the kinds it never saw in training
   (costed as their category): where an unseen operator is costed wrongly, this names it.

The outside-zoo data set the scored networks came from is read for (3): the scored file's ``data``.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _tau(a, b) -> float:
    return round(float(kendalltau(a, b)[0]), 4)


def ranking_report(rows: list[dict]) -> dict:
    """Tau overall and without each family; per-family ratio of predicted to measured."""
    m = np.array([r["measured_ms"] for r in rows])
    p = np.array([r["checkpoint_ms"] for r in rows])
    fams = np.array([r["family"] for r in rows])
    out = {"n": len(rows), "tau": _tau(m, p), "macs_tau": _tau(m, [r["macs"] for r in rows]), "families": {}}
    for f in sorted(set(fams)):
        keep, own = fams != f, fams == f
        ratio = p[own] / m[own]
        out["families"][f] = {
            "n": int(own.sum()), "tau_without": _tau(m[keep], p[keep]), "tau_within": _tau(m[own], p[own]),
            "ratio_median": round(float(np.median(ratio)), 3),
            "ratio_range": [round(float(ratio.min()), 3), round(float(ratio.max()), 3)]}
    return out


def opcost_report(data: Path, opcost: Path, top: int = 5) -> dict:
    """Per family: the cost sum's predicted / measured ratio and its largest operator kinds."""
    from narformer_core.latency.dataset import load_dataset
    from narformer_core.latency.predictors import load_predictor

    model = load_predictor(opcost)
    column = model.meta.get("column", "refroll_ms")
    records, graphs, y = load_dataset(data, column=column)
    shares: dict = collections.defaultdict(lambda: collections.defaultdict(float))
    ratios: dict = collections.defaultdict(list)
    unseen: dict = collections.defaultdict(set)
    for r, g, ms in zip(records, graphs, y):
        rows = model.model.breakdown(g)
        total = sum(x["ms"] or 0.0 for x in rows)
        ratios[r["family"]].append(total / ms)
        for x in rows:
            shares[r["family"]][x["kind"]] += (x["ms"] or 0.0) / total
            if x["by_category"]:
                unseen[r["family"]].add(x["kind"])
    out = {"opcost": str(opcost), "column": column, "families": {}}
    for f in sorted(ratios):
        n = len(ratios[f])
        kinds = sorted(shares[f].items(), key=lambda kv: -kv[1])[:top]
        out["families"][f] = {
            "ratio_median": round(float(np.median(ratios[f])), 3),
            "top_kinds": [{"kind": k, "share": round(v / n, 3), "unseen": k in unseen[f]} for k, v in kinds]}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scored", help="the JSON that scripts/bench_outside_zoo.py --json printed")
    ap.add_argument("--opcost", help="an operator-cost-sum checkpoint to break the networks down with")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        scored = json.loads(Path(args.scored).read_text())
        rows = [r for r in scored["networks"] if r.get("checkpoint_ms") is not None]
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {args.scored} is not a scored outside-zoo file ({e})", file=sys.stderr)
        return 2
    if len(rows) < 3:
        print(f"error: {args.scored} has fewer than 3 networks with a checkpoint prediction", file=sys.stderr)
        return 2
    res = {"scored": args.scored, "ranking": ranking_report(rows)}
    if args.opcost:
        res["opcost"] = opcost_report(ROOT / scored["data"] if not Path(scored["data"]).is_absolute()
                                      else Path(scored["data"]), Path(args.opcost))
    if args.json:
        print(json.dumps(res))
        return 0
    rk = res["ranking"]
    print(f"{rk['n']} networks: tau {rk['tau']} (MACs alone {rk['macs_tau']})")
    print(f"{'family':14s} {'tau without':>11s} {'tau within':>10s} {'pred/meas':>9s}  range")
    for f, v in rk["families"].items():
        print(f"{f:14s} {v['tau_without']:11.3f} {v['tau_within']:10.3f} {v['ratio_median']:9.2f}  "
              f"{v['ratio_range'][0]:.2f}-{v['ratio_range'][1]:.2f}")
    if "opcost" in res:
        print(f"\ncost sum ({Path(args.opcost).name}), predicted / measured and its largest kinds "
              "(* = never seen in training, costed as its category):")
        for f, v in res["opcost"]["families"].items():
            kinds = ", ".join(f"{k['kind']}{'*' if k['unseen'] else ''} {k['share']:.0%}" for k in v["top_kinds"])
            print(f"{f:14s} {v['ratio_median']:5.2f}  {kinds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
