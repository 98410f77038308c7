"""Speed-up of data-parallel training (torchrun, N processes) over one process, same config.

    python scripts/bench_ddp.py [--nproc 2] [--train-size 781] [--epochs 5] [--json]

Runs `python -m narformer_core train` three ways, each a fresh run folder:
  1proc-1thread    one process, one torch thread
  1proc-Nthreads   one process, N torch threads (the whole machine to one process); --skip-threaded
                   leaves it out: on a loaded machine its OpenMP threads wait on each other and one
                   epoch took 157 s instead of 6 s with one thread here
  Nproc            torchrun --nproc_per_node=N, one thread per process (train.py's default)
and reads each run's metrics.jsonl. Throughput is training pairs (an architecture and its
augmented twin) per second: train size / epoch seconds, the median over epochs 2..E (the first
carries warm-up). An epoch's seconds include one validation pass of --val-size cells on rank 0.
The figures depend on what else the machine is doing: the load average is printed with them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launcher(nproc: int) -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    base = [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return base + ["--standalone", f"--nproc_per_node={nproc}", "-m", "narformer_core"]


def run(name: str, prefix: list[str], threads: int, train_args: list[str], out: Path, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    cmd = prefix + ["train", *train_args, "--out", str(out / name), "--fresh", "--quiet", "--json"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{name} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    rows = [json.loads(ln) for ln in (out / name / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    walls = [r["wall_s"] for r in rows]
    epoch_s = [b - a for a, b in zip(walls, walls[1:])]        # epochs 2..E
    med = statistics.median(epoch_s)
    config = json.loads((out / name / "config.json").read_text())
    for k in ("distributed", "threads"):
        config.pop(k, None)
    return {"config": config, "run": name, "threads_per_process": threads, "epoch_seconds": [round(x, 3) for x in epoch_s],
            "median_epoch_s": round(med, 4), "final_loss": rows[-1]["loss"], "process_wall_s": round(wall, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--train-size", type=int, default=781)
    ap.add_argument("--val-size", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--model-json", default=None, help="model overrides (default: the preset's model)")
    ap.add_argument("--labels", default="analog")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    ap.add_argument("--skip-threaded", action="store_true", help="leave out the 1-process N-thread run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.epochs < 3:
        raise SystemExit("--epochs must be at least 3 (the first epoch is left out of the median)")

    train_args = ["--space", "nb201", "--labels", args.labels, "--train-size", str(args.train_size),
                  "--val-size", str(args.val_size), "--batch-size", str(args.batch_size),
                  "--epochs", str(args.epochs), "--preset", args.preset, "--device", "cpu"]
    if args.model_json:
        train_args += ["--model-json", args.model_json]
    n = args.nproc
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        single = [sys.executable, "-m", "narformer_core"]
        res = [run("1proc-1thread", single, 1, train_args, out, args.timeout)]
        if not args.skip_threaded:
            res.append(run(f"1proc-{n}threads", single, n, train_args, out, args.timeout))
        res.append(run(f"{n}proc", launcher(n), 1, train_args, out, args.timeout))
    load_after = os.getloadavg()
    configs = [r.pop("config") for r in res]
    if any(c != configs[0] for c in configs):
        diff = {k: [c.get(k) for c in configs] for k in configs[0] if len({json.dumps(c.get(k)) for c in configs}) > 1}
        raise SystemExit(f"the runs trained with different settings {diff}: was the code edited during the benchmark?")
    for r in res:
        r["pairs_per_s"] = round(args.train_size / r["median_epoch_s"], 1)
    base1, ddp = res[0], res[-1]
    report = {"config": {**vars(args), "cores": os.cpu_count()}, "runs": res,
              "speedup_vs_1proc_1thread": round(ddp["pairs_per_s"] / base1["pairs_per_s"], 3),
              "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in load_after]}
    if not args.skip_threaded:
        report[f"speedup_vs_1proc_{n}threads"] = round(ddp["pairs_per_s"] / res[1]["pairs_per_s"], 3)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for r in res:
            print(f"{r['run']:>16}: {r['pairs_per_s']:8.1f} pairs/s  (median epoch {r['median_epoch_s']:.3f} s, "
                  f"epochs {r['epoch_seconds']})")
        line = f"speed-up of {n} processes: x{report['speedup_vs_1proc_1thread']} over 1 process x 1 thread"
        if not args.skip_threaded:
            line += f", x{report[f'speedup_vs_1proc_{n}threads']} over 1 process x {n} threads"
        print(line)
        print(f"load average before {report['loadavg_before']}, after {report['loadavg_after']} "
              f"({os.cpu_count()} cores; other jobs share this machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
