"""Validation and test figures of in-domain latency checkpoints (``bench latency --save-in-domain``,
or ``latency merge`` of such files), recomputed from the data set they name.

The bench records which networks a fit was tested on (``test_indices``) and its split seed; the
validation networks are the fit's own 10% of the rest (``_split_val``), so both sets can be rebuilt
and a checkpoint made after the bench (a merged ensemble) scored exactly as the bench scores fits.
Validation: MAPE over the 180 validation networks (what selection reads); test: the bench's mean
over families of per-family MAPE and Acc(10%).

    python scripts/score_in_domain_checkpoint.py CKPT [CKPT ...] [--add-prior] [--json]

A NAR-Former fit with the cost-sum prior (``--prior-blend``) is scored twice: as fitted and with
the prior's weight set to 0 (the ensemble alone). ``--add-prior`` gives a fit made without the
option its prior the way the option would have (the cost sum fitted on the fit's training
networks, the weight picked on its validation networks; session 21), and scores both.
Checkpoints of fits with ``--extra-train`` name those files; their networks join the training ones.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from narformer_core.latency.dataset import extra_train_paths, load_dataset  # noqa: E402
from narformer_core.latency.predictors import _split_val, load_predictor  # noqa: E402
from narformer_core.latency.train_latency import _scores, family_split  # noqa: E402
from narformer_core.metrics import mape  # noqa: E402


def _figures(p, graphs, y, fam, val, test) -> dict:
    pv = p.predict([graphs[i] for i in val])
    pt = p.predict([graphs[i] for i in test])
    per = _scores(pt, y[test], fam[test])
    return {"val_mape": round(mape(pv, y[val]), 3),
            "test_mape": round(float(np.mean([v["mape"] for v in per.values()])), 3),
            "test_acc10": round(float(np.mean([v["acc10"] for v in per.values()])), 2), "per_family": per}


def score(path: str, add_prior: bool = False) -> dict:
    p = load_predictor(path)
    meta = p.meta
    for key in ("dataset", "column", "bench_seed", "test_indices"):
        if key not in meta:
            raise SystemExit(f"{path}: not an in-domain bench checkpoint (no {key!r} in its metadata)")
    records, graphs, y = load_dataset(meta["dataset"], column=meta["column"])
    fam = np.array([r["family"] for r in records])
    seed = int(meta["bench_seed"])
    train, test = family_split(fam, seed)
    if test.tolist() != list(meta["test_indices"]):
        raise SystemExit(f"{path}: its test networks are not bench seed {seed}'s split of {meta['dataset']}")
    fit, val = _split_val(len(train), seed)
    fit, val = train[fit], train[val]
    as_fitted = _figures(p, graphs, y, fam, val, test)
    out = {"checkpoint": str(path), "bench_seed": seed, "members": meta.get("members", 1),
           "recorded_val_mape": meta.get("val_mape"), **as_fitted}
    had_prior = getattr(p, "prior_model", None) is not None
    if add_prior and getattr(p, "prior_model", 1) is None:
        fit_graphs, fit_y = [graphs[i] for i in fit], y[fit]
        for extra in extra_train_paths(meta):
            _, xg, xy = load_dataset(extra, column=meta["column"])
            fit_graphs, fit_y = fit_graphs + xg, np.concatenate([fit_y, xy])
        curve = p.fit_prior(fit_graphs, fit_y, [graphs[i] for i in val], y[val])
        out["prior_added"] = {"val_curve": {f"{w:g}": round(v, 3) for w, v in curve.items()}}
    if getattr(p, "prior_model", None) is not None:
        # The figures as fitted are one of the two rows already: only the other is predicted.
        w = p.prior_weight
        if not had_prior:
            out["with_prior"], out["without_prior"] = {"prior_weight": w, **_figures(p, graphs, y, fam, val, test)}, as_fitted
        else:
            p.prior_weight = 0.0
            out["with_prior"], out["without_prior"] = {"prior_weight": w, **as_fitted}, _figures(p, graphs, y, fam, val, test)
            p.prior_weight = w
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--add-prior", action="store_true",
                    help="fit the cost-sum prior onto NAR-Former fits made without it, and score both")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = [score(c, args.add_prior) for c in args.checkpoints]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            print(f"{Path(r['checkpoint']).name}: bench seed {r['bench_seed']}, {r['members']} network(s); "
                  f"validation {r['val_mape']:.3f}%, test {r['test_mape']:.3f}% / Acc(10%) {r['test_acc10']:.1f}%")
            if "with_prior" in r:
                a, b = r["with_prior"], r["without_prior"]
                print(f"  with the cost-sum prior (weight {a['prior_weight']:g}): validation {a['val_mape']:.3f}%, "
                      f"test {a['test_mape']:.3f}% / {a['test_acc10']:.1f}%; without: validation {b['val_mape']:.3f}%, "
                      f"test {b['test_mape']:.3f}% / {b['test_acc10']:.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
