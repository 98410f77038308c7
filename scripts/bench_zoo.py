"""Export time and onnxruntime CPU latency of a few zoo networks per family.

    python scripts/bench_zoo.py [--per-family 2] [--seed 0] [--threads 1] [--runs 10]

For each spec: MACs, ONNX size and node count, export_onnx wall time, and the median of
``--runs`` timed runs (after 3 warm-up runs) of one batch-1 inference with onnxruntime's
CPUExecutionProvider on ``--threads`` intra-op threads. Figures depend on the machine and on
what else it runs at the time: /proc/loadavg is printed with them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from narformer_core.latency import zoo  # noqa: E402


def ort_latency_ms(blob: bytes, shape, threads: int, runs: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(3):
        sess.run(None, {"input": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"input": x})
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-family", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()

    import onnx

    specs = zoo.sample_specs(args.per_family * len(zoo.FAMILIES), args.seed)
    zoo.export_onnx(specs[0])  # first call pays torch's one-off start-up costs
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"# {len(specs)} specs, seed {args.seed}, onnxruntime {args.threads} thread(s), "
          f"median of {args.runs}; load average {' '.join(load)}, {os.cpu_count()} CPUs")
    print(f"{'family':16s} {'id':12s} {'MMAC':>7s} {'MB':>6s} {'nodes':>5s} {'export s':>8s} "
          f"{'latency ms':>10s}  spec")
    rows = []
    for spec in sorted(specs, key=lambda s: (s["family"], zoo.estimate_macs(s))):
        t = time.perf_counter()
        blob = zoo.export_onnx(spec)
        export_s = time.perf_counter() - t
        nodes = len(onnx.load_from_string(blob).graph.node)
        lat = ort_latency_ms(blob, zoo.input_shape(spec), args.threads, args.runs)
        macs = zoo.estimate_macs(spec)
        rows.append((spec["family"], export_s, lat))
        print(f"{spec['family']:16s} {zoo.spec_id(spec)} {macs / 1e6:7.0f} {len(blob) / 1e6:6.1f} "
              f"{nodes:5d} {export_s:8.2f} {lat:10.1f}  {zoo.describe(spec)}", flush=True)
    ex = [r[1] for r in rows]
    la = [r[2] for r in rows]
    print(f"# export {min(ex):.2f}..{max(ex):.2f} s (median {statistics.median(ex):.2f}); "
          f"latency {min(la):.1f}..{max(la):.1f} ms")


if __name__ == "__main__":
    main()
