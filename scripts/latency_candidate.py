"""Fit one NAR-Former latency configuration on the in-domain split of `bench latency` and save
its figures: the quick loop used in session 9 to compare configurations (assets/latency/README.md).

    OMP_NUM_THREADS=1 python scripts/latency_candidate.py '{"model": {...}, "train": {...}, "node_raw": true}' OUT.json

The JSON holds `NARFormerLatency` keyword arguments (plus "kind" for another predictor). Same
split as `bench latency --seed 0` (90/10 per family; 10% of the training networks held out for
selection). Only the validation MAPE is printed, the figure configurations are chosen by; OUT.json
also keeps the test MAPE and Acc(10%), to be read after the choice.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from narformer_core.latency.dataset import load_dataset            # noqa: E402
from narformer_core.latency.predictors import make_predictor       # noqa: E402
from narformer_core.latency.train_latency import family_split      # noqa: E402
from narformer_core.metrics import acc_within, mape                # noqa: E402

DATASET = "assets/latency/zoo2000_cpu_best3.jsonl.gz"


def main(argv) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    options, out = json.loads(argv[0]), Path(argv[1])
    records, graphs, y = load_dataset(DATASET, column="min_ms")
    train, test = family_split(np.array([r["family"] for r in records]), 0)
    predictor = make_predictor(options.pop("kind", "narformer"), **options)
    t0 = time.perf_counter()
    predictor.fit([graphs[i] for i in train], y[train], seed=0)
    pred = predictor.predict([graphs[i] for i in test])
    res = {"cfg": argv[0], "val_mape": predictor.meta.get("val_mape"), "epoch": predictor.meta.get("selected_epoch"),
           # with "members": the ensemble's figure above, each member's own here (the selection rules' figure)
           "member_val_mape": predictor.meta.get("member_val_mape"),
           "seconds": round(time.perf_counter() - t0, 1), "test_mape": mape(pred, y[test]),
           "test_acc10": acc_within(pred, y[test]),
           # the validation curve (raw and EMA weights per evaluated epoch): how long to train
           "history": getattr(predictor, "summary", {}).get("history")}
    out.write_text(json.dumps(res))
    members = res["member_val_mape"]
    each = f"; members {', '.join(f'{v:.2f}' for v in members)} (mean {np.mean(members):.2f}%)" if members else ""
    print(f"validation MAPE {res['val_mape']:.2f}% (epoch {res['epoch']}){each}, {res['seconds']} s; test figures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
