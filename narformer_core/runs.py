"""Training runs as background processes: start, list, watch, stop, resume.

A run is ``python -m narformer_core train --out <runs>/<name> ...`` started as a detached process
with its own log. Everything about a run lives in its folder, never in the memory of whoever
started it, so runs survive an app restart and every browser tab (or a terminal) sees the same
runs:

  launch.json     how the run was started: its settings, the command line, the pid, start times
  train.log       stdout and stderr of the training process (appended to on resume)
  ...             and what train.py writes: config.json, metrics.jsonl, status.json, latest.pt,
                  best.pt, best_ema.pt, summary.json; a file named STOP asks it to stop

A run's state comes from status.json (written by train.py) checked against the process table:
"running" whose process is gone is reported as "crashed", so it can be resumed.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STATES = ("starting", "running", "stopping", "finished", "stopped", "failed", "crashed")
ACTIVE_STATES = ("starting", "running", "stopping")
RESUMABLE_STATES = ("stopped", "crashed", "failed")
# What a run executes, after the interpreter (a module path here; tests substitute a stand-in).
TRAIN_ENTRY: tuple[str, ...] = ("-m", "narformer_core", "train")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
METRIC_COLUMNS = ("step", "epoch", "loss", "mse", "rank", "cons", "val_tau", "val_tau_ema", "lr", "wall_s")


class RunError(ValueError):
    """A run request that cannot be carried out; the message says why."""


def runs_dir(override: str | os.PathLike | None = None) -> Path:
    """Where runs live: ``override``, else $NARFORMER_RUNS_DIR, else ``runs/`` in the project."""
    # Absolute, because the training process runs from the project root, not the caller's folder.
    if override:
        return Path(override).absolute()
    env = os.environ.get("NARFORMER_RUNS_DIR")
    return Path(env).absolute() if env else PROJECT_ROOT / "runs"


@dataclass
class RunSpec:
    """The settings a run is launched with (a subset of the ``train`` command line)."""

    space: str = "nb201"
    train_size: int = 100
    val_size: int = 200
    epochs: int = 30
    seed: int = 0
    lr: float = 1e-3
    batch_size: int = 128
    preset: str = "fast"
    labels: str | None = None
    model: dict | None = None        # NARFormerConfig overrides on top of the preset's (--model-json)
    # torch intra-op threads of the training process (OMP_NUM_THREADS). One, because on a shared
    # 2-core machine two threads wait on each other: a 25-epoch small-model run took 12 s with one
    # thread and about 240 s with two (measured at load ~5).
    threads: int = 1
    # "bf16" trains 1.5-3x faster where the CPU computes bfloat16 natively, at a small cost in tau
    # (assets/results/precision781: -0.004 at 781 cells); "auto" picks it only on such hardware.
    precision: str = "fp32"
    # NB201: feed each training cell as a random functionally equivalent cell (train --equivalents;
    # README, "Equivalent cells").
    equivalents: bool = False

    def check(self) -> "RunSpec":
        from .cli import PRESETS

        if self.space not in ("nb201", "nb101"):
            raise RunError(f"space must be nb201 or nb101, not {self.space!r}")
        if self.preset not in PRESETS:
            raise RunError(f"unknown preset {self.preset!r}; known: {', '.join(sorted(PRESETS))}")
        for name in ("train_size", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise RunError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if int(self.val_size) < 2:
            raise RunError(f"validation size must be at least 2 (Kendall's tau needs pairs), got {self.val_size}")
        if not float(self.lr) > 0:
            raise RunError(f"learning rate must be positive, got {self.lr}")
        if int(self.seed) < 0:
            raise RunError(f"seed must be non-negative, got {self.seed}")
        if int(self.threads) < 1:
            raise RunError(f"threads must be at least 1, got {self.threads}")
        from .train import PRECISIONS

        if self.precision not in PRECISIONS:
            raise RunError(f"precision must be fp32, bf16 or auto, not {self.precision!r}")
        if self.equivalents and self.space != "nb201":
            raise RunError("equivalent-cell copies exist for NB201 cells only (NB101 cells are already "
                           "pruned to one form each)")
        if self.model is not None:
            from dataclasses import fields

            from .model import NARFormerConfig

            unknown = sorted(set(self.model) - {f.name for f in fields(NARFormerConfig)})
            if unknown:
                raise RunError(f"unknown model settings {unknown}")
        return self

    def cli_args(self) -> list[str]:
        args = ["--space", self.space, "--train-size", str(int(self.train_size)),
                "--val-size", str(int(self.val_size)), "--epochs", str(int(self.epochs)),
                "--seed", str(int(self.seed)), "--lr", repr(float(self.lr)),
                "--batch-size", str(int(self.batch_size)), "--preset", self.preset]
        if self.labels:
            args += ["--labels", self.labels]
        if self.model:
            args += ["--model-json", json.dumps(self.model, sort_keys=True)]
        if self.precision != "fp32":
            args += ["--precision", self.precision]
        if self.equivalents:
            args += ["--equivalents"]
        return args


@dataclass
class RunInfo:
    """What the runs folder says about one run, right now."""

    name: str
    path: Path
    state: str
    epoch: int = 0
    epochs: int | None = None
    pid: int | None = None
    updated: float | None = None
    message: str = ""
    config: dict = field(default_factory=dict)
    launched_by_app: bool = False
    best_val_tau: float | None = None
    last_val_tau: float | None = None
    last_val_tau_ema: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def resumable(self) -> bool:
        return self.state in RESUMABLE_STATES

    def row(self) -> dict:
        """A flat dict for a table."""
        return {"run": self.name, "state": self.state,
                "epoch": f"{self.epoch}/{self.epochs}" if self.epochs else str(self.epoch),
                "train size": self.config.get("train_size"), "space": self.config.get("space"),
                "labels": self.config.get("labels"), "best val tau": self.best_val_tau,
                "last val tau": self.last_val_tau, "last val tau (EMA)": self.last_val_tau_ema,
                "updated": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.updated)) if self.updated else "",
                "pid": self.pid, "message": self.message}


# ------------------------------------------------------------------ processes
def pid_alive(pid: int | None, expect: str | None = None) -> bool:
    """Whether process ``pid`` exists and is not a zombie.

    ``expect``: a string its command line must contain (guards against a recycled pid). Only
    checked where /proc exists.
    """
    if not pid or int(pid) <= 0:
        return False
    pid = int(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            # A finished child nobody reaped stays in the table as a zombie: it is not running.
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state in ("Z", "X"):
                return False
            if expect:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
                if expect not in cmd:
                    return False
        except (OSError, IndexError):
            return False
    return True


# The launcher is a throw-away interpreter that starts the training in its own session and exits
# at once, so the training is re-parented away from the app: it outlives an app restart, and the
# app never has to reap it.
_LAUNCHER = (
    "import subprocess, sys\n"
    "log = open(sys.argv[1], 'ab')\n"
    "p = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT, "
    "stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)\n"
    "print(p.pid)\n"
)


def _spawn_detached(cmd: list[str], log_path: Path, threads: int | None = None) -> int:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(int(threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    out = subprocess.run([sys.executable, "-c", _LAUNCHER, str(log_path), *cmd], cwd=PROJECT_ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    if out.returncode != 0 or not out.stdout.strip().isdigit():
        raise RunError(f"could not start the training process: {(out.stderr or out.stdout).strip()[-500:]}")
    return int(out.stdout.strip())


# ------------------------------------------------------------------ files
def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, d: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(d, indent=2))
    os.replace(tmp, path)


def check_name(name: str) -> str:
    name = str(name).strip()
    if not _NAME.match(name):
        raise RunError(f"run name {name!r} is not allowed: use 1-64 letters, digits, '-', '_' or '.', "
                       "starting with a letter or digit")
    return name


def default_name(spec: RunSpec) -> str:
    return f"{spec.space}-n{int(spec.train_size)}-s{int(spec.seed)}-{time.strftime('%m%d-%H%M%S')}"


def _is_run_dir(p: Path) -> bool:
    return p.is_dir() and any((p / f).exists() for f in ("launch.json", "status.json", "config.json"))


def metrics_rows(run: RunInfo | str | os.PathLike) -> list[dict]:
    """The run's metrics.jsonl as a list of dicts ([] when there is none).

    A line being written at this very moment may be incomplete; it is skipped.
    """
    path = Path(run.path if isinstance(run, RunInfo) else run) / "metrics.jsonl"
    rows = []
    try:
        text = path.read_text()
    except OSError:
        text = ""
    for ln in text.splitlines():
        if not ln.strip():
            continue
        try:
            rows.append(json.loads(ln))
        except ValueError:
            continue
    return rows


def read_metrics(run: RunInfo | str | os.PathLike):
    """The run's metrics.jsonl as a DataFrame (empty, with the usual columns, when there is none)."""
    import pandas as pd

    df = pd.DataFrame(metrics_rows(run))
    for c in METRIC_COLUMNS:
        if c not in df.columns:
            df[c] = pd.Series(dtype=float)
    return df


