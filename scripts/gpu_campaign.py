"""Run several NB201 training configurations side by side within a fixed wall-clock budget.

Made for a short lease on a GPU machine (this project gets 15 minutes of one, all tries
together), where every second counts and a second attempt may not be possible:

    python scripts/gpu_campaign.py --budget 420 --work /tmp/campaign --pack "$OUT"

1. Calibrate: every configuration trains for ``--calibrate`` seconds, all at once (so the
   measured seconds per epoch include the others' contention for the GPU and the cores).
2. Train: each configuration restarts with as many epochs as fit in ``--budget`` at that rate
   (at most its own ceiling, e.g. the paper's 4,000), so its learning-rate schedule runs to the
   end instead of being cut off; ``--max-seconds`` still stops a run that was mis-estimated.
3. Pack: for every run, the checkpoint that run selected on validation tau only, its config,
   metrics log and summary go into a few tar files (the lease returns at most 8 files).

Nothing here looks at test figures: which configuration is shipped is decided afterwards, on
validation tau, by whoever unpacks the results (README of assets/checkpoints says how).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAPER_SIZE = json.dumps({"d_model": 192, "n_heads": 6, "ffn_dim": 768, "depths": [6, 1, 1, 1]})

# name -> (train size, ceiling on epochs, extra train flags). All use split seed 0 and the
# NB201 validation labels, the same split as the shipped checkpoints, so validation taus compare.
CONFIGS: dict[str, tuple[int, int, list[str]]] = {
    "paper781": (781, 4000, ["--preset", "paper"]),
    "paperlog781": (781, 4000, ["--preset", "paper", "--rank-loss", "logistic"]),
    "fastbig781": (781, 400, ["--preset", "fast", "--model-json", PAPER_SIZE]),
    "fast781": (781, 400, ["--preset", "fast"]),
    "paper1563": (1563, 4000, ["--preset", "paper"]),
    "paperlog1563": (1563, 4000, ["--preset", "paper", "--rank-loss", "logistic"]),
    "fastbig1563": (1563, 400, ["--preset", "fast", "--model-json", PAPER_SIZE]),
    "fast1563": (1563, 400, ["--preset", "fast"]),
}


def command(name: str, epochs: int, out: Path, max_seconds: float, device: str, test_every: int) -> list[str]:
    size, _, extra = CONFIGS[name]
    return [sys.executable, "-m", "narformer_core", "train", "--space", "nb201", "--labels", "nb201-val",
            "--train-size", str(size), "--seed", "0", "--threads", "1", "--device", device,
            "--epochs", str(epochs), "--max-seconds", str(max_seconds), "--test-every", str(test_every),
            "--out", str(out), "--fresh", "--quiet", *extra]


def launch_all(cmds: dict[str, list[str]], logs: Path, env: dict | None = None) -> dict[str, int]:
    """Start every command at once; stdout to logs/NAME.log, stderr to logs/NAME.err."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name, cmd in cmds.items():
        out, err = open(logs / f"{name}.log", "w"), open(logs / f"{name}.err", "w")
        procs[name] = (subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, env={**os.environ, **(env or {})}),
                       out, err)
    codes = {}
    for name, (p, out, err) in procs.items():
        codes[name] = p.wait()
        out.close()
        err.close()
    return codes


