"""How well a latency checkpoint predicts another machine after K networks are timed there.

    python scripts/bench_host_calibration.py \
        --pool assets/latency/session18/intel_pilot_pass1.jsonl.gz \
        --eval test200=assets/latency/session18/intel_test200.jsonl.gz \
        --eval outside60=assets/latency/session18/intel_outside60.jsonl.gz [--k 5,10,20,40] [--draws 50] [--json]

``--pool``: networks timed on the new machine, one short pass (``min_ms``: what `latency calibrate`
itself records); K of them (spread over the families) calibrate, drawn ``--draws`` times. Pool
networks that are in the checkpoint's test split are left out of the pool. ``--eval``: networks
timed on the new machine for scoring (column ``--eval-column``, by default the drift-corrected
``refnorm_ms`` of ``latency combine``); none of them may be in the pool. Prints, per evaluation set
and K, MAPE, Acc(10%) and Kendall tau of the checkpoint as it is, scaled by the median ratio only,
and calibrated (ratio + local correction), as means over the draws.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from narformer_core.latency.calibration import fit_host_calibration, spread_over_families  # noqa: E402
from narformer_core.latency.dataset import load_dataset, load_records  # noqa: E402
from narformer_core.latency.predictors import load_predictor  # noqa: E402
from narformer_core.metrics import acc_within, kendall_tau, mape  # noqa: E402


def _scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    return {"mape": mape(pred, truth), "acc10": acc_within(pred, truth), "tau": kendall_tau(pred, truth)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="assets/latency/narformer_latency.pt")
    ap.add_argument("--pool", required=True)
    ap.add_argument("--pool-column", default="min_ms")
    ap.add_argument("--eval", action="append", required=True, metavar="NAME=FILE")
    ap.add_argument("--eval-column", default="refnorm_ms")
    ap.add_argument("--k", default="5,10,20,40")
    ap.add_argument("--draws", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    pred = load_predictor(args.checkpoint)
    test_ids = set()
    if pred.meta.get("dataset") and pred.meta.get("test_indices") is not None:
        source = load_records(pred.meta["dataset"], require_graph=False)
        test_ids = {source[int(i)]["spec_id"] for i in pred.meta["test_indices"]}
    recs, graphs, ms = load_dataset(args.pool, column=args.pool_column)
    keep = [i for i, r in enumerate(recs) if r["spec_id"] not in test_ids]
    recs, graphs, ms = [recs[i] for i in keep], [graphs[i] for i in keep], ms[keep]
    pool_pred = pred.predict(graphs)
    pool_ids = {r["spec_id"] for r in recs}

    evals = {}
    for item in args.eval:
        name, _, path = item.partition("=")
        erecs, eg, ems = load_dataset(path, column=args.eval_column)
        overlap = pool_ids & {r["spec_id"] for r in erecs}
        if overlap:
            raise SystemExit(f"{len(overlap)} networks of {name} are in the calibration pool")
        evals[name] = (eg, ems, pred.predict(eg))

    rng = np.random.default_rng(args.seed)
    families = [str(r.get("family", "?")) for r in recs]
    out = {"checkpoint": args.checkpoint, "checkpoint_platform": pred.meta.get("platform_key"),
           "pool": args.pool, "pool_networks": len(recs), "pool_platform": recs[0].get("platform_key"),
           "draws": args.draws, "results": []}
    for name, (eg, ems, ep) in evals.items():
        out["results"].append({"eval": name, "n": len(eg), "k": 0, "draws": 1,
                               "uncorrected": _scores(ep, ems)})
    for k in [int(x) for x in args.k.split(",")]:
        rows = {name: {"ratio_only": [], "calibrated": [], "bandwidth": []} for name in evals}
        draws = 1 if k >= len(recs) else args.draws
        for _ in range(draws):
            idx = spread_over_families(families, k, rng)
            cal = fit_host_calibration([graphs[i] for i in idx], ms[idx], pool_pred[idx],
                                       platform_key="bench", checkpoint_sha256="bench",
                                       checkpoint_platform=str(pred.meta.get("platform_key")))
            for name, (eg, ems, ep) in evals.items():
                rows[name]["ratio_only"].append(_scores(ep * cal.speed_ratio, ems))
                rows[name]["calibrated"].append(_scores(cal.apply(ep, eg), ems))
                rows[name]["bandwidth"].append(cal.bandwidth)
        for name, r in rows.items():
            mean = {how: {m: float(np.mean([s[m] for s in r[how]])) for m in ("mape", "acc10", "tau")}
                    for how in ("ratio_only", "calibrated")}
            spread = {how: float(np.std([s["mape"] for s in r[how]])) for how in ("ratio_only", "calibrated")}
            out["results"].append({"eval": name, "n": len(evals[name][0]), "k": k, "draws": draws, **mean,
                                   "mape_sd_over_draws": spread,
                                   "median_bandwidth": float(np.median(r["bandwidth"]))})
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"checkpoint {args.checkpoint} ({out['checkpoint_platform']}) on {out['pool_platform']}; "
          f"pool {len(recs)} networks, {args.draws} draws per K")
    print(f"{'eval':<12}{'K':>4}  {'as is / ratio only / calibrated: MAPE %':<44}{'Acc(10%)':<24}{'tau'}")
    for r in out["results"]:
        if r["k"] == 0:
            u = r["uncorrected"]
            print(f"{r['eval']:<12}{0:>4}  {u['mape']:>6.2f}{'':<38}{u['acc10']:>6.1f}{'':<18}{u['tau']:.3f}")
            continue
        a, b = r["ratio_only"], r["calibrated"]
        print(f"{r['eval']:<12}{r['k']:>4}  {'':>6} {a['mape']:>6.2f} / {b['mape']:>6.2f} "
              f"(sd {r['mape_sd_over_draws']['calibrated']:.2f}){'':<13}"
              f"{a['acc10']:>5.1f} / {b['acc10']:>5.1f}{'':<9}{a['tau']:.3f} / {b['tau']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