def log_tail(run: RunInfo | str | os.PathLike, max_chars: int = 4000) -> str:
    path = Path(run.path if isinstance(run, RunInfo) else run) / "train.log"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_chars))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_info(path: str | os.PathLike) -> RunInfo:
    """The current state of the run in folder ``path``."""
    path = Path(path)
    launch = _read_json(path / "launch.json")
    status = _read_json(path / "status.json")
    config = _read_json(path / "config.json") or dict(launch.get("spec", {}))
    launched_pid = launch.get("pid")
    status_pid = status.get("pid")
    info = RunInfo(name=path.name, path=path, state="failed", config=config,
                   launched_by_app=bool(launch), epochs=status.get("epochs") or config.get("epochs"))
    info.epoch = int(status.get("epoch") or 0)
    info.message = str(status.get("message") or "")
    info.updated = status.get("updated") or launch.get("started_at")

    # A status older than the latest launch belongs to the previous process (before a resume).
    fresh_status = bool(status) and (not launch or float(status.get("updated") or 0)
                                     >= float(launch.get("started_at") or 0) - 1.0)
    # Our own launches name their folder on the command line, which guards against a recycled
    # pid; a run started elsewhere (a script calling train()) is checked against the process table.
    expect = str(path) if launched_pid and launched_pid == status_pid else None
    if not fresh_status:
        info.pid = launched_pid
        if pid_alive(launched_pid, str(path)):
            info.state = "starting"
        elif launch:
            info.state = "failed"
            tail = log_tail(path, 600).strip().splitlines()
            info.message = tail[-1] if tail else "the training process exited before it started training"
        else:
            info.state = "failed"
            info.message = "no status.json: not a run folder written by train.py"
    else:
        info.pid = status_pid
        state = status.get("state", "failed")
        if state == "running":
            if pid_alive(status_pid, expect):
                info.state = "stopping" if (path / "STOP").exists() else "running"
            else:
                info.state = "crashed"
                info.message = info.message or "the training process is gone (killed, or the machine restarted)"
        elif state in STATES:
            info.state = state
        else:
            info.state = "failed"
            info.message = f"unknown state {state!r} in status.json"

    metrics = read_metrics(path)
    if len(metrics):
        info.best_val_tau = float(metrics["val_tau"].max())
        info.last_val_tau = float(metrics["val_tau"].iloc[-1])
        info.last_val_tau_ema = float(metrics["val_tau_ema"].iloc[-1])
        # Between status writes (train.py writes status about once a minute) the metrics log is the
        # better clock.
        info.epoch = max(info.epoch, int(metrics["epoch"].iloc[-1]))
    return info