def seconds_per_epoch(run: Path) -> float | None:
    path = run / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    if len(rows) < 3:
        return None
    # Skip the first epoch: it carries CUDA's start-up (kernel loading, allocator growth).
    return (rows[-1]["wall_s"] - rows[0]["wall_s"]) / (rows[-1]["epoch"] - rows[0]["epoch"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=420, help="training seconds per run (all run at once)")
    ap.add_argument("--calibrate", type=float, default=20, help="seconds of calibration training")
    ap.add_argument("--work", default="runs/campaign")
    ap.add_argument("--pack", help="folder for the tar files (e.g. $OUT on the device machine)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--only", help="comma-separated configuration names (default: all)")
    ap.add_argument("--test-every", type=int, default=-1,
                    help="log test tau every N epochs (reporting only; default ~40 times per run, 0: never)")
    a = ap.parse_args()

    names = a.only.split(",") if a.only else list(CONFIGS)
    work = Path(a.work)
    t_start = time.time()
    report: dict = {"budget_s": a.budget, "calibrate_s": a.calibrate, "configs": {}}
    try:
        import torch
        report["torch"] = torch.__version__
        report["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as e:           # the campaign still runs; the report says why not on GPU
        report["torch_error"] = repr(e)
    print(json.dumps({k: report.get(k) for k in ("torch", "cuda")}), flush=True)

    # 1. calibration, all configurations at once
    cal = {n: command(n, CONFIGS[n][1], work / "cal" / n, a.calibrate, a.device, 0) for n in names}
    codes = launch_all(cal, work / "cal" / "logs")
    spe = {n: seconds_per_epoch(work / "cal" / n) for n in names}
    print(f"[{time.time() - t_start:.0f}s] calibration exit codes {codes}; s/epoch "
          + json.dumps({n: (round(v, 4) if v else None) for n, v in spe.items()}), flush=True)

    # 2. the real runs, epochs sized to the budget (90 %: the rate drifts as runs finish and start)
    final = {}
    for n in names:
        ceiling = CONFIGS[n][1]
        if spe[n] is None:
            print(f"  {n}: calibration failed, skipped (see {work}/cal/logs/{n}.log)", flush=True)
            report["configs"][n] = {"skipped": "calibration failed"}
            continue
        epochs = max(10, min(ceiling, int(math.floor(0.9 * a.budget / spe[n]))))
        report["configs"][n] = {"train_size": CONFIGS[n][0], "flags": CONFIGS[n][2], "epochs": epochs,
                                "ceiling": ceiling, "cal_s_per_epoch": spe[n]}
        # Test tau ~40 times per run, for the tau-vs-time curve only (never for selection).
        test_every = a.test_every if a.test_every >= 0 else max(1, epochs // 40)
        final[n] = command(n, epochs, work / n, a.budget, a.device, test_every)
    codes = launch_all(final, work / "logs")
    print(f"[{time.time() - t_start:.0f}s] training exit codes {codes}", flush=True)

    # 3. selection on validation for every run (stopped ones too) and packing
    from narformer_core.train import select_on_validation

    files_by_run, ckpt_by_run = {}, {}
    for n in final:
        run = work / n
        entry = report["configs"][n]
        entry["exit_code"] = codes[n]
        try:
            status = json.loads((run / "status.json").read_text())
            entry["state"], entry["epochs_done"] = status.get("state"), status.get("epoch")
            summary = (json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists()
                       else select_on_validation(run))
            entry["selected"] = summary
            ckpt = {"best": "best.pt", "best_ema": "best_ema.pt"}.get(summary["selected"], "latest.pt")
            files_by_run[n] = [run / f for f in ("config.json", "metrics.jsonl", "status.json", "summary.json")
                               if (run / f).exists()]
            ckpt_by_run[n] = run / ckpt
            rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
            entry["train_wall_s"] = rows[-1]["wall_s"] if rows else None
        except Exception as e:
            entry["error"] = repr(e)
        entry_line = {k: entry.get(k) for k in ("epochs", "state", "epochs_done", "train_wall_s")}
        entry_line["val"] = (entry.get("selected") or {}).get("val_tau")
        print(f"  {n}: {json.dumps(entry_line)}", flush=True)
    # 4. test figures of each run's selected checkpoint, for the report only (all at once)
    evals = {n: [sys.executable, "-m", "narformer_core", "evaluate", "--checkpoint", str(ckpt_by_run[n]),
                 "--json"] for n in ckpt_by_run}
    launch_all(evals, work / "eval", env={"OMP_NUM_THREADS": "2"})
    for n in evals:
        try:
            entry = report["configs"][n]
            entry["evaluation"] = json.loads((work / "eval" / f"{n}.log").read_text())
            print(f"  {n}: val {entry['selected']['val_tau']:.4f} "
                  f"test_all {entry['evaluation']['kendall_tau_all']:.4f}", flush=True)
        except Exception as e:
            report["configs"][n]["evaluation_error"] = repr(e)

    # 5. per training-set size, the run with the best validation tau (never a test figure)
    chosen = {}
    for n in ckpt_by_run:
        if "evaluation" not in report["configs"][n]:
            continue        # a checkpoint that does not load is not a candidate
        size, val = CONFIGS[n][0], report["configs"][n]["selected"]["val_tau"]
        if size not in chosen or val > report["configs"][chosen[size]]["selected"]["val_tau"]:
            chosen[size] = n
    report["chosen_on_validation"] = chosen
    report["total_s"] = round(time.time() - t_start, 1)
    (work / "campaign.json").write_text(json.dumps(report, indent=1))
    print("chosen on validation: " + json.dumps(chosen), flush=True)

    if a.pack:
        # The lease returns at most 8 files of 16 MiB (64 MiB in all) and a paper-size checkpoint
        # is ~16 MB: the logs of every run go in one tar, and only the chosen runs' checkpoints.
        pack = Path(a.pack)
        pack.mkdir(parents=True, exist_ok=True)
        (pack / "campaign.json").write_text(json.dumps(report, indent=1))
        with tarfile.open(pack / "logs.tar.gz", "w:gz") as tf:
            for n, files in files_by_run.items():
                for f in files:
                    tf.add(f, arcname=f"{n}/{f.name}")
                for folder in ("cal/logs", "logs", "eval"):
                    for ext in ("log", "err"):
                        extra = work / folder / f"{n}.{ext}"
                        if extra.exists():
                            tf.add(extra, arcname=f"{n}/{folder.replace('/', '_')}.{ext}")
        for size, n in chosen.items():
            ckpt = ckpt_by_run[n]
            with tarfile.open(pack / f"chosen{size}.tar.gz", "w:gz") as tf:
                tf.add(ckpt, arcname=f"{n}/{ckpt.name}")
    print(f"[{time.time() - t_start:.0f}s] done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
