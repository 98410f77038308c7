"""Validation MAPE of the operator-cost sum with and without its channel-block split (session 20).

    python scripts/opcost_blocks_validation.py OUT.json

For the Intel labels (zoo2000_s19, refroll_ms) and the AMD set of record (zoo2000_s14,
refnorm_ms), bench seeds 0-2: the sum is fitted on each split's fit networks and scored on its
validation networks (the bench's own 10% of the training networks); test networks are not read.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from narformer_core.latency.dataset import load_dataset  # noqa: E402
from narformer_core.latency.op_cost import OperatorCostModel  # noqa: E402
from narformer_core.latency.predictors import _split_val  # noqa: E402
from narformer_core.latency.train_latency import family_split  # noqa: E402

SETS = (("assets/latency/zoo2000_s19.jsonl.gz", "refroll_ms"), ("assets/latency/zoo2000_s14.jsonl.gz", "refnorm_ms"))


def main(argv: list[str]) -> int:
    out = {}
    for path, column in SETS:
        records, graphs, y = load_dataset(ROOT / path, column=column)
        fam = np.array([r["family"] for r in records])
        for seed in (0, 1, 2):
            train, _ = family_split(fam, seed)
            fit, val = _split_val(len(train), seed)
            fit, val = train[fit], train[val]
            for blocks in (False, True):
                m = OperatorCostModel(channel_blocks=blocks).fit([graphs[i] for i in fit], y[fit])
                e = np.abs(m.predict_ms([graphs[i] for i in val]) / y[val] - 1)
                out[f"{Path(path).name} {column} seed{seed} blocks={blocks}"] = {
                    "val_mape": round(100 * e.mean(), 2),
                    "per_family": {f: round(100 * e[fam[val] == f].mean(), 1) for f in sorted(set(fam))}}
                print(f"{Path(path).name} seed {seed} channel_blocks={blocks}: validation MAPE {100 * e.mean():.2f}%",
                      flush=True)
    if argv:
        Path(argv[0]).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
