"""Latency benchmarks (a thin wrapper of ``python -m narformer_core bench latency``).

    python scripts/bench_latency.py                      # in-domain + leave-one-family-out table
    python scripts/bench_latency.py --json --out results.json
    python scripts/bench_latency.py --nb201 --devices gold_6226,pixel3   # NB201 cells per device

Options as ``python -m narformer_core bench latency``: --dataset, --predictors, --epochs,
--target, --model-json, --narformer-json, --nnlp-json, --no-lofo, --lofo-families, --nb201,
--devices, --fractions, --results.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from narformer_core.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "latency", *sys.argv[1:]]))