def list_runs(root: str | os.PathLike | None = None) -> list[RunInfo]:
    """Every run under the runs folder, newest activity first."""
    root = runs_dir(root)
    if not root.is_dir():
        return []
    runs = [run_info(p) for p in sorted(root.iterdir()) if _is_run_dir(p)]
    return sorted(runs, key=lambda r: -(r.updated or 0))


def get_run(name: str, root: str | os.PathLike | None = None) -> RunInfo:
    path = runs_dir(root) / check_name(name)
    if not _is_run_dir(path):
        raise RunError(f"there is no run named {name!r} in {runs_dir(root)}")
    return run_info(path)


# ------------------------------------------------------------------ actions
def _launch(path: Path, spec: RunSpec, resume: bool) -> RunInfo:
    cmd = [sys.executable, *TRAIN_ENTRY, "--out", str(path), "--quiet", *spec.cli_args()]
    if not resume:
        cmd.append("--fresh")
    (path / "STOP").unlink(missing_ok=True)
    launch = _read_json(path / "launch.json")
    history = list(launch.get("history", []))
    started = time.time()
    with open(path / "train.log", "a") as log:
        log.write(f"\n=== {'resume' if resume else 'start'} {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                  f"{' '.join(cmd[1:])}\n")
    pid = _spawn_detached(cmd, path / "train.log", spec.threads)
    history.append({"action": "resume" if resume else "start", "pid": pid, "at": started})
    _write_json(path / "launch.json", {"name": path.name, "spec": asdict(spec), "command": cmd,
                                       "pid": pid, "started_at": started, "history": history})
    return run_info(path)


def start_run(spec: RunSpec, name: str | None = None, root: str | os.PathLike | None = None) -> RunInfo:
    """Start a new run in the background; returns at once (the run is "starting")."""
    spec.check()
    name = check_name(name or default_name(spec))
    base = runs_dir(root)
    base.mkdir(parents=True, exist_ok=True)
    path = base / name
    if path.exists() and any(path.iterdir()):
        raise RunError(f"a run named {name!r} already exists in {base}; pick another name, or resume it")
    path.mkdir(exist_ok=True)
    return _launch(path, spec, resume=False)


def resume_run(name: str, root: str | os.PathLike | None = None) -> RunInfo:
    """Start a stopped, crashed or failed run again in its folder; training resumes from latest.pt."""
    info = get_run(name, root)
    if info.active:
        raise RunError(f"run {name!r} is {info.state}; only a stopped, crashed or failed run can be resumed")
    if info.state == "finished":
        raise RunError(f"run {name!r} has finished all its epochs; start a new run to train longer")
    spec_d = _read_json(info.path / "launch.json").get("spec")
    if spec_d:
        spec = RunSpec(**{k: v for k, v in spec_d.items() if k in RunSpec.__dataclass_fields__})
    else:
        # A run started outside the app: rebuild its settings from the config train.py saved.
        c = info.config
        if not c:
            raise RunError(f"run {name!r} has neither launch.json nor config.json; cannot tell how to resume it")
        spec = RunSpec(space=c.get("space", "nb201"), train_size=c.get("train_size", 100),
                       val_size=c.get("val_size", 200), epochs=c.get("epochs", 30), seed=c.get("seed", 0),
                       lr=c.get("lr", 1e-3), batch_size=c.get("batch_size", 128), labels=c.get("labels"))
    return _launch(info.path, spec.check(), resume=True)


def stop_run(name: str, root: str | os.PathLike | None = None) -> RunInfo:
    """Ask a running run to save and stop after its current epoch (writes the STOP file)."""
    info = get_run(name, root)
    if info.state not in ("running", "starting"):
        raise RunError(f"run {name!r} is {info.state}, not running; nothing to stop")
    (info.path / "STOP").write_text(f"requested {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    return run_info(info.path)


def checkpoints(run: RunInfo) -> list[Path]:
    return [run.path / f for f in ("best_ema.pt", "best.pt", "latest.pt") if (run.path / f).exists()]
