"""Coverage-guided fuzzing (atheris, libFuzzer) of the upload path and the cell parsers.

    pip install atheris            # optional; a binary wheel exists for CPython 3.11 on Linux x86-64
    python scripts/fuzz_atheris.py onnx  -atheris_runs=20000
    python scripts/fuzz_atheris.py nb201 -atheris_runs=200000
    python scripts/fuzz_atheris.py nb101 -atheris_runs=200000

Complements scripts/fuzz_report.py (seeded, structured mutations through the command line and
the app): here libFuzzer mutates bytes guided by which lines of narformer_core they reach. A
finding is any exception other than GraphError / ValueError (the errors the app shows as a
sentence), or one of those with an empty message; libFuzzer then stops and writes the input to
``crash-*`` in the working folder. Every other libFuzzer flag (``-max_total_time=60``,
``-max_len=65536``, a corpus folder) is passed through.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:
    import atheris
except ImportError:
    sys.exit("atheris is not installed: pip install atheris (optional; scripts/fuzz_report.py needs nothing extra)")

with atheris.instrument_imports(include=["narformer_core"]):
    # Imported here, not lazily by app_services, so that their lines are instrumented too.
    from narformer_core import features, network_tokenizer, onnx_import, tokenizer  # noqa: F401
    from narformer_core import app_services as svc
    from narformer_core.graph import GraphError
    from narformer_core.spaces import nb101, nb201


def _check(fn, *args):
    try:
        return fn(*args)
    except (GraphError, ValueError) as e:
        if not str(e).strip():
            raise AssertionError(f"{type(e).__name__} without a message") from e
        return None


def one_onnx(data: bytes) -> None:
    g = _check(svc.import_onnx, data)
    if g is not None:                          # what the page does next with an accepted upload
        svc.network_token_matrix(g)
        _check(svc.static_features, g)


def one_nb201(data: bytes) -> None:
    g = _check(nb201.to_graph, data.decode("utf-8", "replace"))
    if g is not None:
        svc.cell_token_matrix(g)


def one_nb101(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    n = fdp.ConsumeIntInRange(0, 9)
    matrix = [[fdp.PickValueInList([0, 1, 1, 0, 2, -1, 0.5]) for _ in range(n)] for _ in range(n)]
    ops = [fdp.PickValueInList(["input", "output", *nb101.OPS, "conv5x5", ""])
           for _ in range(fdp.ConsumeIntInRange(0, 9))]
    g = _check(svc.nb101_graph, matrix, ops)
    if g is not None:
        svc.cell_token_matrix(g)


def _seed_corpus(folder: Path, target: str) -> None:
    """Start from valid inputs (small ONNX models, arch strings), so mutations begin inside the format."""
    import numpy as np

    from narformer_core.fuzz import base_models

    folder.mkdir(parents=True, exist_ok=True)
    if target == "onnx":
        seeds = [m.SerializeToString() for m in base_models()]
    elif target == "nb201":
        rng = np.random.default_rng(0)
        seeds = [nb201.to_arch_str(nb201.sample(rng)).encode() for _ in range(8)]
    else:
        seeds = []
    for k, data in enumerate(seeds):
        (folder / f"seed{k}").write_bytes(data)


def main() -> None:
    targets = {"onnx": one_onnx, "nb201": one_nb201, "nb101": one_nb101}
    if len(sys.argv) < 2 or sys.argv[1] not in targets:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(targets)}}} [libFuzzer flags]")
    target = sys.argv[1]
    args = [sys.argv[0], *sys.argv[2:]]
    if target != "nb101" and not any(not a.startswith("-") for a in sys.argv[2:]):
        import tempfile
        corpus = Path(tempfile.mkdtemp(prefix=f"narformer-atheris-{target}-"))   # libFuzzer adds its finds here
        _seed_corpus(corpus, target)
        args.append(str(corpus))
    atheris.Setup(args, targets[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
