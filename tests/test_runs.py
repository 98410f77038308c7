"""Background training runs (narformer_core/runs.py).

Most tests launch a stand-in for ``python -m narformer_core train`` that speaks the same file
protocol as train.py (status.json, metrics.jsonl, the STOP file, resume from where it was) in a
fraction of a second per epoch, so start / stop / crash / resume are checked on real detached
processes without training a model. One slow test launches the real command line.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from narformer_core import runs

FAKE_TRAIN = textwrap.dedent('''
    import argparse, json, os, sys, time
    from pathlib import Path
    ap = argparse.ArgumentParser()
    ap.add_argument("--out"); ap.add_argument("--epochs", type=int); ap.add_argument("--fresh", action="store_true")
    args, _ = ap.parse_known_args()
    out = Path(args.out); out.mkdir(parents=True, exist_ok=True)
    def status(state, epoch):
        tmp = out / "status.json.tmp"
        tmp.write_text(json.dumps({"state": state, "pid": os.getpid(), "updated": time.time(),
                                   "epoch": epoch, "epochs": args.epochs}))
        os.replace(tmp, out / "status.json")
    metrics = out / "metrics.jsonl"
    if args.fresh and metrics.exists():
        metrics.unlink()
    done = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    delay = float(os.environ.get("FAKE_EPOCH_S", "0.15"))
    status("running", done)
    print("fake training from epoch", done, flush=True)
    for epoch in range(done, args.epochs):
        time.sleep(delay)
        with open(metrics, "a") as f:
            f.write(json.dumps({"step": epoch + 1, "epoch": epoch + 1, "loss": 1.0 / (epoch + 1), "mse": 0.5,
                                "rank": 0.1, "cons": 0.01, "val_tau": epoch / 100, "val_tau_ema": epoch / 110,
                                "lr": 1e-3, "wall_s": (epoch + 1) * delay}) + "\\n")
        if epoch + 1 == int(os.environ.get("FAKE_FAIL_AT", "-1")):
            status("failed", epoch + 1)
            sys.exit("RuntimeError: made to fail")
        if (out / "STOP").exists():
            (out / "STOP").unlink()
            status("stopped", epoch + 1)
            sys.exit(0)
    status("finished", args.epochs)
''')


@pytest.fixture
def fake(monkeypatch, tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    monkeypatch.setattr(runs, "TRAIN_ENTRY", (str(script),))
    root = tmp_path / "runs"
    monkeypatch.setenv("NARFORMER_RUNS_DIR", str(root))
    yield root
    # Leave no stand-in behind (only processes these tests started).
    for d in root.glob("*/launch.json"):
        pid = json.loads(d.read_text())["pid"]
        if runs.pid_alive(pid, str(d.parent)):
            os.kill(pid, signal.SIGKILL)


def wait_for(pred, timeout=60.0, every=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def test_start_runs_to_finish_detached(fake):
    root = fake
    info = runs.start_run(runs.RunSpec(epochs=5), "first")
    assert info.state in ("starting", "running", "finished")
    assert (root / "first" / "launch.json").exists()
    # The training process is not our child: the launcher exited and it was re-parented.
    ppid = int(Path(f"/proc/{info.pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) if Path(f"/proc/{info.pid}").exists() else None
    assert ppid != os.getpid()
    done = wait_for(lambda: (r := runs.get_run("first")).state == "finished" and r)
    assert done.epoch == 5 and done.epochs == 5
    df = runs.read_metrics(done)
    assert list(df["epoch"]) == [1, 2, 3, 4, 5]
    assert done.best_val_tau == pytest.approx(0.04)
    assert "fake training from epoch 0" in runs.log_tail(done)
    assert [r.name for r in runs.list_runs()] == ["first"]


def test_stop_then_resume_continues_the_curve(fake, monkeypatch):
    monkeypatch.setenv("FAKE_EPOCH_S", "0.3")
    runs.start_run(runs.RunSpec(epochs=40), "long")
    wait_for(lambda: len(runs.read_metrics(runs.get_run("long").path)) >= 2)
    runs.stop_run("long")
    assert runs.get_run("long").state in ("stopping", "stopped")
    stopped = wait_for(lambda: (r := runs.get_run("long")).state == "stopped" and r)
    n = len(runs.read_metrics(stopped))
    assert 2 <= n < 40 and stopped.resumable
    with pytest.raises(runs.RunError, match="not running"):
        runs.stop_run("long")

    monkeypatch.setenv("FAKE_EPOCH_S", "0.02")
    runs.resume_run("long")
    finished = wait_for(lambda: (r := runs.get_run("long")).state == "finished" and r)
    epochs = list(runs.read_metrics(finished)["epoch"])
    assert epochs == list(range(1, 41))          # no gap, no repeat
    history = json.loads((finished.path / "launch.json").read_text())["history"]
    assert [h["action"] for h in history] == ["start", "resume"]
    with pytest.raises(runs.RunError, match="finished"):
        runs.resume_run("long")


def test_killed_run_is_crashed_and_resumable(fake, monkeypatch):
    monkeypatch.setenv("FAKE_EPOCH_S", "0.3")
    info = runs.start_run(runs.RunSpec(epochs=100), "victim")
    wait_for(lambda: runs.get_run("victim").state == "running")
    os.kill(info.pid, signal.SIGKILL)            # a process these tests started
    crashed = wait_for(lambda: (r := runs.get_run("victim")).state == "crashed" and r)
    assert crashed.resumable and "gone" in crashed.message
    with pytest.raises(runs.RunError, match="crashed, not running"):
        runs.stop_run("victim")
    monkeypatch.setenv("FAKE_EPOCH_S", "0.01")
    runs.resume_run("victim")
    wait_for(lambda: runs.get_run("victim").state == "finished")


def test_failed_run_reports_its_message(fake, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL_AT", "2")
    runs.start_run(runs.RunSpec(epochs=10), "bad")
    failed = wait_for(lambda: (r := runs.get_run("bad")).state == "failed" and r)
    assert failed.epoch == 2 and failed.resumable


def test_process_that_dies_before_training_is_failed_with_log_line(fake, monkeypatch, tmp_path):
    script = tmp_path / "dies.py"
    script.write_text("import sys\nprint('error: train size 999999 + validation size 200 exceeds', flush=True)\nsys.exit(2)\n")
    monkeypatch.setattr(runs, "TRAIN_ENTRY", (str(script),))
    runs.start_run(runs.RunSpec(), "early")
    failed = wait_for(lambda: (r := runs.get_run("early")).state == "failed" and r)
    assert "exceeds" in failed.message


def test_two_readers_see_the_same_state_from_disk(fake):
    root = fake
    runs.start_run(runs.RunSpec(epochs=3), "shared")
    wait_for(lambda: runs.get_run("shared").state == "finished")
    # A second "app" (another process) reading the same folder sees the same run.
    import subprocess

    out = subprocess.run([sys.executable, "-c", "from narformer_core import runs; "
                          "print([(r.name, r.state, r.epoch) for r in runs.list_runs()])"],
                         capture_output=True, text=True, env=dict(os.environ), cwd=runs.PROJECT_ROOT, timeout=60)
    assert out.stdout.strip() == "[('shared', 'finished', 3)]", out.stderr


def test_run_started_elsewhere_is_listed(fake):
    root = fake
    d = root / "external"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"space": "nb201", "train_size": 50, "epochs": 9}))
    (d / "status.json").write_text(json.dumps({"state": "running", "pid": 2 ** 22 + 12345, "updated": time.time(),
                                               "epoch": 3, "epochs": 9}))
    info = runs.get_run("external")
    assert info.state == "crashed" and not info.launched_by_app and info.epochs == 9
    assert info.row()["train size"] == 50


def test_bad_names_and_settings_are_refused(fake):
    root = fake
    for bad in (" ", "../escape", "a/b", "-dash", "x" * 65):
        with pytest.raises(runs.RunError, match="not allowed"):
            runs.start_run(runs.RunSpec(), bad)
    with pytest.raises(runs.RunError, match="epochs must be at least 1"):
        runs.start_run(runs.RunSpec(epochs=0), "zero")
    with pytest.raises(runs.RunError, match="learning rate"):
        runs.start_run(runs.RunSpec(lr=0.0), "nolr")
    with pytest.raises(runs.RunError, match="space"):
        runs.start_run(runs.RunSpec(space="imagenet"), "space")
    with pytest.raises(runs.RunError, match="no run named"):
        runs.resume_run("missing")
    runs.start_run(runs.RunSpec(epochs=1), "once")
    with pytest.raises(runs.RunError, match="already exists"):
        runs.start_run(runs.RunSpec(epochs=1), "once")
    assert not (root / "zero").exists()


def test_model_overrides_reach_the_command_line(fake):
    info = runs.start_run(runs.RunSpec(epochs=1, model={"d_model": 32, "n_heads": 2}), "small")
    cmd = " ".join(__import__("json").loads((info.path / "launch.json").read_text())["command"])
    assert '--model-json {"d_model": 32, "n_heads": 2}' in cmd
    with pytest.raises(runs.RunError, match="unknown model settings"):
        runs.start_run(runs.RunSpec(model={"width": 3}), "bad-model")


def test_precision_reaches_the_command_line(fake):
    info = runs.start_run(runs.RunSpec(epochs=1, precision="bf16"), "halfwidth")
    cmd = __import__("json").loads((info.path / "launch.json").read_text())["command"]
    assert cmd[cmd.index("--precision") + 1] == "bf16"
    plain = runs.start_run(runs.RunSpec(epochs=1), "fullwidth")
    assert "--precision" not in __import__("json").loads((plain.path / "launch.json").read_text())["command"]
    with pytest.raises(runs.RunError, match="precision must be fp32, bf16 or auto, not 'fp16'"):
        runs.start_run(runs.RunSpec(precision="fp16"), "badprec")


def test_threads_reach_the_training_process(fake, tmp_path, monkeypatch):
    script = tmp_path / "env_probe.py"
    script.write_text("import os\nprint('threads', os.environ.get('OMP_NUM_THREADS'), flush=True)\n")
    monkeypatch.setattr(runs, "TRAIN_ENTRY", (str(script),))
    runs.start_run(runs.RunSpec(threads=3), "probe")
    wait_for(lambda: "threads 3" in runs.log_tail(runs.get_run("probe")))
    with pytest.raises(runs.RunError, match="threads"):
        runs.start_run(runs.RunSpec(threads=0), "nothreads")


def test_partial_metrics_line_is_skipped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "val_tau": 0.5, "val_tau_ema": 0.4}\n{"epoch": 2, "val_t')
    df = runs.read_metrics(tmp_path)
    assert list(df["epoch"]) == [1] and "wall_s" in df.columns


def test_pid_alive():
    assert runs.pid_alive(os.getpid())
    assert not runs.pid_alive(None) and not runs.pid_alive(0)
    assert not runs.pid_alive(os.getpid(), expect="certainly-not-in-my-command-line-0x9")


@pytest.mark.slow
def test_real_training_run_from_the_command_line(tmp_path, monkeypatch):
    """The real ``python -m narformer_core train`` in the background: metrics appear, it finishes."""
    monkeypatch.setenv("NARFORMER_RUNS_DIR", str(tmp_path))
    spec = runs.RunSpec(train_size=16, val_size=16, epochs=2, batch_size=16, labels="analog",
                        model={"d_model": 32, "n_heads": 2, "ffn_dim": 64, "depths": [1, 1, 1, 1]})
    runs.start_run(spec, "real")
    try:
        done = wait_for(lambda: (r := runs.get_run("real")).state in ("finished", "failed", "crashed") and r,
                        timeout=400, every=0.5)
    finally:
        info = runs.get_run("real")
        if info.active and runs.pid_alive(info.pid, str(info.path)):
            os.kill(info.pid, signal.SIGKILL)
    assert done.state == "finished", runs.log_tail(done)
    assert list(runs.read_metrics(done)["epoch"]) == [1, 2]
    assert (done.path / "best.pt").exists() and (done.path / "summary.json").exists()


def test_equivalent_copies_reach_the_command_line(fake):
    info = runs.start_run(runs.RunSpec(epochs=1, equivalents=True), "copies")
    cmd = __import__("json").loads((info.path / "launch.json").read_text())["command"]
    assert "--equivalents" in cmd
    with pytest.raises(runs.RunError, match="NB201 cells only"):
        runs.start_run(runs.RunSpec(space="nb101", equivalents=True), "nb101copies")
