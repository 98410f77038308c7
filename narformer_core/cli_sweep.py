"""A sweep: one training per (train size, seed), each its own subprocess and run folder.

  python -m narformer_core sweep --space nb201 --train-sizes 100,781 --seeds 0,1,2 --epochs 200 \\
      --out runs/sweep1 --jobs 2

Layout: <out>/n<size>-s<seed>/ is an ordinary run folder (train.py) plus train.log (the child's
stderr, appended across attempts), train.out (its stdout) and evaluation.json (Kendall's tau of
the checkpoint selected on validation, on all cells and on the unseen ones). <out>/sweep.json
and <out>/sweep.csv summarise every run.

Running the same command again continues the sweep: a finished run (summary.json present) is
skipped, an interrupted one resumes from its latest.pt, a failed one is tried again. A child that
crashes is reported with the tail of its stderr; the others go on; the exit status is 1 if any
run failed.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

CSV_COLUMNS = ("train_size", "seed", "state", "selected", "checkpoint", "val_tau", "kendall_tau_all",
               "kendall_tau_unseen", "train_seconds", "epochs", "run_dir")
# Training flags passed through to every child, as (sweep attribute, train flag).
_PASS = (("labels", "--labels"), ("test_labels", "--test-labels"), ("val_size", "--val-size"),
         ("preset", "--preset"), ("epochs", "--epochs"), ("batch_size", "--batch-size"), ("lr", "--lr"),
         ("dropout", "--dropout"), ("model_json", "--model-json"), ("device", "--device"),
         ("data_dir", "--data-dir"), ("weight_decay", "--weight-decay"), ("lambda_rank", "--lambda-rank"),
         ("rank_loss", "--rank-loss"), ("lambda_cons", "--lambda-cons"))


def run_name(train_size: int, seed: int) -> str:
    return f"n{int(train_size)}-s{int(seed)}"


def register(subparsers, bench_parser) -> None:
    from .cli import add_protocol_args

    p = subparsers.add_parser("sweep", help="train one run per (train size, seed) as subprocesses; resumable")
    p.add_argument("--space", default="nb201", choices=["nb201", "nb101"])
    p.add_argument("--train-sizes", required=True, help="comma-separated train sizes, e.g. 100,781")
    p.add_argument("--seeds", default="0", help="seeds, '0,1,2' or '0-9' (default 0)")
    p.add_argument("--out", required=True, help="sweep folder; one run folder per (train size, seed) inside")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per training (default: cores // jobs, at least 1)")
    add_protocol_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--json", action="store_true", help="print sweep.json instead of a table")
    p.set_defaults(func=cmd_sweep)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _requested_config(args, train_size: int, seed: int) -> dict:
    """The TrainConfig a child will build (validates --model-json etc. before anything starts)."""
    from .cli import _train_config

    ns = argparse.Namespace(**{**vars(args), "train_size": train_size, "seed": seed, "test_every": 0})
    return json.loads(json.dumps(_train_config(ns).to_dict()))


def _other_settings(run_dir: Path, want: dict) -> dict:
    """Settings a finished run folder was trained with that differ from this sweep's."""
    from .train import RESUMABLE_CHANGES

    try:
        old = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    diff = {}
    for k, v in want.items():
        if k in RESUMABLE_CHANGES or (k in ("labels", "test_labels") and v is None):
            continue
        if k == "model":
            for mk, mv in v.items():
                if old.get("model", {}).get(mk) != mv:
                    diff[f"model.{mk}"] = (old.get("model", {}).get(mk), mv)
        elif old.get(k) != v:
            diff[k] = (old.get(k), v)
    return diff


def _child_command(args, train_size: int, seed: int, run_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "narformer_core", "train", "--space", args.space,
           "--train-size", str(train_size), "--seed", str(seed), "--out", str(run_dir), "--quiet", "--json"]
    for attr, flag in _PASS:
        v = getattr(args, attr)
        if v is not None:
            cmd += [flag, str(v)]
    if args.twin_grad is not None:
        cmd.append("--twin-grad" if args.twin_grad else "--no-twin-grad")
    return cmd


