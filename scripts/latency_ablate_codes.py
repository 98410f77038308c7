"""Diagnostic (session 10): `latency_candidate.py` with the sin/cos codes of the attribute and
output-shape slots (slots 3-14) of every node token set to zero, so the model sees the op type,
position and source codes and, with "node_raw", the plain per-operator numbers. It asks whether
those codes are where NAR-Former overfits the 1,620 training networks (they were not:
assets/latency/README.md, session 10). Not an option of the predictor.

    OMP_NUM_THREADS=1 python scripts/latency_ablate_codes.py [--slots FIRST-LAST] '{"model": {...}, ...}' OUT.json

`--slots 1-2` (session 11) zeroes the self-position and source-position codes instead: with
`graph_ffn` the model still sees the edges, but no token can be told apart by its index.
"""
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import narformer_core.latency.predictors as predictors  # noqa: E402
from narformer_core.network_tokenizer import SLOT_DIM   # noqa: E402

FIRST, LAST = 3, 14          # kernel .. the last output-shape value (network_tokenizer slot order)
_tokens = predictors._network_tokens


def _without_attribute_codes(g, scheme="nerf"):
    depth, nodes, static = _tokens(g, scheme)
    nodes = nodes.copy()
    nodes[:-1, FIRST * SLOT_DIM:(LAST + 1) * SLOT_DIM] = 0      # the end token keeps its code
    return depth, nodes, static


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--slots"]:
        FIRST, LAST = (int(v) for v in args[1].split("-"))
        args = args[2:]
    predictors._network_tokens = _without_attribute_codes
    sys.argv = [str(ROOT / "scripts" / "latency_candidate.py")] + args
    runpy.run_path(sys.argv[0], run_name="__main__")
