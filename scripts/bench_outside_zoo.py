"""Latency prediction on network families that are NOT in the zoo (issue 3's out-of-family check).

    nice -n -5 python scripts/bench_outside_zoo.py [--per-family 10] [--seed 0] \
        [--out assets/latency/outside_zoo_cpu.jsonl.gz] [--checkpoint assets/latency/narformer_latency.pt] \
        [--train-data assets/latency/zoo_cpu.jsonl.gz] [--column cpu_median_ms] [--no-measure] [--json]

1. Measures ``--per-family`` networks of each family of ``latency/outside_zoo.py`` (seeded) into
   ``--out`` exactly as the zoo data set is measured (onnxruntime, 1 thread, batch 1, the same
   warm-up / repeats / minimum seconds, thread CPU time, load average per network), in the zoo
   file's line format. Resumable: networks already in the file are skipped. ``--no-measure``
   only evaluates what the file holds.
2. Loads the latency predictor ``--checkpoint`` (any kind ``latency train`` writes) and compares
   its predictions with the measured ``--column`` (default: the column the checkpoint was trained
   on): Kendall tau, MAPE, Acc(10%), over all outside networks and per family.
3. Does the same for the FLOPs regression fitted on ``--train-data`` (a zoo data set, same
   column), and gives the rank correlation of the raw MAC count, which needs no fitting.

Issue 3's target: tau >= 0.8 over all outside networks.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from narformer_core.latency import outside_zoo  # noqa: E402
from narformer_core.latency.dataset import DEFAULT_MEASURE  # noqa: E402

ASSETS = ROOT / "assets" / "latency"
TAU_TARGET = 0.8


def _metrics(pred, truth) -> dict:
    from narformer_core.metrics import acc_within, kendall_tau, mape

    pred, truth = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    return {"n": int(len(truth)), "kendall_tau": round(kendall_tau(pred, truth), 4),
            "mape": round(mape(pred, truth), 2), "acc10": round(acc_within(pred, truth), 1)}


def _rank_only(score, truth) -> dict:
    from narformer_core.metrics import kendall_tau

    return {"n": int(len(truth)), "kendall_tau": round(kendall_tau(score, truth), 4), "mape": None, "acc10": None}


def score(name: str, pred, truth, families, rank_only: bool = False) -> dict:
    f = _rank_only if rank_only else _metrics
    fams = np.asarray(families)
    return {"predictor": name, "all": f(pred, truth),
            "per_family": {str(k): f(np.asarray(pred)[fams == k], np.asarray(truth)[fams == k])
                           for k in sorted(set(fams.tolist()))}}


def evaluate(out: Path, checkpoint: Path | None, train_data: Path | None, column: str | None,
             families) -> dict:
    from narformer_core.features import static_features
    from narformer_core.latency.dataset import load_dataset
    from narformer_core.latency.predictors import FlopsRegression, load_predictor

    predictor = load_predictor(checkpoint) if checkpoint else None
    column = column or (predictor.meta.get("column") if predictor else None) or "cpu_median_ms"
    records, graphs, y = load_dataset(out, families=families, column=column)
    if not records:
        raise SystemExit(f"error: {out} holds no networks of the families {', '.join(families)}")
    fams = [r["family"] for r in records]
    here = records[0].get("platform_key")
    res: dict = {"data": str(out), "column": column, "n_networks": len(records), "platform_key": here,
                 "families": sorted(set(fams)),
                 "measured_from": min(r["measured_at"] for r in records),
                 "measured_to": max(r["measured_at"] for r in records),
                 "load_avg": {"min": min(r["load_avg"] for r in records), "median": float(np.median(
                     [r["load_avg"] for r in records])), "max": max(r["load_avg"] for r in records)},
                 "latency_ms": {"min": round(float(y.min()), 3), "median": round(float(np.median(y)), 3),
                                "max": round(float(y.max()), 3)},
                 "tau_target": TAU_TARGET, "results": [], "warnings": []}
    per_net = [{"spec_id": r["spec_id"], "family": r["family"], "description": r["description"],
                "measured_ms": round(float(t), 4), "macs": static_features(g)["flops"]}
               for r, g, t in zip(records, graphs, y)]
    if predictor is not None:
        meta = predictor.meta
        overlap = sorted(set(meta.get("families") or []) & set(fams))
        if overlap:
            res["warnings"].append(f"the checkpoint was trained on {overlap}: those are not outside networks for it")
        if meta.get("platform_key") and meta["platform_key"] != here:
            res["warnings"].append(f"the checkpoint predicts {meta['platform_key']}, the data is {here}")
        if meta.get("column") and meta["column"] != column:
            res["warnings"].append(f"the checkpoint predicts {meta['column']}, compared here with {column}")
        p = predictor.predict(graphs)
        res["checkpoint"] = {"path": str(checkpoint), "predictor": predictor.name,
                             **{k: meta.get(k) for k in ("dataset", "n_networks", "column", "platform_key",
                                                         "val_mape", "selected_epoch")}}
        res["results"].append(score(f"{predictor.name} ({Path(checkpoint).name})", p, y, fams))
        for row, v in zip(per_net, p):
            row["checkpoint_ms"] = round(float(v), 4)
    if train_data:
        trecs, tg, ty = load_dataset(train_data, column=column)
        tkey = trecs[0].get("platform_key") if trecs else None
        if tkey != here:
            res["warnings"].append(f"the FLOPs regression's training data is {tkey}, the outside data {here}")
        reg = FlopsRegression().fit(tg, ty)
        p = reg.predict(graphs)
        res["flops_regression"] = {"train_data": str(train_data), "n_train": len(tg)}
        res["results"].append(score(f"FLOPs regression ({Path(train_data).name}, {len(tg)} nets)", p, y, fams))
        for row, v in zip(per_net, p):
            row["flops_regression_ms"] = round(float(v), 4)
    res["results"].append(score("MACs alone (rank only)", [r["macs"] for r in per_net], y, fams, rank_only=True))
    res["networks"] = per_net
    return res


def table(res: dict) -> str:
    def cell(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [f"{res['n_networks']} outside-zoo networks of {Path(res['data']).name}, column {res['column']}, "
             f"platform {res['platform_key']}",
             f"measured {res['measured_from']} .. {res['measured_to']} UTC, load average "
             f"{res['load_avg']['min']}-{res['load_avg']['max']} (median {res['load_avg']['median']}); "
             f"latency {res['latency_ms']['min']}-{res['latency_ms']['max']} ms",
             f"{'predictor':48s} {'families':14s} {'n':>3s} {'tau':>7s} {'MAPE %':>8s} {'Acc10 %':>8s}"]
    for r in res["results"]:
        rows = [("all", r["all"])] + list(r["per_family"].items())
        for i, (fam, m) in enumerate(rows):
            lines.append(f"{r['predictor'] if i == 0 else '':48s} {fam:14s} {m['n']:3d} "
                         f"{m['kendall_tau']:7.3f} {cell(m['mape'], '8.1f'):>8s} {cell(m['acc10'], '8.1f'):>8s}")
    for r in res["results"][:1]:
        tau = r["all"]["kendall_tau"]
        lines.append(f"issue 3 target (tau >= {TAU_TARGET} over all outside networks) with {r['predictor']}: "
                     f"{'met' if tau >= TAU_TARGET else 'not met'} (tau {tau:.3f})")
    lines += [f"warning: {w}" for w in res["warnings"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-family", type=int, default=10, help="networks per outside family (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the draw (keep it to resume)")
    ap.add_argument("--families", default=",".join(outside_zoo.FAMILIES),
                    help=f"comma-separated subset of {', '.join(outside_zoo.FAMILIES)}")
    ap.add_argument("--out", default=str(ASSETS / "outside_zoo_cpu.jsonl.gz"), help="the measured outside set")
    ap.add_argument("--no-measure", action="store_true", help="only evaluate the networks already in --out")
    ap.add_argument("--checkpoint", default=str(ASSETS / "narformer_latency.pt"),
                    help="latency predictor checkpoint ('none' to skip)")
    ap.add_argument("--train-data", default=str(ASSETS / "zoo_cpu.jsonl.gz"),
                    help="zoo data set to fit the FLOPs regression on ('none' to skip)")
    ap.add_argument("--column", default=None, help="measured statistic to compare with (default: the "
                    "checkpoint's training column, else cpu_median_ms)")
    ap.add_argument("--threads", type=int, default=DEFAULT_MEASURE["threads"])
    ap.add_argument("--warmup", type=int, default=DEFAULT_MEASURE["warmup"])
    ap.add_argument("--repeats", type=int, default=DEFAULT_MEASURE["repeats"])
    ap.add_argument("--min-seconds", type=float, default=DEFAULT_MEASURE["min_seconds"])
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = ap.parse_args(argv)

    families = [f.strip() for f in args.families.split(",") if f.strip()]
    try:
        for f in families:
            outside_zoo._check_family(f)
    except ValueError as e:
        ap.error(str(e))
    out = Path(args.out)
    ckpt = None if args.checkpoint.lower() == "none" else Path(args.checkpoint)
    train = None if args.train_data.lower() == "none" else Path(args.train_data)
    for what, p in (("--checkpoint", ckpt), ("--train-data", train)):
        if p is not None and not p.is_file():
            ap.error(f"{what}: no file at {p}")

    build = None
    if not args.no_measure:
        build = outside_zoo.build_outside_set(
            out, args.per_family, seed=args.seed, families=families, progress=not args.quiet,
            measure={"threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
                     "min_seconds": args.min_seconds})
    elif not out.is_file():
        ap.error(f"--no-measure: no measured outside set at {out}")
    try:
        res = evaluate(out, ckpt, train, args.column, families)
    except ValueError as e:   # a bad checkpoint or data file: the loaders' messages say what is wrong
        print(f"error: {e}", file=sys.stderr)
        return 2
    if build is not None:
        res["build"] = build
    given = sys.argv[1:] if argv is None else list(argv)
    res["command"] = " ".join(["python", os.path.relpath(__file__, ROOT), *given])
    if args.json:
        print(json.dumps(res))
    else:
        print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