def _live_trainer(run_dir: Path) -> int | None:
    """The pid of a training still running in ``run_dir`` (e.g. left by a killed sweep), if any."""
    from .runs import pid_alive

    try:
        status = json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None
    pid = status.get("pid")
    if status.get("state") == "running" and pid != os.getpid() and pid_alive(pid, expect="narformer_core"):
        return int(pid)
    return None


def _tail(path: Path, start: int, max_chars: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return text[-max_chars:].strip()


class _Children:
    """Running child processes, so an interrupted sweep can stop them with one SIGINT each."""

    def __init__(self):
        self.lock, self.procs, self.closing = threading.Lock(), set(), False

    def run(self, cmd, env, stdout, stderr) -> int:
        with self.lock:
            if self.closing:
                return -signal.SIGINT
            # Own session: a Ctrl-C reaches only the sweep, which forwards exactly one SIGINT.
            proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            self.procs.add(proc)
        try:
            return proc.wait()
        finally:
            with self.lock:
                self.procs.discard(proc)

    def interrupt(self) -> None:
        with self.lock:
            self.closing = True
            for p in self.procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)


def _train_one(args, children: _Children, train_size: int, seed: int, env: dict, log) -> dict:
    run_dir = Path(args.out) / run_name(train_size, seed)
    row = {"train_size": train_size, "seed": seed, "run_dir": str(run_dir)}
    want = _requested_config(args, train_size, seed)
    if (run_dir / "summary.json").exists():
        diff = _other_settings(run_dir, want)
        if diff:
            return {**row, "state": "failed", "error": f"{run_dir} was trained with other settings {diff} "
                                                      "(folder, requested); use another --out or delete it"}
        return {**row, "state": "finished", "skipped": True}
    running = _live_trainer(run_dir)
    if running:
        # Two trainings writing one folder would splice their logs and checkpoints.
        return {**row, "state": "failed", "error": f"a training (pid {running}) is still running in {run_dir}"}
    run_dir.mkdir(parents=True, exist_ok=True)
    row["resumed"] = (run_dir / "latest.pt").exists()
    err_path, out_path = run_dir / "train.log", run_dir / "train.out"
    start = err_path.stat().st_size if err_path.exists() else 0
    t0 = time.perf_counter()
    log(f"start {run_name(train_size, seed)}" + (" (resuming)" if row["resumed"] else ""))
    with open(err_path, "ab") as err, open(out_path, "wb") as out:
        rc = children.run(_child_command(args, train_size, seed, run_dir), env, out, err)
    row["wall_seconds"] = round(time.perf_counter() - t0, 2)
    if rc == 0 and not (run_dir / "summary.json").exists():
        return {**row, "state": "stopped", "returncode": rc,
                "error": "training stopped before its last epoch (STOP file); rerun the sweep to resume"}
    if rc != 0:
        how = f"exit status {rc}" if rc > 0 else f"killed by signal {-rc}"
        return {**row, "state": "failed" if rc > 0 else "stopped", "returncode": rc,
                "error": f"training {how}", "stderr_tail": _tail(err_path, start)}
    return {**row, "state": "finished", "skipped": False}


def _evaluate(row: dict, args) -> dict:
    """Kendall's tau of the selected checkpoint, cached in evaluation.json beside it."""
    from .cli import evaluate_checkpoint, selected_checkpoint

    run_dir = Path(row["run_dir"])
    summary = json.loads((run_dir / "summary.json").read_text())
    ckpt = selected_checkpoint(run_dir, summary)
    cache = run_dir / "evaluation.json"
    res = None
    if cache.exists() and cache.stat().st_mtime >= (run_dir / "summary.json").stat().st_mtime:
        try:
            res = json.loads(cache.read_text())
        except ValueError:
            res = None
    if res is None:
        res = evaluate_checkpoint(ckpt, None, args.test_labels, args.data_dir)
        tmp = cache.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(res, indent=2))
        os.replace(tmp, cache)
    return {**row, "selected": summary.get("selected"), "checkpoint": ckpt.name, "val_tau": summary.get("val_tau"),
            "kendall_tau_all": res.get("kendall_tau_all"), "kendall_tau_unseen": res.get("kendall_tau_unseen"),
            "train_seconds": summary.get("train_seconds"), "epochs": summary.get("epochs")}


