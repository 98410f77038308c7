"""How much of a latency checkpoint's test error is the labels' timing noise, and how much its own?

    python scripts/error_decomposition.py [assets/latency/narformer_latency.pt]

A label of record is the mean (in log) of two timing passes, A and C (``pass_refnorm_ms``, or
``pass_refroll_ms`` for a checkpoint fitted on ``refroll_ms``). If each
pass's log time is the network's reproducible time plus independent noise of spread s, then
var(log A - log C) = 2 s^2, the two-pass label carries s^2 / 2 of it, and the checkpoint's
squared log error against the label is m^2 + s^2 / 2, where m is its own error against the
reproducible time (which also holds any per-network effect that repeats in every pass). Solving
for m on the checkpoint's 200 held-out networks, and s over all 2,000 networks, gives what k
passes per label would leave: sqrt(m^2 + s^2 / k). Root-mean-square errors of logs, offsets
removed; MAPE is about 0.8x the RMS on these networks (printed).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from narformer_core import app_services as svc  # noqa: E402
from narformer_core.latency.dataset import load_records, record_graph  # noqa: E402
from narformer_core.latency.predictors import load_predictor  # noqa: E402


def _rms(x: np.ndarray) -> float:
    x = x - x.mean()
    return float(np.sqrt(np.mean(x ** 2)))


def main(argv: list[str]) -> int:
    ckpt = Path(argv[0]) if argv else svc.PROJECT_ROOT / "assets" / "latency" / "narformer_latency.pt"
    pred_model = load_predictor(ckpt)
    reference = svc.latency_reference_file(pred_model.meta)
    records = load_records(reference)
    rows = svc.held_out_rows(pred_model.meta, reference, len(records))
    column = str(pred_model.meta.get("column", "refnorm_ms"))
    each_pass = f"pass_{column}"        # pass_refnorm_ms / pass_refroll_ms: the label's own passes
    if rows is None or not all(len(r.get(each_pass) or []) == 2 for r in records):
        print(f"{ckpt.name}: needs its own two-pass data set ({each_pass}) and its held-out rows")
        return 2
    pred = svc.heldout_predictions(ckpt, reference, column, rows)
    if pred is None:
        pred = pred_model.predict([record_graph(records[i]) for i in rows])
    passes = np.log(np.array([records[i][each_pass] for i in rows]))
    label = passes.mean(1)
    lp = np.log(pred)
    all_passes = np.log(np.array([r[each_pass] for r in records]))
    s2 = _rms(all_passes[:, 0] - all_passes[:, 1]) ** 2 / 2
    total = _rms(lp - label)
    m2 = max(total ** 2 - s2 / 2, 0.0)
    mape = float(np.mean(np.abs(pred / np.exp(label) - 1)) * 100)
    ratio = mape / 100 / total
    print(f"{ckpt.name} on its {len(rows)} held-out networks of {reference.name}")
    print(f"  RMS log error against the two-pass labels {total:.4f} (MAPE {mape:.2f}%, MAPE/RMS {ratio:.2f}); "
          f"against pass A alone {_rms(lp - passes[:, 0]):.4f}, pass C alone {_rms(lp - passes[:, 1]):.4f}")
    print(f"  one pass's timing noise s = {np.sqrt(s2):.4f} (all {len(records)} networks); "
          f"in a two-pass label {np.sqrt(s2 / 2):.4f}")
    print(f"  the checkpoint's own error m = {np.sqrt(m2):.4f} (~{np.sqrt(m2) * ratio * 100:.2f}% MAPE)")
    for k in (2, 4, 8, 16):
        e = np.sqrt(m2 + s2 / k)
        print(f"  labels of {k:>2} passes: expected RMS {e:.4f}, MAPE ~{e * ratio * 100:.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
