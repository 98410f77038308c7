"""Store every NB201 cell's prediction beside shipped checkpoints (NAME.predictions.npz).

    python scripts/precompute_predictions.py assets/checkpoints/nb201-781.pt assets/checkpoints/nb201-1563.pt

The app uses the file only while the checkpoint's bytes (sha256) and the prediction code version
match (narformer_core.app_services.precomputed_predictions); otherwise it predicts as before.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from narformer_core import app_services as svc  # noqa: E402


def main() -> None:
    for path in sys.argv[1:]:
        t0 = time.perf_counter()
        pred = svc.predict_all(svc.load_predictor(path))
        out = svc.write_precomputed_predictions(path, pred)
        print(f"{out}: {len(pred):,} predictions in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