def _aggregate(rows: list[dict]) -> dict:
    import numpy as np

    out = {}
    for n in sorted({r["train_size"] for r in rows}):
        vals = [r["kendall_tau_unseen"] for r in rows if r["train_size"] == n and r.get("kendall_tau_unseen") is not None]
        if vals:
            out[str(n)] = {"runs": len(vals), "kendall_tau_unseen_mean": float(np.mean(vals)),
                           "kendall_tau_unseen_std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}
    return out


def _write_summary(out_dir: Path, rows: list[dict], config: dict) -> dict:
    doc = {"config": config, "runs": rows, "finished": sum(r["state"] == "finished" for r in rows),
           "failed": sum(r["state"] != "finished" for r in rows), "by_train_size": _aggregate(rows)}
    tmp = out_dir / "sweep.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, out_dir / "sweep.json")
    tmp = out_dir / "sweep.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_COLUMNS})
    os.replace(tmp, out_dir / "sweep.csv")
    return doc


def _table(rows: list[dict]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))

    cols = ("train_size", "seed", "state", "selected", "val_tau", "kendall_tau_all", "kendall_tau_unseen",
            "train_seconds")
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def cmd_sweep(args) -> int:
    import torch

    from .cli import UserError
    from .cli_search import _ints

    sizes, seeds = _ints(args.train_sizes, "--train-sizes"), _ints(args.seeds, "--seeds")
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if min(sizes) < 1:
        raise UserError(f"--train-sizes must be positive, got {args.train_sizes!r}")
    _requested_config(args, sizes[0], seeds[0])          # a bad --model-json fails here, once
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, _cores() // args.jobs)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    plan = [(n, s) for n in sizes for s in seeds]
    lock = threading.Lock()

    def log(msg: str) -> None:
        if not args.quiet:
            with lock:
                print(f"[sweep] {msg}", file=sys.stderr, flush=True)

    children, done = _Children(), {}
    pool = ThreadPoolExecutor(max_workers=args.jobs)
    try:
        futures = {pool.submit(_train_one, args, children, n, s, env, log): (n, s) for n, s in plan}
        for fut in as_completed(futures):
            n, s = futures[fut]
            try:
                row = fut.result()
            except Exception as e:            # a bug on our side for this run; the others go on
                row = {"train_size": n, "seed": s, "run_dir": str(out_dir / run_name(n, s)), "state": "failed",
                       "error": f"{type(e).__name__}: {e}"}
            done[(n, s)] = row
            what = "skipped (finished before)" if row.get("skipped") else row["state"]
            log(f"{len(done)}/{len(plan)} {run_name(n, s)}: {what}"
                + (f" - {row['error']}" if row.get("error") else ""))
            if row.get("stderr_tail"):
                log("stderr tail:\n" + row["stderr_tail"])
    except KeyboardInterrupt:
        children.interrupt()                  # they stop; a rerun resumes each from its latest.pt
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)

    rows = []
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n, s in plan:
            row = done[(n, s)]
            if row["state"] == "finished":
                try:
                    row = _evaluate(row, args)
                except Exception as e:        # e.g. a damaged checkpoint: report it, keep the rest
                    row = {**row, "state": "failed", "error": f"evaluation failed: {type(e).__name__}: {e}"}
                    log(f"{run_name(n, s)}: {row['error']}")
            rows.append(row)
    finally:
        torch.set_num_threads(before)
    config = {k: v for k, v in vars(args).items() if k != "func"}
    config["threads_per_run"] = threads
    doc = _write_summary(out_dir, rows, config)
    print(json.dumps(doc, indent=2) if args.json else _table(rows))
    if doc["failed"]:
        print(f"error: {doc['failed']} of {len(rows)} runs failed (see {out_dir / 'sweep.json'})", file=sys.stderr)
        return 1
    return 0
