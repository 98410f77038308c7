"""Build, resume or extend the measured latency data set (a thin wrapper of the CLI).

    python scripts/build_latency_dataset.py --n 2000 --out assets/latency/zoo_cpu.jsonl.gz
    python scripts/build_latency_dataset.py --extend 500 --out assets/latency/zoo_cpu.jsonl.gz
    python scripts/build_latency_dataset.py --remeasure 200 --from assets/latency/zoo_cpu.jsonl.gz \
        --out assets/latency/zoo_cpu_retest.jsonl.gz

Same options as ``python -m narformer_core latency build-dataset``; see ``--help``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from narformer_core.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["latency", "build-dataset", *sys.argv[1:]]))
