"""Store each latency checkpoint's predictions of the networks it held out, beside it.

    python scripts/precompute_latency_heldout.py [assets/latency/*.pt]

The Latency lab scores a checkpoint on the networks of its own data set it never trained on; the
shipped six-network ensemble takes about 4 s of one core to predict those 200 networks, on every
first visit. The page uses ``<checkpoint stem>.heldout.json`` instead when that file names the
checkpoint's SHA-256, the same reference set, statistic and rows (``app_services.heldout_predictions``);
otherwise it predicts as before. Rerun after replacing a checkpoint.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from narformer_core import app_services as svc  # noqa: E402
from narformer_core.latency.predictors import load_predictor  # noqa: E402


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or svc.latency_checkpoints()
    for path in paths:
        pred = load_predictor(path)
        reference = svc.latency_reference_file(pred.meta)
        plat, column = pred.meta.get("platform_key"), str(pred.meta.get("column", "median_ms"))
        df = svc.latency_dataset(plat, column, reference)
        rows = svc.held_out_rows(pred.meta, reference, len(df))
        if rows is None:
            print(f"{path.name}: its held-out networks are not known here; nothing stored")
            continue
        ms = svc.predict_latency(pred, list(df["graph"].to_numpy()[rows]))
        out = svc.write_heldout_predictions(path, reference, column, rows, ms)
        print(f"{path.name}: {len(rows)} held-out networks of {reference.name} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
