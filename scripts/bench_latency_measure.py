"""The noise floor of latency measurement on this machine.

Measures one small ONNX model (three 3x3 convolutions on a 16x32x32 map, the size of an NB201
cell's first stage) several times in a row with ``measure_onnx`` and prints each run's median
and spread, then how much the medians of back-to-back runs disagree. A latency difference
smaller than that run-to-run figure cannot be told apart from machine noise. The max column
shows the occasional run that the OS pre-empted: it inflates std, not the median or IQR.

    python scripts/bench_latency_measure.py [--runs 5] [--threads 1] [--repeats 30] [--model x.onnx]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from narformer_core.latency.measure import measure_onnx  # noqa: E402


def small_conv_model(channels: int = 16, size: int = 32, layers: int = 3) -> bytes:
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.1
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, w.shape, w.ravel().tolist()))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x = f"r{i}"
    graph = helper.make_graph(
        nodes, "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", channels, size, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--model", help="an ONNX file to measure instead of the built-in conv stack")
    args = ap.parse_args()

    model = Path(args.model) if args.model else small_conv_model()
    medians = []
    for r in range(args.runs):
        m = measure_onnx(model, threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                         batch_size=args.batch_size)
        medians.append(m.median_ms)
        if r == 0:
            print(f"platform {m.platform_key} ({m.platform['cpu']}, {m.platform['usable_cores']} usable cores)")
            print(f"{'run':>3} {'median':>9} {'min':>9} {'p90':>9} {'max':>9} {'std':>8} {'IQR':>8} {'IQR/med':>8}")
        print(f"{r + 1:>3} {m.median_ms:>8.4f}ms {m.min_ms:>8.4f}ms {m.p90_ms:>8.4f}ms {max(m.samples_ms):>8.4f}ms "
              f"{m.std_ms:>7.4f}ms {m.iqr_ms:>7.4f}ms {m.iqr_ms / m.median_ms:>7.1%}")

    med = np.asarray(medians)
    steps = np.abs(np.diff(med)) / med[:-1]
    print(f"medians: mean {med.mean():.4f} ms, run-to-run coefficient of variation {med.std(ddof=1) / med.mean():.1%}"
          if len(med) > 1 else f"median {med[0]:.4f} ms")
    if len(med) > 1:
        print(f"relative difference between consecutive runs: "
              f"{', '.join(f'{s:.1%}' for s in steps)} (max {steps.max():.1%})")
        print(f"range of medians (max - min) / min: {(med.max() - med.min()) / med.min():.1%}")


if __name__ == "__main__":
    main()
